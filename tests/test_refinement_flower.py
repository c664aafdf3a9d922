"""Both phases through the real Flower handlers and strategies, on an in-process grid (no Ray).

The fake grid delivers each message to the real ClientApp handler of its type, with one
``Context`` per node, so FedE rounds, SimSkip rounds and the downstream evaluation run exactly
the code a deployment runs, minus transport. Nations over 2 clients, tiny budgets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import client_app, refinement_app
from client.kge.models import initial_entity_table
from client.kge.refinement import REFINED_VARIANT, load_run_configs, unpack_variants
from server.simskip_strategy import DOWNSTREAM_TYPE, SIMSKIP_TRAIN_TYPE, WEIGHTS_KEY, run_refinement_phase
from server.strategy import FedEStrategy
from server.weights import fedavg_named

KGE = {"embedding-dim": 8, "local-epochs": 1, "num-negs-per-pos": 4, "batch-size": 128, "eval-batch-size": 64,
       "learning-rate": 0.01, "eval-every": 1}
HANDLERS = {
    "query.entities": client_app.handshake,
    "train": client_app.train,
    "evaluate": client_app.validate,
    "evaluate.test": client_app.test,
    SIMSKIP_TRAIN_TYPE: refinement_app.simskip_train,
    DOWNSTREAM_TYPE: refinement_app.downstream,
}


pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime


class HandlerGrid:
    """Delivers messages to the real ClientApp handlers; records every message and reply."""

    def __init__(self, contexts: dict[int, Context]):
        self.contexts = contexts
        self.log: list[tuple[Message, Message]] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            TaskIdentity.node_id = node
            reply = HANDLERS[msg.metadata.message_type](msg, self.contexts[node])
            self.log.append((msg, reply))
            replies.append(reply)
        return replies


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=2, seed=0).write(out)
    return out


def _run(data_root, tmp_path, **simskip):
    run_config = {**KGE, "client-data-root": str(data_root), "client-output-root": str(tmp_path / "clients"),
                  "simskip-rounds": 2, "simskip-local-epochs": 1, **simskip}
    contexts = {10 + k: Context(run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(),
                                run_config=run_config) for k in (0, 1)}
    grid = HandlerGrid(contexts)
    _, kge_config, refinement = load_run_configs(run_config)
    # the server sets the re-fit budget in the downstream message: every client uses the same
    refinement = dataclasses.replace(refinement, refit_epochs=2)
    strategy = FedEStrategy(min_clients=2, eval_every=1, patience=5)
    vocabulary = strategy.handshake(grid)
    table = initial_entity_table(kge_config, len(vocabulary), seed=0)
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=2,
                            train_config=ConfigRecord({"local-epochs": 1}))
    rows = run_refinement_phase(grid, strategy, best_round=result.best_round, refinement=refinement,
                                kge_config=kge_config, setting="fede", run_dir=str(tmp_path))
    return grid, result, rows, refinement


def _simskip_messages(grid, server_round):
    return [(m, r) for m, r in grid.log
            if m.metadata.message_type == SIMSKIP_TRAIN_TYPE and m.content.config_records["config"]["server-round"] == server_round]


def _weights(record, variants=(REFINED_VARIANT,)):
    return unpack_variants([(k, record[k].numpy()) for k in record], list(variants))


def test_federated_phase_averages_weights_and_writes_the_table(data_root, tmp_path) -> None:
    grid, result, rows, refinement = _run(data_root, tmp_path)
    assert list(rows) == ["fede-as-trained", "unrefined", "refined", "refined-gated"]
    # FedE as trained == the KGE phase's own final test (standard protocol, best round's state)
    for client, metrics in result.test.items():
        assert rows["fede-as-trained"][client]["standard"]["mrr"] == pytest.approx(metrics["mrr"], abs=1e-6)
    # round 2 starts every client from the row-weighted mean of the round-1 replies
    round1 = _simskip_messages(grid, 1)
    expected = fedavg_named([
        (_weights(reply.content.array_records[WEIGHTS_KEY])[REFINED_VARIANT], int(reply.content.metric_records["metrics"]["num-rows"]))
        for _, reply in round1
    ])
    for msg, _ in _simskip_messages(grid, 2):
        got = dict(_weights(msg.content.array_records[WEIGHTS_KEY])[REFINED_VARIANT])
        for name, array in expected:
            np.testing.assert_allclose(got[name], array, rtol=1e-6, atol=1e-7)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["clients"] == ["0", "1", "overall"] and {"refined", "refined-gated"} <= set(results["gain_points"])
    # every client chose its skip strength on valid with the server's grid; recorded everywhere
    downstream_msgs = [m for m, _ in grid.log if m.metadata.message_type == DOWNSTREAM_TYPE]
    assert all(m.content.config_records["config"]["gate-grid"] == "0,0.25,0.5,1" for m in downstream_msgs)
    gates = json.loads((tmp_path / "downstream.json").read_text())["gate"]
    assert set(gates) == {"0", "1"} and results["gate"] == gates
    for client, gate in gates.items():
        assert list(gate["valid_mrr"]) == ["0", "0.25", "0.5", "1"] and gate["selection"] == "as-trained"
        best = max(gate["valid_mrr"].values())
        assert gate["alpha"] == min(float(a) for a, v in gate["valid_mrr"].items() if v == best)
        if gate["alpha"] == 0.0:
            assert rows["refined-gated"][client] == rows["unrefined"][client]
        assert (tmp_path / "clients" / client / "refined" / "refined-gated.npy").is_file()
    assert "Skip-strength gate" in (tmp_path / "results.md").read_text()
    assert len((tmp_path / "simskip_metrics.jsonl").read_text().splitlines()) == 2
    for name in ("results.md", "results.csv", "simskip_loss.png", "refined_vs_unrefined.png", "downstream.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "clients" / "0" / "refined" / "refined.npy").is_file()


def test_local_only_ablation_sends_no_encoder_after_round_one(data_root, tmp_path) -> None:
    grid, _, rows, _ = _run(data_root, tmp_path, **{"simskip-federate": False, "simskip-no-skip-ablation": True})
    assert list(rows) == ["fede-as-trained", "unrefined", "refined", "refined-gated", "refined-no-skip"]
    assert all(WEIGHTS_KEY in m.content.array_records for m, _ in _simskip_messages(grid, 1))
    for msg, reply in _simskip_messages(grid, 2):
        assert WEIGHTS_KEY not in msg.content.array_records and WEIGHTS_KEY not in reply.content.array_records
    downstream = [m for m, _ in grid.log if m.metadata.message_type == DOWNSTREAM_TYPE]
    assert downstream and all(WEIGHTS_KEY not in m.content.array_records for m in downstream)
