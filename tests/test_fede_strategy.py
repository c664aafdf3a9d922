"""FedEStrategy's messages and loop, driven by an in-process fake Grid and numpy-only clients."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from client.kge.aggregation import aggregate_rows
from client.protocol import CLIENT_INFO_KEY, CONFIG_KEY, ENTITY_ROWS_KEY, METRICS_KEY
from server.records import FederationError
from server.strategy import FedEStrategy

DIM = 3


pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime


class FakeClient:
    """A party that adds its own constant to the rows it gets and reports scripted MRRs."""

    def __init__(self, name: str, labels: list[str], delta: float, mrr_by_round: dict[int, float] | None = None):
        self.name, self.labels, self.delta = name, labels, delta
        self.mrr_by_round = mrr_by_round or {}
        self.received: list[tuple[str, dict, np.ndarray]] = []
        self.fail_train_rounds: set[int] = set()

    def handle(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        config = dict(msg.content.config_records[CONFIG_KEY])
        if kind == "query.entities":
            info = ConfigRecord(
                {
                    "client-id": self.name,
                    "entity-labels": self.labels,
                    "num-train": 10,
                    "num-valid": len(self.labels),
                    "num-test": 2 * len(self.labels),
                    "entity-dim": DIM,
                }
            )
            return Message(RecordDict({CLIENT_INFO_KEY: info}), reply_to=msg)
        rows = msg.content.array_records[ENTITY_ROWS_KEY]["rows"].numpy()
        self.received.append((kind, config, rows.copy()))
        if kind == "train":
            if config["server-round"] in self.fail_train_rounds:
                return Message(Error(code=1, reason="party crashed"), reply_to=msg)
            out = (rows + self.delta).astype(np.float32)
            metrics = MetricRecord({"num-entities": len(self.labels), "train-loss": 1.0, "train-seconds": 0.0})
            return Message(
                RecordDict({ENTITY_ROWS_KEY: ArrayRecord({"rows": Array(out)}), METRICS_KEY: metrics}), reply_to=msg
            )
        mrr = self.mrr_by_round.get(config["server-round"], 0.1)
        metrics = MetricRecord({"mrr": mrr, "num_triples": len(self.labels)})
        return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)


class FakeGrid:
    """Just the two Grid methods the strategy uses; delivers messages to fake clients in-process."""

    def __init__(self, clients: dict[int, FakeClient]):
        self.clients = clients

    def get_node_ids(self) -> Iterable[int]:
        return list(self.clients)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self.clients[m.metadata.dst_node_id].handle(m) for m in messages]


def _federation(setting="fede", **kwargs):
    clients = {
        11: FakeClient("0", ["c", "a", "b"], delta=1.0),
        12: FakeClient("1", ["d", "a"], delta=10.0),
        13: FakeClient("2", ["b", "e"], delta=100.0),
    }
    strategy = FedEStrategy(setting=setting, min_clients=3, **kwargs)
    grid = FakeGrid(clients)
    vocabulary = strategy.handshake(grid)
    table = np.arange(len(vocabulary) * DIM, dtype=np.float32).reshape(len(vocabulary), DIM)
    return strategy, grid, clients, vocabulary, table


def test_handshake_builds_vocabulary_and_each_client_gets_only_its_rows_in_local_order():
    strategy, grid, clients, vocabulary, table = _federation()
    assert vocabulary == ["a", "b", "c", "d", "e"]
    strategy.state.set_table(table)
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord({"local-epochs": 3}), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13]
    for msg in messages:
        client = clients[msg.metadata.dst_node_id]
        rows = msg.content.array_records[ENTITY_ROWS_KEY]["rows"].numpy()
        expected = table[[vocabulary.index(label) for label in client.labels]]
        assert np.array_equal(rows, expected)
        config = msg.content.config_records[CONFIG_KEY]
        assert config["server-round"] == 1 and config["local-epochs"] == 3
        assert msg.metadata.message_type == "train"


def test_fede_round_sets_each_row_to_the_mean_of_its_holders():
    strategy, grid, clients, vocabulary, table = _federation(eval_every=10, transfer_dtype="float32")
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=1)
    updates = [
        (
            np.array([vocabulary.index(label) for label in c.labels]),
            table[[vocabulary.index(label) for label in c.labels]] + c.delta,
        )
        for c in clients.values()
    ]
    np.testing.assert_allclose(strategy.state.table, aggregate_rows(table, updates))
    # "a" is held by clients 0 (+1) and 1 (+10); "c" only by client 0; "e" only by client 2
    np.testing.assert_allclose(strategy.state.table[0], table[0] + 5.5)
    np.testing.assert_array_equal(strategy.state.table[2], table[2] + 1.0)
    np.testing.assert_array_equal(strategy.state.table[4], table[4] + 100.0)
    report = result.rounds[0]
    assert report.bytes_sent == report.bytes_received == 7 * DIM * 4  # 3 + 2 + 2 rows, float32
    assert set(result.test) == {"0", "1", "2"}


def test_isolation_gives_every_client_back_its_own_rows():
    strategy, grid, clients, vocabulary, table = _federation(setting="isolation", eval_every=10)
    strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=2)
    for node, client in clients.items():
        own = table[[vocabulary.index(label) for label in client.labels]]
        kinds = [(kind, rows) for kind, _, rows in client.received]
        assert kinds[1][0] == "train"
        np.testing.assert_array_equal(kinds[1][1], own + client.delta)  # round 2 starts from its own rows
        np.testing.assert_array_equal(strategy.state.client_rows[node], own + 2 * client.delta)


def test_validation_schedule_early_stopping_and_test_on_the_best_round():
    strategy, grid, clients, _vocabulary, table = _federation(eval_every=2, patience=2)
    for client in clients.values():
        client.mrr_by_round = {2: 0.2, 4: 0.5, 6: 0.4, 8: 0.3, 10: 0.9}
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=10)
    assert [r.round for r in result.rounds] == list(range(1, 9)), "stops after two checks without progress"
    assert result.stopped_early and result.best_round == 4
    assert [r.round for r in result.rounds if r.valid is not None] == [2, 4, 6, 8]
    assert result.best_valid["mrr"] == pytest.approx(0.5)
    client = clients[11]
    test_messages = [(config, rows) for kind, config, rows in client.received if kind == "evaluate.test"]
    assert len(test_messages) == 1
    config, rows = test_messages[0]
    assert config["best-round"] == 4
    # the best table is the one after round 4: every row moved by round-4 aggregation four times
    valid_rows_round4 = [rows for kind, cfg, rows in client.received if kind == "evaluate" and cfg["server-round"] == 4]
    np.testing.assert_array_equal(rows, valid_rows_round4[0])
    later = [cfg["best-round"] for kind, cfg, _ in client.received if kind == "evaluate"]
    assert later == [0, 2, 4, 4], "each validation tells the client which snapshot to keep"


def test_a_failed_client_is_left_out_of_the_round_and_recorded():
    strategy, grid, clients, _vocabulary, table = _federation(eval_every=10)
    clients[12].fail_train_rounds = {1}
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=1)
    # "a" is now averaged over client 0 alone, "d" (only client 1) unchanged
    np.testing.assert_array_equal(strategy.state.table[0], table[0] + 1.0)
    np.testing.assert_array_equal(strategy.state.table[3], table[3])
    assert result.rounds[0].failures == ["1: party crashed"]


def test_a_round_whose_only_update_has_the_wrong_shape_fails_naming_it():
    strategy, grid, _clients, _vocabulary, table = _federation()
    strategy.state.set_table(table)
    msg = next(iter(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)))
    bad = Message(
        RecordDict(
            {
                ENTITY_ROWS_KEY: ArrayRecord({"rows": Array(np.zeros((1, DIM), np.float32))}),
                METRICS_KEY: MetricRecord({"num-entities": 1}),
            }
        ),
        reply_to=msg,
    )
    with pytest.raises(FederationError, match="no client update survived.*shape"):
        strategy.aggregate_train(1, [bad])


def test_start_before_handshake_is_an_error():
    with pytest.raises(FederationError, match="handshake"):
        FedEStrategy().start(FakeGrid({}), ArrayRecord(), num_rounds=1)


def test_float16_transfer_halves_the_bytes_and_keeps_the_table_float32():
    strategy, grid, clients, _vocabulary, table = _federation(eval_every=10, transfer_dtype="float16")
    result = strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=1)
    kind, _, rows = clients[11].received[0]
    assert kind == "train" and rows.dtype == np.float16
    assert result.rounds[0].bytes_sent == 7 * DIM * 2
    assert strategy.state.table.dtype == np.float32
    # values this small are exact in float16, so the mean is exactly as in float32
    np.testing.assert_allclose(strategy.state.table[0], table[0] + 5.5)


def test_handshake_gives_up_when_too_few_clients_connect():
    strategy = FedEStrategy(min_clients=3, min_clients_timeout=0.5)
    grid = FakeGrid({11: FakeClient("0", ["a"], delta=0.0)})
    with pytest.raises(FederationError, match="1 of 3 clients connected after 0.5 s"):
        strategy.handshake(grid)
