"""Both phases through the real Flower handlers and strategies, on an in-process grid (no Ray).

The fake grid delivers each message to the real ClientApp handler of its type, with one
``Context`` per node, so FedE rounds, SimSkip rounds and the downstream evaluation run exactly
the code a deployment runs, minus transport. Nations over 2 clients, tiny budgets.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client.kge.refinement import REFINED_VARIANT, load_run_configs, unpack_variants
from client.kge.weights import fedavg_named
from server.simskip_strategy import DOWNSTREAM_TYPE, SIMSKIP_TRAIN_TYPE, WEIGHTS_KEY, run_refinement_phase
from tests.handler_grid import HandlerGrid, node_contexts, run_both_phases, train_fede

KGE = {
    "embedding-dim": 8,
    "local-epochs": 1,
    "num-negs-per-pos": 4,
    "batch-size": 128,
    "eval-batch-size": 64,
    "learning-rate": 0.01,
    "eval-every": 1,
}
pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=2, seed=0).write(out)
    return out


def _run(data_root, tmp_path, **simskip):
    run_config = {
        **KGE,
        "client-data-root": str(data_root),
        "client-output-root": str(tmp_path / "clients"),
        "simskip-rounds": 2,
        "simskip-local-epochs": 1,
        "refit-epochs": 2,
        **simskip,
    }
    grid, strategy, result, rows, refinement = run_both_phases(run_config, tmp_path, kge_rounds=2)
    assert strategy.members.finish(grid, "completed", "", str(tmp_path)) == [10, 11]  # as run_federation ends
    return grid, result, rows, refinement


def _simskip_messages(grid, server_round):
    return [
        (m, r)
        for m, r in grid.log
        if m.metadata.message_type == SIMSKIP_TRAIN_TYPE
        and m.content.config_records["config"]["server-round"] == server_round
    ]


def _weights(record, variants=(REFINED_VARIANT,)):
    return unpack_variants([(k, record[k].numpy()) for k in record], list(variants))


def _cell(records, label, row, client, protocol="standard", seed="0"):
    return records[client]["protocols"][label]["seeds"][seed][row]["test"][protocol]


def test_federated_phase_averages_weights_and_writes_the_table(data_root, tmp_path) -> None:
    grid, result, records, _refinement = _run(data_root, tmp_path)
    assert set(records) == {"0", "1"}
    assert records["0"]["protocol_order"] == ["as-trained", "relation-refit:trained", "adapter", "finetune"]
    # the as-trained protocol's unrefined row == the KGE phase's own final test (best round's state)
    for client, metrics in result.test.items():
        assert _cell(records, "as-trained", "unrefined", client)["mrr"] == pytest.approx(metrics["mrr"], abs=1e-6)
    # round 2 starts every client from the row-weighted mean of the round-1 replies
    round1 = _simskip_messages(grid, 1)
    expected = fedavg_named(
        [
            (
                _weights(reply.content.array_records[WEIGHTS_KEY])[REFINED_VARIANT],
                int(reply.content.metric_records["metrics"]["num-rows"]),
            )
            for _, reply in round1
        ]
    )
    for msg, _ in _simskip_messages(grid, 2):
        got = dict(_weights(msg.content.array_records[WEIGHTS_KEY])[REFINED_VARIANT])
        for name, array in expected:
            np.testing.assert_allclose(got[name], array, rtol=1e-6, atol=1e-7)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["clients"] == ["0", "1", "overall"]
    assert list(results["protocols"]) == ["as-trained", "relation-refit:trained", "adapter", "finetune"]
    for entry in results["protocols"].values():
        assert list(entry["rows"]) == ["unrefined", "refined", "perturbed"]
        assert set(entry["selection"]) == {"0", "1"}
    # the per-triple reciprocal ranks travelled with the replies and back the intervals
    from server.report import load_ranks

    ranks = load_ranks(tmp_path / "downstream_rr.npz")
    assert set(ranks) == {"0", "1"} and len(ranks["0"]) == 4 * 3 * 2  # protocols x rows x eval protocols
    assert "SimSkip displacement" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "simskip_metrics.jsonl").read_text().splitlines()) == 2
    for name in ("results.md", "results.csv", "simskip_loss.png", "refined_vs_unrefined.png", "downstream.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "clients" / "0" / "refined" / "refined.npy").is_file()
    # the party's own progress lines and the end-of-run notice (simskip-client prints / exits on them)
    party = (tmp_path / "clients" / "0" / "party.log").read_text()
    for line in (
        "round 1: trained 1 epochs",
        "valid MRR",
        "test with round",
        "SimSkip round 2",
        "downstream evaluation done",
        "federation finished: completed",
    ):
        assert line in party, line
    assert json.loads((tmp_path / "clients" / "0" / "federation.json").read_text())["status"] == "completed"


def test_a_malformed_downstream_reply_is_refused_with_a_reason() -> None:
    from client.kge.comparison import rr_key
    from server.records import UpdateRejectedError
    from server.simskip_strategy import parse_downstream_reply

    config = load_run_configs({"downstream-protocols": "as-trained"})[2]

    def reply(record, ranks):
        content = RecordDict(
            {
                "downstream": ConfigRecord({"record": record if isinstance(record, str) else json.dumps(record)}),
                "downstream-rr": ArrayRecord({k: Array(v) for k, v in ranks.items()}),
            }
        )
        return Message(content=content, dst_node_id=1, message_type="evaluate")

    cell = {"test": {p: {"mrr": 0.5, "num_triples": 3} for p in ("standard", "fede")}, "valid": 0.5}
    good = {"protocols": {"as-trained": {"seeds": {"0": {"unrefined": cell}}}}}
    ranks = {rr_key("as-trained", 0, "unrefined", p): np.full(3, 0.5) for p in ("standard", "fede")}
    assert parse_downstream_reply(reply(good, ranks), config)[0] == good
    key = rr_key("as-trained", 0, "unrefined", "fede")
    other = load_run_configs({"downstream-protocols": "as-trained,finetune"})[2]
    for record, rr, cfg, match in [
        ("{broken", ranks, config, "malformed"),
        ([1], ranks, config, "protocols"),
        (good, {**ranks, key: np.full(3, np.nan)}, config, "outside"),
        (good, {**ranks, key: np.full(2, 0.5)}, config, "3 values"),
        (good, ranks, other, "not the run's"),
        (
            {"protocols": {"as-trained": {"seeds": {"0": {"unrefined": {**cell, "valid": "x"}}}}}},
            ranks,
            config,
            "valid score",
        ),
    ]:
        with pytest.raises(UpdateRejectedError, match=match):
            parse_downstream_reply(reply(record, rr), cfg)


def test_local_only_ablation_sends_no_encoder_after_round_one(data_root, tmp_path) -> None:
    grid, _, records, _ = _run(
        data_root,
        tmp_path,
        **{"simskip-federate": False, "simskip-no-skip-ablation": True, "downstream-protocols": "as-trained"},
    )
    assert list(records["0"]["protocols"]["as-trained"]["seeds"]["0"]) == [
        "unrefined",
        "refined",
        "perturbed",
        "refined-no-skip",
    ]
    assert all(WEIGHTS_KEY in m.content.array_records for m, _ in _simskip_messages(grid, 1))
    for msg, reply in _simskip_messages(grid, 2):
        assert WEIGHTS_KEY not in msg.content.array_records and WEIGHTS_KEY not in reply.content.array_records
    downstream = [m for m, _ in grid.log if m.metadata.message_type == DOWNSTREAM_TYPE]
    assert downstream and all(WEIGHTS_KEY not in m.content.array_records for m in downstream)


# ---------------------------------------------------------------- failures, checkpoint and resume
def _error_reply(msg, reason="ClientApp crashed"):
    from flwr.app import Error

    return Message(Error(code=1, reason=reason), reply_to=msg)


def _round_of(msg):
    return msg.content.config_records["config"].get("server-round")


def _trained_kge(data_root, tmp_path, grid_factory, **simskip):
    """Two KGE rounds through the real handlers; returns (grid, strategy, result, kge_config, refinement)."""
    run_config = {
        **KGE,
        "client-data-root": str(data_root),
        "client-output-root": str(tmp_path / "clients"),
        "simskip-rounds": 3,
        "simskip-local-epochs": 1,
        "simskip-gate-grid": "0,1",
        "refit-epochs": 1,
        "downstream-protocols": "as-trained,relation-refit",
        **simskip,
    }
    grid = grid_factory(node_contexts(run_config))
    strategy, result, kge_config, refinement = train_fede(
        grid, run_config, kge_rounds=2, min_clients=1, min_clients_timeout=0.2
    )
    return grid, strategy, result, kge_config, refinement


def test_a_failed_client_and_a_bad_update_are_left_out_of_their_simskip_round(data_root, tmp_path) -> None:
    def tamper(msg, reply):
        if msg.metadata.message_type != SIMSKIP_TRAIN_TYPE:
            return None
        if _round_of(msg) == 2 and msg.metadata.dst_node_id == 10:
            return _error_reply(msg)
        if _round_of(msg) == 3 and msg.metadata.dst_node_id == 11:  # a diverged encoder
            record = reply.content.array_records[WEIGHTS_KEY]
            first = next(iter(record))
            record[first] = Array(np.full_like(record[first].numpy(), np.nan))
        return None

    grid, strategy, result, kge_config, refinement = _trained_kge(data_root, tmp_path, lambda c: HandlerGrid(c, tamper))
    rows = run_refinement_phase(
        grid,
        strategy,
        best_round=result.best_round,
        refinement=refinement,
        kge_config=kge_config,
        setting="fede",
        run_dir=str(tmp_path),
    )
    history = [json.loads(line) for line in (tmp_path / "simskip_metrics.jsonl").read_text().splitlines()]
    assert [h["failures"] == [] for h in history] == [True, False, False]
    assert history[1]["failures"] == ["0: simskip: ClientApp crashed"] and set(history[1]["num_rows"]) == {"1"}
    assert len(history[2]["failures"]) == 1 and history[2]["failures"][0].startswith("1: simskip: update rejected")
    assert "NaN" in history[2]["failures"][0] and set(history[2]["num_rows"]) == {"0"}
    # round 3 starts from round 2's average = client 1's weights alone (the only update)
    round2_reply = next(r for m, r in _simskip_messages(grid, 2) if m.metadata.dst_node_id == 11)
    for msg, _ in _simskip_messages(grid, 3):
        got = dict(_weights(msg.content.array_records[WEIGHTS_KEY])[REFINED_VARIANT])
        for name, array in _weights(round2_reply.content.array_records[WEIGHTS_KEY])[REFINED_VARIANT]:
            np.testing.assert_allclose(got[name], array, rtol=1e-6)
    # the downstream evaluation has both clients, and the final encoder is finite
    assert set(rows) == {"0", "1"}
    downstream = [m for m, _ in grid.log if m.metadata.message_type == DOWNSTREAM_TYPE]
    assert all(
        np.isfinite(m.content.array_records[WEIGHTS_KEY][k].numpy()).all()
        for m in downstream
        for k in m.content.array_records[WEIGHTS_KEY]
    )


def test_a_client_without_a_downstream_result_is_asked_again_then_reported(data_root, tmp_path) -> None:
    from server.records import FederationError

    def tamper(msg, reply):
        if msg.metadata.message_type == DOWNSTREAM_TYPE and msg.metadata.dst_node_id == 11:
            return _error_reply(msg, "out of memory")
        return None

    grid, strategy, result, kge_config, refinement = _trained_kge(
        data_root, tmp_path, lambda c: HandlerGrid(c, tamper), **{"simskip-rounds": 1}
    )
    refinement = dataclasses.replace(refinement, rounds=1)
    with pytest.raises(FederationError, match=r"no result from clients \['1'\]"):
        run_refinement_phase(
            grid,
            strategy,
            best_round=result.best_round,
            refinement=refinement,
            kge_config=kge_config,
            setting="fede",
            run_dir=str(tmp_path),
        )
    asked = [m.metadata.dst_node_id for m, _ in grid.log if m.metadata.message_type == DOWNSTREAM_TYPE]
    assert sorted(asked) == [10, 11, 11], "the failed client is asked once more, the other is not"
    # what was computed is kept, and says what is missing
    payload = json.loads((tmp_path / "downstream.json").read_text())
    assert set(payload["clients"]) == {"0"}
    assert payload["missing_clients"] == {"1": "1: downstream: out of memory"}
    assert "INCOMPLETE" in (tmp_path / "results.md").read_text()


class Interrupted(Exception):
    """The server process 'dies' (raised from the grid)."""


def _server_run_config(data_root, run_dir, clients_root, **extra):
    return {
        **KGE,
        "client-data-root": str(data_root),
        "client-output-root": str(clients_root),
        "run-dir": str(run_dir),
        "num-server-rounds": 2,
        "min-clients": 2,
        "min-clients-timeout": 0.2,
        "simskip-rounds": 3,
        "simskip-local-epochs": 1,
        "simskip-gate-grid": "0,1",
        "refit-epochs": 1,
        **extra,
    }


@pytest.mark.slow  # three server runs through the real handlers: ~1 min on 2 cores
@pytest.mark.parametrize("federate", [True, False], ids=["federated", "local-only"])
def test_the_simskip_phase_resumes_after_its_last_checkpointed_round(data_root, tmp_path, federate) -> None:
    from server.checkpoint import load_checkpoint
    from server.server_app import run_federation

    extra = {"simskip-federate": federate}
    reference = _server_run_config(data_root, tmp_path / "reference", tmp_path / "reference-clients", **extra)
    run_federation(HandlerGrid(node_contexts(reference)), reference)

    def die_in_round_3(msg, reply):
        if msg.metadata.message_type == SIMSKIP_TRAIN_TYPE and _round_of(msg) == 3:
            raise Interrupted
        return

    config = _server_run_config(data_root, tmp_path / "run", tmp_path / "clients", **extra)
    with pytest.raises(Interrupted):
        run_federation(HandlerGrid(node_contexts(config), die_in_round_3), config)
    _, arrays, state = load_checkpoint(tmp_path / "run", run_config=config)
    assert state["phase"] == "simskip" and state["simskip_round"] == 2
    assert any(name.startswith("simskip/") for name in arrays)
    assert not (tmp_path / "run" / "downstream.json").exists()

    # a new server process, parties with empty state (their own checkpoints on disk)
    resumed = {**config, "resume": True}
    grid = HandlerGrid(node_contexts(resumed))
    run_federation(grid, resumed)
    sent = [m for m, _ in grid.log]
    assert [_round_of(m) for m in sent if m.metadata.message_type == SIMSKIP_TRAIN_TYPE] == [3, 3]
    assert not [m for m in sent if m.metadata.message_type == "train"], "no KGE round is trained again"
    if not federate:  # round 3 starts from each party's own round-2 weights, read from its checkpoint
        assert all(
            WEIGHTS_KEY not in m.content.array_records for m in sent if m.metadata.message_type == SIMSKIP_TRAIN_TYPE
        )
        assert (tmp_path / "clients" / "0" / "checkpoint" / "simskip-000002.npz").is_file()

    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    got = [strip(line) for line in (tmp_path / "run" / "simskip_metrics.jsonl").read_text().splitlines()]
    want = [strip(line) for line in (tmp_path / "reference" / "simskip_metrics.jsonl").read_text().splitlines()]
    assert [g["round"] for g in got] == [1, 2, 3]
    for g, w in zip(got, want, strict=True):
        for client, losses in w["simskip_loss"].items():
            for variant, loss in losses.items():
                assert g["simskip_loss"][client][variant] == pytest.approx(loss, rel=1e-5), (g["round"], client)
    got_rows = json.loads((tmp_path / "run" / "downstream.json").read_text())["clients"]
    want_rows = json.loads((tmp_path / "reference" / "downstream.json").read_text())["clients"]
    assert set(got_rows) == set(want_rows)
    for client, record in want_rows.items():
        for label, entry in record["protocols"].items():
            for seed, per_row in entry["seeds"].items():
                for row, cell in per_row.items():
                    for protocol, metrics in cell["test"].items():
                        for metric, value in metrics.items():
                            got = got_rows[client]["protocols"][label]["seeds"][seed][row]["test"][protocol][metric]
                            assert got == pytest.approx(value, abs=1e-6), (client, label, row, metric)
