"""The federation's failure semantics (issue 6, items 1-5 and 9), driven by a fake Grid.

The fake Grid mimics what Flower's grid does that matters here: it gives each pushed message an
id, returns only the replies that "arrived" before the timeout (a straggler's reply turns up in
a later exchange, as a reply to its old message id), answers for a dead node with Flower's own
"node unavailable" error reply coming from the SuperLink's node id, and lists the connected
nodes (a restarted SuperNode appears under a new node id). Clients are numpy-only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from client.kge.aggregation import aggregate_rows
from client.protocol import CLIENT_INFO_KEY, CONFIG_KEY, ENTITY_ROWS_KEY, METRICS_KEY
from server.records import FederationError, RoundReport
from server.strategy import FedEStrategy

DIM = 3
SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID: the source of Flower's own error replies
LABELS = {"0": ["c", "a", "b"], "1": ["d", "a"], "2": ["b", "e"]}
DELTAS = {"0": 1.0, "1": 10.0, "2": 100.0}

pytestmark = pytest.mark.usefixtures("task_identity")  # Flower messages outside a runtime


class FakeClient:
    """A party that adds ``delta`` to the rows it gets; its validation MRR depends on the rows.

    ``garbage`` maps a round to a function turning a good train reply's rows (or the whole
    reply) into a bad one; ``restores`` records the ``query.restore`` configs it got.
    """

    def __init__(self, name: str, labels: list[str] | None = None, delta: float | None = None):
        self.name = name
        self.labels = list(LABELS[name] if labels is None else labels)
        self.delta = DELTAS.get(name, 0.5) if delta is None else delta
        self.received: list[tuple[str, dict]] = []
        self.restores: list[dict] = []
        self.garbage: dict[int, object] = {}
        self.extra_metrics: dict[str, float] = {}

    def handle(self, msg: Message) -> Message:
        kind = msg.metadata.message_type
        config = dict(msg.content.config_records[CONFIG_KEY])
        self.received.append((kind, config))
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
        if kind == "query.finish":
            return Message(RecordDict({CONFIG_KEY: ConfigRecord({"acknowledged": 1})}), reply_to=msg)
        if kind == "query.restore":
            self.restores.append(config)
            return Message(
                RecordDict({METRICS_KEY: MetricRecord({"restored-round": int(config["resume-round"])})}), reply_to=msg
            )
        rows = msg.content.array_records[ENTITY_ROWS_KEY]["rows"].numpy()
        if kind == "train":
            out = (rows + self.delta).astype(np.float32)
            metrics = MetricRecord({"num-entities": len(self.labels), "train-loss": 1.0, "train-seconds": 0.0})
            content = RecordDict({ENTITY_ROWS_KEY: ArrayRecord({"rows": Array(out)}), METRICS_KEY: metrics})
            bad = self.garbage.get(config["server-round"])
            if bad is not None:
                content = bad(content, out)
            return Message(content, reply_to=msg)
        # a deterministic "MRR" that depends on the rows: the test metrics follow the table
        mrr = float(1.0 / (1.0 + abs(float(rows.astype(np.float64).sum())) % 7.0))
        metrics = {"mrr": mrr, "num_triples": len(self.labels), **self.extra_metrics}
        return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


class FakeGrid:
    """``get_node_ids`` + ``send_and_receive`` with message ids, stragglers, dead and new nodes.

    :param clients: node id -> client.
    """

    def __init__(self, clients: dict[int, FakeClient]):
        self.clients = dict(clients)
        self.dead: set[int] = set()  # still listed by Flower (heartbeat not yet expired), never answers
        self.gone: set[int] = set()  # no longer listed
        self.slow: dict[int, set[int]] = {}  # node -> rounds whose train reply arrives one exchange late
        self.reverse = False
        self.late: list[Message] = []
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.clients if n not in self.gone]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies, late = list(self.late), []  # last exchange's stragglers arrive now (stale)
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # what the real grid's push does
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.dead or node in self.gone:
                # Flower's reply for a node whose heartbeat expired: from the SuperLink, not the node
                reply = Message(Error(code=3, reason="Error: Node Unavailable"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                replies.append(reply)
                continue
            reply = self.clients[node].handle(msg)
            config = msg.content.config_records[CONFIG_KEY]
            if msg.metadata.message_type == "train" and config["server-round"] in self.slow.get(node, set()):
                late.append(reply)
            else:
                replies.append(reply)
        self.late = late
        return list(reversed(replies)) if self.reverse else replies


def _federation(clients: dict[int, FakeClient] | None = None, **kwargs):
    clients = clients or {11: FakeClient("0"), 12: FakeClient("1"), 13: FakeClient("2")}
    kwargs.setdefault("min_clients", 3)
    kwargs.setdefault("eval_every", 10)
    kwargs.setdefault("transfer_dtype", "float32")  # exact rows: the expected tables are computed in float32
    strategy = FedEStrategy(**kwargs)
    grid = FakeGrid(clients)
    vocabulary = strategy.handshake(grid, timeout=5)
    table = np.arange(len(vocabulary) * DIM, dtype=np.float32).reshape(len(vocabulary), DIM) / 10
    return strategy, grid, vocabulary, table


def _expected(table, vocabulary, names):
    """The FedE mean of one round in which exactly the clients ``names`` were aggregated."""
    updates = [
        (
            np.array([vocabulary.index(label) for label in LABELS[n]]),
            table[[vocabulary.index(label) for label in LABELS[n]]] + DELTAS[n],
        )
        for n in names
    ]
    return aggregate_rows(table, updates)


def _start(strategy, grid, table, **kwargs):
    return strategy.start(grid, ArrayRecord({"entity-table": Array(table)}), timeout=5, **kwargs)


# ---------------------------------------------------------------- item 5: update validation
def _wrong_shape(content, rows):
    content[ENTITY_ROWS_KEY] = ArrayRecord({"rows": Array(rows[:1].copy())})
    return content


def _int_dtype(content, rows):
    content[ENTITY_ROWS_KEY] = ArrayRecord({"rows": Array(rows.astype(np.int64))})
    return content


def _with_value(value):
    def bad(content, rows):
        rows = rows.copy()
        rows[1, 2] = value
        content[ENTITY_ROWS_KEY] = ArrayRecord({"rows": Array(rows)})
        return content

    return bad


def _without(key):
    def bad(content, rows):
        del content[key]
        return content

    return bad


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (_wrong_shape, "shape (1, 3), expected (2, 3)"),
        (_int_dtype, "dtype int64"),
        (_with_value(np.nan), "NaN or Inf"),
        (_with_value(np.inf), "NaN or Inf"),
        (_without(ENTITY_ROWS_KEY), "lacks entity-rows"),
        (_without(METRICS_KEY), "lacks the 'metrics' record"),
    ],
)
def test_a_bad_update_is_rejected_for_that_client_only(garbage, reason):
    strategy, grid, vocabulary, table = _federation()
    grid.clients[12].garbage = {1: garbage}
    result = _start(strategy, grid, table, num_rounds=1)
    np.testing.assert_array_equal(strategy.state.table, _expected(table, vocabulary, ["0", "2"]))
    failures = result.rounds[0].failures
    assert len(failures) == 1 and failures[0].startswith("1: update rejected: ") and reason in failures[0]
    assert set(result.rounds[0].train) == {"0", "2"}


def test_a_reply_from_an_unregistered_node_is_rejected():
    strategy, grid, vocabulary, table = _federation()
    strategy.state.set_table(table)
    request = Message(RecordDict({CONFIG_KEY: ConfigRecord()}), dst_node_id=99, message_type="train")
    rows = np.zeros((2, DIM), np.float32)
    stranger = Message(
        RecordDict(
            {ENTITY_ROWS_KEY: ArrayRecord({"rows": Array(rows)}), METRICS_KEY: MetricRecord({"num-entities": 2})}
        ),
        reply_to=request,
    )
    good = grid.clients[11].handle(
        next(
            m for m in strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid) if m.metadata.dst_node_id == 11
        )
    )
    strategy.aggregate_train(1, [stranger, good])
    np.testing.assert_array_equal(strategy.state.table, _expected(table, vocabulary, ["0"]))
    with pytest.raises(FederationError, match="no client update survived.*unregistered"):
        strategy.aggregate_train(2, [stranger])


def test_the_table_does_not_depend_on_the_order_of_the_replies():
    tables = []
    for reverse in (False, True):
        clients = {11: FakeClient("0", delta=0.1), 12: FakeClient("1", delta=-0.3), 13: FakeClient("2", delta=0.7)}
        strategy, grid, vocabulary, _ = _federation(clients)
        grid.reverse = reverse
        table = np.random.default_rng(3).normal(size=(len(vocabulary), DIM)).astype(np.float32)
        result = _start(strategy, grid, table, num_rounds=3)
        tables.append((strategy.state.table.copy(), json.dumps(result.test, sort_keys=True)))
    assert np.array_equal(tables[0][0], tables[1][0]) and tables[0][1] == tables[1][1]


# ---------------------------------------------------------------- item 3: round timeout
def test_a_straggler_is_left_out_and_its_late_reply_never_reaches_a_later_round():
    strategy, grid, vocabulary, table = _federation()
    grid.slow = {12: {1}}  # client 1's round-1 reply arrives during round 2's exchange
    result = _start(strategy, grid, table, num_rounds=2)
    first, second = result.rounds
    assert first.failures == ["1: timeout (no reply within 5 s)"] and set(first.train) == {"0", "2"}
    after_round1 = _expected(table, vocabulary, ["0", "2"])
    # round 2: the straggler takes part again with its round-2 reply; its stale round-1 reply is dropped
    assert second.failures == [] and set(second.train) == {"0", "1", "2"}
    np.testing.assert_array_equal(strategy.state.table, _expected(after_round1, vocabulary, ["0", "1", "2"]))


# ---------------------------------------------------------------- item 1: dead node, rejoin
def test_a_dead_node_is_recorded_by_client_id_and_the_round_completes():
    strategy, grid, vocabulary, table = _federation()
    grid.dead = {12}
    result = _start(strategy, grid, table, num_rounds=1)
    # the last round is validated too: the dead node is recorded in both phases, by its client id
    assert result.rounds[0].failures == ["1: Error: Node Unavailable", "1: validation: Error: Node Unavailable"]
    np.testing.assert_array_equal(strategy.state.table, _expected(table, vocabulary, ["0", "2"]))


def test_a_restarted_client_rejoins_under_its_new_node_id_and_impostors_are_refused():
    strategy, grid, _vocabulary, table = _federation(min_clients=2)
    reports = []

    def kill_and_restart(report: RoundReport) -> None:
        reports.append(report)
        if report.round == 1:
            grid.gone.add(12)  # SIGKILLed SuperNode
            grid.clients[22] = FakeClient("1")  # restarted: new node id, same client
            grid.clients[23] = FakeClient("9", labels=["z"])  # not of this federation
            grid.clients[24] = FakeClient("2", labels=["b", "x"])  # claims client 2 with other labels

    result = _start(strategy, grid, table, num_rounds=3, on_round_end=kill_and_restart)
    assert sorted(strategy.clients) == [11, 13, 22]
    assert strategy.clients[22].client_id == "1"
    restored = grid.clients[22].restores
    assert len(restored) == 1 and restored[0]["resume-round"] == 1 and restored[0]["strict"] is False
    assert restored[0]["federation-id"] == strategy.loop.federation_id
    assert [set(r.train) for r in result.rounds] == [{"0", "1", "2"}] * 3
    # the refused nodes were asked once and never sent anything else
    for node in (23, 24):
        assert [kind for kind, _ in grid.clients[node].received] == ["query.entities"]
    assert set(result.test) == {"0", "1", "2"}


# ---------------------------------------------------------------- item 2: too few clients
def test_too_few_clients_at_the_start_of_a_round_fail_after_the_timeout():
    strategy, grid, _vocabulary, table = _federation(min_clients=2, min_clients_timeout=0.3)
    done = []

    def all_but_one_die(report: RoundReport) -> None:
        done.append(report.round)
        grid.gone |= {12, 13}

    with pytest.raises(FederationError, match=r"round 2: 1 of 2 required clients connected after waiting"):
        _start(strategy, grid, table, num_rounds=3, on_round_end=all_but_one_die)
    assert done == [1], "round 1 was completed and handed over before the failure"


def test_a_round_without_any_surviving_update_fails():
    strategy, grid, _vocabulary, table = _federation()
    grid.dead = {11, 12, 13}
    with pytest.raises(FederationError, match="round 1: no client update survived"):
        _start(strategy, grid, table, num_rounds=1)


# ---------------------------------------------------------------- item 4: resume (strategy side)
def test_resume_from_the_loop_state_gives_the_same_result_as_an_uninterrupted_run():
    kwargs = {"eval_every": 1, "patience": 2, "fraction_train": 0.67, "seed": 5}  # sampling: RNG state matters
    strategy, grid, _vocabulary, table = _federation(**kwargs)
    uninterrupted = _start(strategy, grid, table, num_rounds=5)
    full_table = strategy.state.table.copy()

    strategy, grid, _vocabulary, table = _federation(**kwargs)
    saved = {}

    def checkpoint_then_die(report: RoundReport) -> None:
        saved[report.round] = (
            json.loads(json.dumps(strategy.state.checkpoint_state())),
            {k: v.copy() for k, v in strategy.state.checkpoint_arrays().items()},
        )
        if report.round == 2:
            raise KeyboardInterrupt  # the server dies after round 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        _start(strategy, grid, table, num_rounds=5, on_round_end=checkpoint_then_die)
    state, arrays = saved[2]

    # a fresh server and fresh SuperNodes (new node ids) continue after round 2
    clients = {31: FakeClient("0"), 32: FakeClient("1"), 33: FakeClient("2")}
    strategy, grid, _vocabulary, table = _federation(clients, **kwargs)
    resumed = _start(strategy, grid, table, num_rounds=5, resume_from=(arrays, state))
    for client in clients.values():
        assert client.restores[0]["resume-round"] == 2 and client.restores[0]["strict"] is True
    assert [r.round for r in resumed.rounds] == [r.round for r in uninterrupted.rounds]
    assert resumed.best_round == uninterrupted.best_round and resumed.stopped_early == uninterrupted.stopped_early
    assert resumed.test == uninterrupted.test and resumed.test_overall == uninterrupted.test_overall
    np.testing.assert_array_equal(strategy.state.table, full_table)


def test_a_checkpoint_of_other_clients_is_refused():
    strategy, grid, _vocabulary, table = _federation()
    _start(strategy, grid, table, num_rounds=1)
    state, arrays = strategy.state.checkpoint_state(), strategy.state.checkpoint_arrays()
    state["clients"] = ["0", "1", "7"]
    fresh, grid, _, _ = _federation()
    with pytest.raises(FederationError, match="clients"):
        fresh.state.restore_checkpoint(arrays, state)


# ---------------------------------------------------------------- item 7 support: tracked test metrics
def test_tracked_test_metrics_stay_out_of_the_validation_overall():
    strategy, grid, _vocabulary, table = _federation(eval_every=1)
    for client in grid.clients.values():
        client.extra_metrics = {"test-mrr": 0.9, "test-num_triples": 2 * len(client.labels)}
    result = _start(strategy, grid, table, num_rounds=1)
    report = result.rounds[0]
    assert "test-mrr" not in report.valid_overall and all("test-mrr" not in m for m in report.valid.values())
    assert report.test_overall == {"mrr": pytest.approx(0.9), "num_triples": 14.0}
    row = report.as_dict()
    assert row["test"]["0"] == {"mrr": 0.9, "num_triples": 6.0} and row["finished_at"] > 0


# ---------------------------------------------------------------- the ServerApp: on disk, resume
def _run_config(run_dir, **extra):
    return {
        "embedding-dim": DIM,
        "num-server-rounds": 4,
        "eval-every": 1,
        "patience": 10,
        "min-clients": 3,
        "simskip-rounds": 0,
        "run-dir": str(run_dir),
        "min-clients-timeout": 0.3,
        "round-timeout": 5.0,
        **extra,
    }


def _clients(first_node: int) -> dict[int, FakeClient]:
    return {first_node + k: FakeClient(str(k)) for k in range(3)}


def _final(run_dir):
    payload = json.loads((run_dir / "final_metrics.json").read_text())
    payload.pop("timing")  # the only wall-clock key
    return payload


def test_server_app_keeps_every_round_on_disk_and_a_resume_ends_like_an_uninterrupted_run(tmp_path):
    from server.checkpoint import has_checkpoint
    from server.server_app import run_federation

    full = FakeGrid(_clients(10))
    run_federation(full, _run_config(tmp_path / "full"))
    notices = [m for m in full.sent if m.metadata.message_type == "query.finish"]  # after everything else
    assert (
        sorted(m.metadata.dst_node_id for m in notices) == sorted(full.clients)
        and full.sent[-len(notices) :] == notices
    )
    assert {m.content.config_records[CONFIG_KEY]["status"] for m in notices} == {"completed"}

    grid = FakeGrid(_clients(20))
    rounds_done = []
    original = grid.send_and_receive

    def die_after_round_2(messages, *, timeout=None):
        messages = list(messages)
        if any(
            m.metadata.message_type == "train" and m.content.config_records[CONFIG_KEY]["server-round"] == 3
            for m in messages
        ):
            grid.gone = set(grid.clients)  # every client dies as round 3 starts training
            rounds_done.append(2)
        return original(messages, timeout=timeout)

    grid.send_and_receive = die_after_round_2
    interrupted = tmp_path / "interrupted"
    with pytest.raises(FederationError, match="round 3: no client update survived"):
        run_federation(grid, _run_config(interrupted))
    rows = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and has_checkpoint(interrupted)
    # the parties are told, and stay up (their simskip-client keeps running for a resume)
    notices = [m for m in grid.sent if m.metadata.message_type == "query.finish"]
    assert notices and all(m.content.config_records[CONFIG_KEY]["status"] == "failed" for m in notices)
    assert "no client update survived" in notices[0].content.config_records[CONFIG_KEY]["reason"]
    assert not (interrupted / "final_metrics.json").exists()

    run_federation(FakeGrid(_clients(30)), _run_config(interrupted, resume=True))
    assert _final(interrupted) == _final(tmp_path / "full")
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_rows = (interrupted / "metrics.jsonl").read_text().splitlines()

    def strip(line):
        return {
            k: v
            for k, v in json.loads(line).items()
            if "seconds" not in k and k not in {"finished_at", "server_peak_rss_mb"}
        }

    assert [strip(r) for r in resumed_rows] == [strip(r) for r in full_rows]


def test_server_app_refuses_to_resume_without_a_checkpoint(tmp_path):
    from server.checkpoint import CheckpointError
    from server.server_app import run_federation

    with pytest.raises(CheckpointError):
        run_federation(FakeGrid(_clients(10)), _run_config(tmp_path, resume=True))


# ---------------------------------------------------------------- the ClientApp: private checkpoints
TINY_KGE = {"embedding-dim": 4, "local-epochs": 1, "num-negs-per-pos": 2, "batch-size": 64, "eval-batch-size": 64}


@pytest.fixture(scope="module")
def nations_folder(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=2, partition="relation", seed=0).write(out)
    return out


def _party(data_root, out_root):
    from flwr.app import Context

    return Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0},
        state=RecordDict(),
        run_config={**TINY_KGE, "client-data-root": str(data_root), "client-output-root": str(out_root)},
    )


def _to_party(message_type, rows=None, **config):
    content = RecordDict({CONFIG_KEY: ConfigRecord(config)})
    if rows is not None:
        content[ENTITY_ROWS_KEY] = ArrayRecord({"rows": Array(rows)})
    return Message(content=content, dst_node_id=5, message_type=message_type)


def _train(context, rows, server_round, best_round=0, federation="F"):
    from client import client_app

    reply = client_app.train(
        _to_party(
            "train", rows, **{"server-round": server_round, "best-round": best_round, "federation-id": federation}
        ),
        context,
    )
    return reply.content.array_records[ENTITY_ROWS_KEY]["rows"].numpy()


def _restore(context, resume_round, best_round=0, strict=True, federation="F"):
    from client import client_app

    reply = client_app.restore(
        _to_party(
            "query.restore",
            **{"resume-round": resume_round, "best-round": best_round, "federation-id": federation, "strict": strict},
        ),
        context,
    )
    return int(reply.content.metric_records[METRICS_KEY]["restored-round"])


def test_a_party_restored_from_its_checkpoint_trains_exactly_like_one_that_never_stopped(nations_folder, tmp_path):
    from client.private_checkpoint import ClientCheckpointError
    from kg_datasets import load_client_folder

    n = load_client_folder(nations_folder / "0", client_id=0).num_entities
    rows = [np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)]
    steady = _party(nations_folder, tmp_path / "steady")
    for server_round in (1, 2, 3):
        rows.append(_train(steady, rows[-1], server_round, best_round=1 if server_round == 3 else 0))
    folder = tmp_path / "steady" / "0" / "checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == ["round-000001.npz", "round-000002.npz", "round-000003.npz"]

    # a party that stopped after round 2 (its context.state is gone) and restores round 2
    crashed = _party(nations_folder, tmp_path / "crashed")
    _train(crashed, rows[0], 1)
    _train(crashed, rows[1], 2)
    restarted = _party(nations_folder, tmp_path / "crashed")
    assert _restore(restarted, resume_round=2, best_round=1) == 2
    assert "private-round-1" in restarted.state.array_records, "the best round's state for the final test"
    np.testing.assert_array_equal(_train(restarted, rows[2], 3), rows[3])

    # strict (resume): a missing checkpoint is an error naming the folder; a rejoin starts afresh
    with pytest.raises(ClientCheckpointError, match=r"round <= 0 .* in .*checkpoint"):
        _restore(_party(nations_folder, tmp_path / "crashed"), resume_round=0)
    assert (
        _restore(_party(nations_folder, tmp_path / "crashed"), resume_round=2, strict=False, federation="other") == -1
    )

    # a truncated checkpoint is reported by name
    path = tmp_path / "crashed" / "0" / "checkpoint" / "round-000002.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ClientCheckpointError, match="round-000002.npz"):
        _restore(_party(nations_folder, tmp_path / "crashed"), resume_round=2)


def test_validation_with_track_test_adds_prefixed_test_metrics(nations_folder, tmp_path):
    from client import client_app
    from kg_datasets import load_client_folder

    graph = load_client_folder(nations_folder / "0", client_id=0)
    context = _party(nations_folder, tmp_path)
    context.run_config["track-test"] = True
    rows = np.random.default_rng(2).normal(size=(graph.num_entities, 4)).astype(np.float32)
    reply = client_app.validate(_to_party("evaluate", rows, **{"server-round": 1, "best-round": 0}), context)
    metrics = reply.content.metric_records[METRICS_KEY]
    assert metrics["num_triples"] == graph.valid.num_triples
    assert metrics["test-num_triples"] == graph.test.num_triples and 0.0 < metrics["test-mrr"] <= 1.0


def test_failure_settings_are_checked():
    from client.kge.settings import FederationSettings, SettingsError

    settings = FederationSettings.from_run_config({"min-clients-timeout": 30, "resume": True, "run-dir": "/x"})
    assert settings.min_clients_timeout == 30.0 and settings.resume is True
    with pytest.raises(SettingsError, match="min-clients-timeout"):
        FederationSettings.from_run_config({"min-clients-timeout": 0})
    with pytest.raises(SettingsError, match="resume = true needs run-dir"):
        FederationSettings.from_run_config({"resume": True})
