"""``stopping = per-party`` on the Flower engine, driven by test_fede_strategy's fake Grid and
numpy-only clients (no Ray): one tracker per client id, each client told its own best round in
every message, tested on its own best round's rows, and the per-party state through a resume.

The scripted valid MRRs (patience 2, a validation every round) peak at different rounds: client
0 at round 2 (stopped at 4), client 2 at round 3 (stopped at 5), client 1 at round 5 (stopped at
7). The overall rule would have stopped at round 5 on the weighted MRR (best round 3).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from client.client_app import PRIVATE_SNAPSHOT
from client.protocol import CONFIG_KEY, METRICS_KEY
from server.records import FederationError
from tests.test_fede_strategy import FakeClient, _federation

pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime

MRRS = {
    "0": {1: 0.1, 2: 0.5, 3: 0.4, 4: 0.3},
    "1": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.6, 6: 0.5, 7: 0.4},
    "2": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.2, 5: 0.1},
}
BEST = {"0": 2, "1": 5, "2": 3}
STOPPED = {"0": 4, "1": 7, "2": 5}
#: the best round each client is told in rounds 1..7 (its own best so far; frozen once it stopped)
TOLD = {"0": [0, 1, 2, 2, 2, 2, 2], "1": [0, 1, 2, 3, 4, 5, 5], "2": [0, 1, 2, 3, 3, 3, 3]}


class RestoringClient(FakeClient):
    """A fake client that also answers ``query.restore`` (a resumed server asks it first)."""

    def handle(self, msg: Message) -> Message:
        if msg.metadata.message_type == "query.restore":
            config = dict(msg.content.config_records[CONFIG_KEY])
            self.received.append(("query.restore", config, np.zeros((0, 0), np.float32)))
            metrics = MetricRecord({"restored-round": int(config["resume-round"])})
            return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)
        return super().handle(msg)


def _per_party(**kwargs):
    strategy, grid, clients, vocabulary, table = _federation(
        eval_every=1, patience=2, stopping="per-party", transfer_dtype="float32", **kwargs
    )
    clients = {node: RestoringClient(c.name, c.labels, c.delta, dict(MRRS[c.name])) for node, c in clients.items()}
    grid.clients = clients
    return strategy, grid, clients, vocabulary, table


def _received(client: FakeClient, kind: str) -> list[tuple[dict, np.ndarray]]:
    return [(config, rows) for k, config, rows in client.received if k == kind]


def test_each_party_stops_on_its_own_mrr_and_tests_its_own_best_round():
    strategy, grid, clients, _vocabulary, table = _per_party()
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=10)
    assert len(result.rounds) == 7, "trained past the first party's stop, until every party stopped"
    assert result.stopped_early and result.best_round == max(BEST.values())
    stopping = result.stopping
    assert stopping["rule"] == "per-party" and stopping["ended_by"] == "every party stopped"
    for name, party in stopping["parties"].items():
        assert party["best_round"] == BEST[name] and party["stopped_round"] == STOPPED[name]
        assert party["best_valid_mrr"] == pytest.approx(MRRS[name][BEST[name]])
        assert party["best_valid"]["mrr"] == pytest.approx(MRRS[name][BEST[name]])
    for client in clients.values():
        name, best = client.name, BEST[client.name]
        # every validation names the client's own best round so far (the snapshot it keeps)
        assert [config["best-round"] for config, _ in _received(client, "evaluate")] == TOLD[name]
        assert [config["best-round"] for config, _ in _received(client, "train")] == TOLD[name]
        # the final test: its own best round, the rows it validated then, and that round's metrics
        ((config, rows),) = _received(client, "evaluate.test")
        assert config["best-round"] == config["server-round"] == best
        valid_rows = {c["server-round"]: r for c, r in _received(client, "evaluate")}
        np.testing.assert_array_equal(rows, valid_rows[best])
        assert result.test[name]["mrr"] == pytest.approx(MRRS[name][best])
    # the run's best valid metrics: the weighted overall of each party's at its own best round
    weights = {c.name: len(c.labels) for c in clients.values()}
    expected = sum(MRRS[n][BEST[n]] * w for n, w in weights.items()) / sum(weights.values())
    assert result.best_valid["mrr"] == pytest.approx(expected)
    assert (
        result.rounds[3].parties["0"]["stopped_round"] == 4 and result.rounds[2].parties["0"]["stopped_round"] is None
    )


def test_overall_stopping_is_unchanged_and_recorded():
    strategy, grid, clients, _vocabulary, table = _federation(eval_every=1, patience=2, transfer_dtype="float32")
    for client in clients.values():
        client.mrr_by_round = dict(MRRS[client.name])
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=10)
    assert len(result.rounds) == 5 and result.best_round == 3  # the weighted MRR peaks at round 3
    assert result.stopping == {"rule": "overall", "ended_by": "overall valid MRR stopped", "parties": None}
    for client in clients.values():
        ((config, _rows),) = _received(client, "evaluate.test")
        assert config["best-round"] == 3


def test_isolation_per_party_tests_each_clients_own_rows_of_its_best_round():
    strategy, grid, clients, _vocabulary, table = _per_party(setting="isolation")
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=10)
    for node, client in clients.items():
        ((config, rows),) = _received(client, "evaluate.test")
        assert config["best-round"] == BEST[client.name]
        valid_rows = {c["server-round"]: r for c, r in _received(client, "evaluate")}
        np.testing.assert_array_equal(rows, valid_rows[BEST[client.name]])
        np.testing.assert_array_equal(strategy.state.client_rows[node], rows)  # what the run folder writes
    assert {n: p["best_round"] for n, p in result.stopping["parties"].items()} == BEST


def test_a_resumed_per_party_run_ends_as_the_uninterrupted_one():
    """Checkpointed after round 3 (client 0 best at 2, the others at 3) and resumed: the clients are
    told their own best rounds, and the run stops, tests and records as the uninterrupted one."""
    strategy, grid, clients, _vocabulary, table = _per_party()
    saved = {}

    def keep(report) -> None:
        saved[report.round] = (
            copy.deepcopy(strategy.state.checkpoint_arrays()),
            json.loads(json.dumps(strategy.state.checkpoint_state())),  # as the checkpoint file holds it
        )

    whole = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=10, on_round_end=keep)
    arrays, state = saved[3]
    assert "best-table" not in arrays and {k for k in arrays if k.startswith("best-rows/")} == {
        "best-rows/0",
        "best-rows/1",
        "best-rows/2",
    }
    resumed_strategy, grid2, clients2, _, _ = _per_party()
    resumed = resumed_strategy.start(grid2, ArrayRecord(), num_rounds=10, resume_from=(arrays, state))
    restore = {c.name: _received(c, "query.restore")[0][0] for c in clients2.values()}
    assert {n: cfg["best-round"] for n, cfg in restore.items()} == {"0": 2, "1": 3, "2": 3}
    assert all(cfg["resume-round"] == 3 for cfg in restore.values())
    assert [r.round for r in resumed.rounds] == [r.round for r in whole.rounds]
    assert resumed.stopping == whole.stopping and resumed.best_round == whole.best_round
    assert resumed.test == whole.test and resumed.best_valid == whole.best_valid
    for node in clients:
        ((_, rows),) = _received(clients2[node], "evaluate.test")
        ((_, whole_rows),) = _received(clients[node], "evaluate.test")
        np.testing.assert_array_equal(rows, whole_rows)


def test_the_simskip_phase_hands_each_client_its_own_best_round_and_rows():
    from client.kge.refinement import RefinementConfig
    from server.simskip_strategy import DOWNSTREAM_TYPE, SIMSKIP_TRAIN_TYPE, SimSkipStrategy

    strategy, grid, clients, _vocabulary, table = _per_party()
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=10)
    simskip = SimSkipStrategy(strategy, RefinementConfig())
    for node, client in clients.items():
        ((_, tested_rows),) = _received(client, "evaluate.test")
        for kind in (SIMSKIP_TRAIN_TYPE, DOWNSTREAM_TYPE):
            msg = simskip._message(node, kind, {"best-round": result.best_round}, with_weights=False)
            assert msg.content.config_records[CONFIG_KEY]["best-round"] == BEST[client.name]
            np.testing.assert_array_equal(msg.content.array_records["entity-rows"]["rows"].numpy(), tested_rows)


def test_a_client_that_rejoins_is_told_its_own_best_round():
    strategy, grid, clients, _vocabulary, table = _per_party()
    strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=3)
    node = next(n for n, c in clients.items() if c.name == "0")
    strategy.members.restore_clients(grid, [node], timeout=1.0, strict=False)
    ((config, _),) = _received(clients[node], "query.restore")
    assert config["best-round"] == 2 and config["resume-round"] == 3


# --- the real ServerApp and ClientApp handlers (tests/handler_grid.py: no transport, no Ray) -------

KINSHIPS_KGE = {
    "model": "DistMult",
    "embedding-dim": 16,
    "batch-size": 512,
    "num-negs-per-pos": 8,
    "learning-rate": 0.02,
    "local-epochs": 1,
    "eval-every": 1,
    "patience": 1,
    "stopping": "per-party",
}


@pytest.fixture(scope="module")
def kinships_folders(tmp_path_factory):
    from kg_datasets import load_federated

    kg = load_federated("Kinships", num_clients=3, seed=0)
    out = tmp_path_factory.mktemp("kinships") / "data"
    kg.write(out)
    return kg, out


def _run_config(data_root, run_dir, **changes):
    return {
        **KINSHIPS_KGE,
        "setting": "fede",
        "num-server-rounds": 5,
        "min-clients": 3,
        "transfer-dtype": "float32",
        "track-test": True,
        "simskip-rounds": 0,
        "run-dir": str(run_dir),
        "client-data-root": str(data_root),
        "client-output-root": str(run_dir / "clients"),
        **changes,
    }


def _run_federation(run_config, tamper=None):
    """``run_federation`` through the real handlers of 3 fresh nodes (a module fixture cannot use
    conftest's function-scoped ``task_identity``: the same identity is set here and restored)."""
    from flwr.supercore.task_identity import TaskIdentity

    from server.server_app import run_federation
    from tests.handler_grid import HandlerGrid, node_contexts

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    grid = HandlerGrid(node_contexts(run_config, 3), tamper=tamper)
    try:
        run_federation(grid, run_config)
        return grid
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def flower_per_party(kinships_folders, tmp_path_factory):
    """One per-party FedE run of 5 rounds through the real ServerApp (run_federation) and ClientApp
    (measured: client 0 best at round 1 and stopped at 2, clients 1 and 2 still improving at 5):
    ``(run folder, node id -> the client's Context)``."""
    _kg, data_root = kinships_folders
    run_dir = tmp_path_factory.mktemp("flower-per-party")
    grid = _run_federation(_run_config(data_root, run_dir))
    return run_dir, grid.contexts


def test_flower_per_party_trains_past_the_first_stop_and_tests_each_partys_own_best_round(flower_per_party):
    run_dir, contexts = flower_per_party
    final = json.loads((run_dir / "final_metrics.json").read_text())
    rows = {row["round"]: row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    stopping, parties = final["stopping"], final["stopping"]["parties"]
    assert stopping["rule"] == "per-party" and set(parties) == {"0", "1", "2"}
    stopped = [p["stopped_round"] for p in parties.values() if p["stopped_round"] is not None]
    assert stopped and min(stopped) < final["rounds_run"], "the run went on past the first party's stop"
    assert len({p["best_round"] for p in parties.values()}) > 1, "the parties peaked at different rounds"
    assert final["best_round"] == max(p["best_round"] for p in parties.values())
    for name, party in parties.items():
        best, last = party["best_round"], party["stopped_round"] or final["rounds_run"]
        valid = {r: rows[r]["valid"][name]["mrr"] for r in rows if r <= last}
        assert party["best_valid_mrr"] == valid[best] == max(valid.values())
        assert party["best_valid"] == rows[best]["valid"][name]
        # its final test is its state at its own best round (track-test measured it then)
        assert final["test"][name] == pytest.approx(rows[best]["test"][name])
        assert rows[best]["parties"][name]["best_round"] == best
    # what the SimSkip phase hands each client (best-round = its own) is there: its own best round's state
    for node, context in contexts.items():
        assert PRIVATE_SNAPSHOT.format(parties[str(node - 10)]["best_round"]) in context.state.array_records
    assert not (run_dir / "entity_embeddings.npy").exists()  # no one table holds every party's best rows
    assert all((run_dir / f"entity_embeddings_client{name}.npy").is_file() for name in parties)


def test_flower_per_party_equals_the_in_process_runner(kinships_folders, flower_per_party):
    """Same config and seed, float32 rows on the wire: the Flower engine and the in-process runner
    stop, select and test alike (``client.kge.centralized.run_fede_in_process``)."""
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig

    kg, _ = kinships_folders
    final = json.loads((flower_per_party[0] / "final_metrics.json").read_text())
    config = KGEConfig.from_run_config({**KINSHIPS_KGE, "track-test": True})
    reference = run_fede_in_process(kg, config, 5, device="cpu", progress=lambda line: None)
    assert final["stopping"]["ended_by"] == reference["stopping"]["ended_by"]
    assert final["best_round"] == reference["best_round"]
    assert final["best_valid_overall"]["mrr"] == pytest.approx(reference["best_valid_mrr"])
    for name, party in reference["stopping"]["parties"].items():
        flower = final["stopping"]["parties"][name]
        assert (flower["best_round"], flower["stopped_round"]) == (party["best_round"], party["stopped_round"])
        assert flower["best_valid"] == pytest.approx(party["best_valid"])
        assert final["test"][name] == pytest.approx(reference["test"]["clients"][name])


def test_flower_per_party_resumes_as_the_uninterrupted_run(kinships_folders, flower_per_party, tmp_path):
    """Every train reply of round 4 fails (the run stops after round 3's checkpoint; client 0 stopped
    at round 2 with its best at 1), then ``resume = true`` with fresh client state: each client
    restores its own best round's private state from its own checkpoints, and the run ends as the
    uninterrupted one."""
    from flwr.app import Error

    _kg, data_root = kinships_folders
    run_config = _run_config(data_root, tmp_path / "run")

    def fail_round_4(msg, reply):
        if msg.metadata.message_type == "train" and msg.content.config_records[CONFIG_KEY]["server-round"] == 4:
            return Message(Error(code=1, reason="party crashed"), reply_to=msg)
        return None

    with pytest.raises(FederationError, match="no client update survived"):
        _run_federation(run_config, tamper=fail_round_4)
    restored = {}

    def record_restore(msg, reply):
        if msg.metadata.message_type == "query.restore":
            config = dict(msg.content.config_records[CONFIG_KEY])
            restored[msg.metadata.dst_node_id] = (config, reply.content.metric_records[METRICS_KEY]["restored-round"])
        return

    _run_federation({**run_config, "resume": True}, tamper=record_restore)
    whole = json.loads((flower_per_party[0] / "final_metrics.json").read_text())
    resumed = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert whole["stopping"]["parties"]["0"]["best_round"] == 1
    # node 10 + k is client k: each is told its own best round as of round 3
    assert {str(node - 10): cfg["best-round"] for node, (cfg, _) in restored.items()} == {"0": 1, "1": 3, "2": 3}
    assert all(cfg["resume-round"] == 3 and got == 3 for cfg, got in restored.values())
    for key in ("best_round", "stopping", "test", "test_overall", "best_valid_overall", "rounds_run"):
        assert resumed[key] == whole[key], key
