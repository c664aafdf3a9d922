"""Secure aggregation (``secure-aggregation = true``): FedE's per-row mean through Flower's own SecAgg+
workflow and mod, against the plain mean of the same uploads; dropouts below and above the threshold,
at every stage; the guards; the bytes; the SimSkip phase's encoder weights through the same workflow.

The parties are the real ClientApp (``client.app.app``, so its mods run) on Nations split in three,
reached through :class:`SecAggGrid`, which deep-copies each message's content as the wire would (the
workflow's setup stage shares one RecordDict between all nodes' messages, and the mod pops from it).
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from client import secure_upload
from client.app import app
from client.kge.aggregation import aggregate_rows
from client.kge.models import initial_entity_table
from client.kge.refinement import load_run_configs
from client.kge.settings import FederationSettings, SettingsError
from client.protocol import CONFIG_KEY, ENTITY_ROWS_KEY, ROWS_ARRAY
from server.records import FederationError, LoopState
from server.secure_aggregation import (
    QUANTIZATION_RANGE,
    HolderCountMismatch,
    SecureAggregation,
    SecureAggregationHalted,
    check_holder_counts,
    per_row_mean,
    quantization_step,
    upload_bytes,
)
from server.strategy import FedEStrategy

pytestmark = pytest.mark.usefixtures("task_identity")

KGE = {
    "embedding-dim": 16,
    "local-epochs": 1,
    "num-negs-per-pos": 16,
    "batch-size": 256,
    "eval-batch-size": 256,
    "learning-rate": 0.02,
    "eval-every": 1,
    "simskip-rounds": 0,
}
STAGES = Stage.all()


class SecAggGrid:
    """An in-process grid to the real ClientApp, one ``Context`` per node.

    :param contexts: node id -> its Context.
    :param drop: node id -> the SecAgg+ stage from which on it stops answering (a party gone mid-round).
    """

    def __init__(self, contexts: dict[int, Context], drop: dict[int, str] | None = None) -> None:
        self.contexts, self.drop = contexts, dict(drop or {})
        self.ids = itertools.count(1)
        #: (stage or message type, node, reply) of every reply
        self.log: list[tuple[str, int, Message]] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs[Key.STAGE]) if configs is not None else msg.metadata.message_type
            if node in self.drop and stage in STAGES and STAGES.index(stage) >= STAGES.index(self.drop[node]):
                continue
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"  # the SuperLink's push sets it
            delivered = Message(
                copy.deepcopy(msg.content),
                dst_node_id=node,
                message_type=msg.metadata.message_type,
                group_id=msg.metadata.group_id,
            )
            delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
            TaskIdentity.node_id = node
            try:
                reply = app(delivered, self.contexts[node])
            except Exception as err:  # noqa: BLE001 - what the SuperNode runtime does: an error reply
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=delivered)
            self.log.append((stage, node, reply))
            replies.append(reply)
        return replies


@pytest.fixture(scope="module")
def nations_root(tmp_path_factory):
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("nations") / "data"
    load_federated("Nations", num_clients=3, seed=0).write(out)
    return out


def _contexts(root, tmp_path, **extra) -> dict[int, Context]:
    run_config = {
        **KGE,
        "client-data-root": str(root),
        "client-output-root": str(tmp_path / "clients"),
        "secure-aggregation": True,
        **extra,
    }
    return {
        10 + k: Context(
            run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(), run_config=run_config
        )
        for k in range(3)
    }


@pytest.fixture
def uploads(monkeypatch):
    """node id -> the rows each party released at the masked-vector stage (recorded on the party)."""
    recorded: dict[int, np.ndarray] = {}
    reply = secure_upload.secure_train_reply

    def recording(msg, request, rows, metrics):
        recorded[msg.metadata.dst_node_id] = np.array(rows, copy=True)
        return reply(msg, request, rows, metrics)

    monkeypatch.setattr(secure_upload, "secure_train_reply", recording)
    return recorded


def _secure_round(root, tmp_path, drop=None, secagg=None):
    """Handshake and one secure round from the seed-0 initial table: ``(strategy, grid, table before, outcome)``."""
    contexts = _contexts(root, tmp_path)
    grid = SecAggGrid(contexts, drop)
    strategy = FedEStrategy(min_clients=3, eval_every=1, patience=5, secure_aggregation=secagg or SecureAggregation())
    vocabulary = strategy.handshake(grid)
    _, kge_config, _ = load_run_configs(contexts[10].run_config)
    before = initial_entity_table(kge_config, len(vocabulary), seed=0)
    strategy.state.set_table(before.copy())
    strategy.state.loop = LoopState()
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord({"local-epochs": 1}), grid))
    try:
        outcome = strategy.secure_round(grid, 1, messages, timeout=None)
    except SecureAggregationHalted:
        return strategy, grid, before, None
    strategy.aggregate_secure(1, outcome)
    return strategy, grid, before, outcome


def _plain_mean(strategy, before, uploads, nodes):
    updates = [(strategy.clients[n].global_ids, uploads[n].astype(np.float32)) for n in sorted(nodes)]
    counts = np.zeros(before.shape[0], dtype=np.int64)
    for ids, _ in updates:
        counts[ids] += 1
    return aggregate_rows(before, updates, "mean"), counts


# ----------------------------------------------------------------------------- the mean
def test_the_secure_mean_is_the_plain_mean_and_no_row_leaves_a_party_in_the_clear(
    nations_root, tmp_path, uploads
) -> None:
    strategy, grid, before, outcome = _secure_round(nations_root, tmp_path)
    assert outcome is not None and sorted(outcome.metrics) == [10, 11, 12] and not outcome.left_out
    plain, counts = _plain_mean(strategy, before, uploads, [10, 11, 12])
    step = quantization_step(8.0)
    assert step == 2 * 8.0 / 2**22
    assert float(np.abs(strategy.state.table - plain).max()) <= step
    assert float(np.abs(strategy.state.table - before).max()) > 100 * step  # the round did move the rows
    np.testing.assert_array_equal(outcome.counts, counts)
    unheld = counts == 0
    np.testing.assert_array_equal(strategy.state.table[unheld], before[unheld])
    # the masked-vector replies: every ArrayRecord empty, the masked integers unlike the quantized rows
    stage2 = [(node, reply) for stage, node, reply in grid.log if stage == Stage.COLLECT_MASKED_VECTORS]
    assert sorted(node for node, _ in stage2) == [10, 11, 12]
    for node, reply in stage2:
        assert reply.content.array_records and all(len(r) == 0 for r in reply.content.array_records.values())
        masked = bytes_to_ndarray(reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS][1])
        scattered = np.zeros(before.shape)
        scattered[strategy.clients[node].global_ids] = uploads[node]
        quantized = quantize([scattered], 8.0, QUANTIZATION_RANGE)[0]
        assert masked.shape == quantized.shape and np.mean(masked == quantized) < 0.01
        metrics = outcome.metrics[node]
        # the clipped count goes masked (its digits in the masked vector), never as a clear metric
        assert secure_upload.CLIPPED_METRIC not in metrics and metrics["num-entities"] == len(uploads[node])
    assert outcome.clipped == 0


def test_the_upload_has_the_size_of_the_union_table_and_its_mask(nations_root, tmp_path, uploads) -> None:
    _, _, before, outcome = _secure_round(nations_root, tmp_path)
    expected = upload_bytes(*before.shape)
    assert expected == 8 * (before.shape[0] * (before.shape[1] + 1) + 1 + secure_upload.CLIPPED_BITS) + 4 * 128
    assert outcome.upload == dict.fromkeys([10, 11, 12], expected)
    plain = {node: rows.nbytes for node, rows in uploads.items()}  # float16 own rows, as plain FedE sends
    assert all(outcome.upload[n] > plain[n] for n in plain)
    assert all(outcome.reply_bytes[n] > outcome.upload[n] for n in plain)  # + the keys and shares


# ----------------------------------------------------------------------------- dropouts
def test_a_party_gone_at_the_masked_vector_stage_leaves_the_mean_of_the_others(nations_root, tmp_path, uploads) -> None:
    strategy, _, before, outcome = _secure_round(nations_root, tmp_path, drop={12: Stage.COLLECT_MASKED_VECTORS})
    assert sorted(outcome.metrics) == [10, 11] and outcome.left_out == {
        12: "timeout (no reply to the collect_masked_vectors stage)"
    }
    assert sorted(uploads) == [10, 11]
    plain, counts = _plain_mean(strategy, before, uploads, [10, 11])
    assert float(np.abs(strategy.state.table - plain).max()) <= quantization_step(8.0)
    np.testing.assert_array_equal(outcome.counts, counts)


def test_a_party_gone_at_the_unmask_stage_still_counts(nations_root, tmp_path, uploads) -> None:
    strategy, _, before, outcome = _secure_round(nations_root, tmp_path, drop={11: Stage.UNMASK})
    assert sorted(outcome.metrics) == [10, 11, 12] and not outcome.left_out
    plain, counts = _plain_mean(strategy, before, uploads, [10, 11, 12])
    assert float(np.abs(strategy.state.table - plain).max()) <= quantization_step(8.0)
    np.testing.assert_array_equal(outcome.counts, counts)


def test_a_party_left_out_of_a_secure_round_is_recorded_in_the_round_report(nations_root, tmp_path) -> None:
    contexts = _contexts(nations_root, tmp_path)
    strategy = FedEStrategy(min_clients=3, eval_every=1, patience=5, secure_aggregation=SecureAggregation())
    grid = SecAggGrid(contexts, drop={12: Stage.COLLECT_MASKED_VECTORS})
    vocabulary = strategy.handshake(grid)
    _, kge_config, _ = load_run_configs(contexts[10].run_config)
    table = initial_entity_table(kge_config, len(vocabulary), seed=0)
    result = strategy.start(
        grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=1, train_config=ConfigRecord({"local-epochs": 1})
    )
    (report,) = result.rounds
    assert set(report.train) == {"0", "1"} and set(report.valid) == {"0", "1", "2"}
    assert report.failures == [
        "2: secure aggregation: timeout (no reply to the collect_masked_vectors stage within 3600 s)"
    ]


@pytest.mark.parametrize("stage", [Stage.SETUP, Stage.SHARE_KEYS])
def test_a_party_gone_at_set_up_or_key_sharing_leaves_the_mean_of_the_others(
    nations_root, tmp_path, uploads, stage
) -> None:
    """Flower 1.42's workflow alone still counts such a party at the unmask stage and halts
    (:func:`test_flower_1_42_alone_halts_on_a_party_gone_at_key_sharing`); :class:`SurvivorsWorkflow`
    takes it out of the round, and the survivors (2 >= the threshold 2) are aggregated."""
    strategy, grid, before, outcome = _secure_round(nations_root, tmp_path, drop={12: stage})
    assert outcome is not None and sorted(outcome.metrics) == [10, 11]
    assert outcome.left_out == {12: f"timeout (no reply to the {stage} stage)"}
    assert sorted(uploads) == [10, 11]
    plain, counts = _plain_mean(strategy, before, uploads, [10, 11])
    assert float(np.abs(strategy.state.table - plain).max()) <= quantization_step(8.0)
    np.testing.assert_array_equal(outcome.counts, counts)
    # the survivors were never asked for shares of the lost party
    unmask = [reply for stage_, _, reply in grid.log if stage_ == Stage.UNMASK]
    assert len(unmask) == 2 and not any(reply.has_error() for reply in unmask)


def test_flower_1_42_alone_halts_on_a_party_gone_at_key_sharing(nations_root, tmp_path, monkeypatch) -> None:
    """Why :class:`SurvivorsWorkflow` exists: with Flower's own workflow the same dropout halts the round
    (the survivors are asked for shares of the lost party's key, ``KeyError`` in ``secaggplus_mod``)."""
    from flwr.server.workflow import SecAggPlusWorkflow

    from server import secure_aggregation

    monkeypatch.setattr(secure_aggregation, "SurvivorsWorkflow", SecAggPlusWorkflow)
    strategy, grid, before, outcome = _secure_round(nations_root, tmp_path, drop={12: Stage.SHARE_KEYS})
    assert outcome is None
    np.testing.assert_array_equal(strategy.state.table, before)
    unmask = [reply for stage, _, reply in grid.log if stage == Stage.UNMASK]
    assert unmask and all("KeyError" in reply.error.reason for reply in unmask)


def test_two_parties_gone_at_key_sharing_halt_the_round(nations_root, tmp_path) -> None:
    """Pruning does not lower the threshold: one survivor of three is below 2, the round halts."""
    strategy, _, before, outcome = _secure_round(
        nations_root, tmp_path, drop={11: Stage.SHARE_KEYS, 12: Stage.SHARE_KEYS}
    )
    assert outcome is None
    np.testing.assert_array_equal(strategy.state.table, before)


def test_two_parties_gone_halt_the_round_and_leave_the_table_untouched(nations_root, tmp_path) -> None:
    drop = {11: Stage.COLLECT_MASKED_VECTORS, 12: Stage.COLLECT_MASKED_VECTORS}
    contexts = _contexts(nations_root, tmp_path)
    grid = SecAggGrid(contexts, drop)
    strategy = FedEStrategy(min_clients=3, eval_every=1, patience=5, secure_aggregation=SecureAggregation())
    vocabulary = strategy.handshake(grid)
    _, kge_config, _ = load_run_configs(contexts[10].run_config)
    before = initial_entity_table(kge_config, len(vocabulary), seed=0)
    with pytest.raises(SecureAggregationHalted, match=r"round 1: secure aggregation halted.*of 3 sampled") as err:
        strategy.start(
            grid,
            ArrayRecord({"entity-table": Array(before)}),
            num_rounds=2,
            train_config=ConfigRecord({"local-epochs": 1}),
        )
    assert isinstance(err.value, FederationError)
    assert "'collect_masked_vectors': 1" in str(err.value)
    np.testing.assert_array_equal(strategy.state.table, before)


def test_a_masked_vector_of_the_wrong_shape_is_refused_as_a_dropout(nations_root, tmp_path, uploads) -> None:
    """The server cannot look inside a masked vector, but it can refuse one of the wrong shape before it
    spoils the others' sum."""
    original = secure_upload.secure_train_request

    def short_table(msg):
        request = original(msg)
        if msg.metadata.dst_node_id != 12:
            return request
        return secure_upload.SecureTrainRequest(
            request.rows, request.global_ids, request.num_union + 1, request.clipping_range, request.config
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(secure_upload, "secure_train_request", short_table)
        strategy, _, before, outcome = _secure_round(nations_root, tmp_path)
    assert sorted(outcome.metrics) == [10, 11] and "masked vector of shapes" in outcome.left_out[12]
    plain, _ = _plain_mean(strategy, before, uploads, [10, 11])
    assert float(np.abs(strategy.state.table - plain).max()) <= quantization_step(8.0)


# ----------------------------------------------------------------------------- partial holders
@pytest.fixture(scope="module")
def umls_root(tmp_path_factory):
    """UMLS split by relation into 3 parties: unlike Nations' split, most entities have 1 or 2 holders."""
    from kg_datasets import load_federated

    out = tmp_path_factory.mktemp("umls") / "data"
    load_federated("UMLS", num_clients=3, partition="relation", seed=0).write(out)
    return out


@pytest.mark.parametrize("drop", [None, {10: Stage.COLLECT_MASKED_VECTORS}])
def test_the_per_row_mean_over_partial_holders_is_the_plain_mean(umls_root, tmp_path, uploads, drop) -> None:
    """The per-row division by the mean mask is exercised: on UMLS split by relation (seed 0) 29 of the 135
    entities have 2 holders of 3, the others 3 (Nations: every party holds every entity, so the division was
    never tested); with party 10 gone, 29 rows have 1 holder of 2. Tolerance: one quantization step
    2c/R = 3.8e-6 (c = 8); measured max |secure - plain| is printed by -s. A row no survivor holds is in
    :func:`test_the_per_row_mean_of_a_synthetic_round` (no UMLS party holds an entity alone)."""
    strategy, _, before, outcome = _secure_round(umls_root, tmp_path, drop=drop)
    nodes = sorted(outcome.metrics)
    assert nodes == ([11, 12] if drop else [10, 11, 12])
    plain, counts = _plain_mean(strategy, before, uploads, nodes)
    # partial holders: rows with fewer holders than parties (29 of 135 rows have 2 of 3, seed 0; with
    # party 10 gone, 29 rows have 1 of 2), so the mean mask is not the same for every row
    assert len(set(counts.tolist())) >= 2 and counts.min() < len(nodes)
    np.testing.assert_array_equal(outcome.counts, counts)
    error = float(np.abs(strategy.state.table - plain).max())
    print(f"UMLS relation split, aggregated {nodes}: max |secure - plain| = {error:.3g}")
    assert error <= quantization_step(8.0)


def test_the_per_row_mean_of_a_synthetic_round() -> None:
    """Three parties, four rows: row 0 held by one party, row 1 by two, row 2 by three, row 3 by none."""
    table = np.full((4, 2), 7.0, dtype=np.float32)
    holders = [np.array([0, 1, 2]), np.array([1, 2]), np.array([2])]
    uploads = [
        np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        np.array([[5.0, 8.0], [1.0, 0.0]]),
        np.array([[0.0, 3.0]]),
    ]
    scattered = np.zeros((3, 4, 2))
    masks = np.zeros((3, 4, 1))
    for k, (ids, rows) in enumerate(zip(holders, uploads, strict=True)):
        scattered[k, ids], masks[k, ids] = rows, 1.0
    new, counts = per_row_mean(table, scattered.mean(axis=0), masks.mean(axis=0), 3)
    assert counts.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(new, [[1.0, 2.0], [4.0, 6.0], [2.0, 3.0], [7.0, 7.0]], rtol=1e-6)
    check_holder_counts(1, counts, holders)  # agrees with the handshake
    with pytest.raises(HolderCountMismatch, match=r"round 1: .* in 1 of 4 rows \(row 1: 2 summed, 1 expected\)"):
        check_holder_counts(1, counts, [holders[0], holders[2], holders[2]])


def test_a_clipping_range_below_1_corrupts_the_counts_and_the_round_stops(nations_root, tmp_path) -> None:
    """SecAgg+ clips the 0/1 mask to +-c: at c = 0.5 (refused by the settings; forced here) the summed masks
    halve. The cross-check against the handshake's holders stops the round; the table is untouched."""
    with pytest.raises(HolderCountMismatch, match="holder counts differ from the handshake's"):
        _secure_round(nations_root, tmp_path, secagg=SecureAggregation(clipping_range=0.5))


def test_the_clipped_count_is_summed_under_the_masks_and_reported(nations_root, tmp_path, caplog) -> None:
    """At c = 1, with the released rows scaled so that some exceed it: the server learns only the round's
    total (exact: the digits are 0/1), logs a warning, and the round report carries it."""
    import logging

    recorded: dict[int, int] = {}
    reply = secure_upload.secure_train_reply

    def counting(msg, request, rows, metrics):
        rows = rows * 4.0  # Nations' trained rows stay within +-1: push some beyond c = 1
        recorded[msg.metadata.dst_node_id] = int((np.abs(rows) > request.clipping_range).sum())
        return reply(msg, request, rows, metrics)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(secure_upload, "secure_train_reply", counting)
        strategy, _, _, outcome = _secure_round(nations_root, tmp_path, secagg=SecureAggregation(clipping_range=1.0))
    assert sum(recorded.values()) > 0 and outcome.clipped == sum(recorded.values())
    assert f"secure aggregation clipped {outcome.clipped} uploaded values" in caplog.text
    assert strategy.members.report is None or strategy.members.report.secagg_clipped == outcome.clipped


def test_the_runs_clipped_total_goes_to_final_metrics_and_the_summary(tmp_path) -> None:
    import json

    from server.records import RoundReport, secagg_clipped_total
    from server.report import console_summary

    assert secagg_clipped_total([RoundReport(1), {"round": 2, "train": {}}]) == 0  # plain rounds: no key, 0
    assert secagg_clipped_total([RoundReport(1, secagg_clipped=3), {"round": 2, "secagg_clipped": 4}]) == 7
    (tmp_path / "final_metrics.json").write_text(json.dumps({"secagg_clipped": 7}))
    assert "WARNING: secure aggregation clipped 7 uploaded values" in console_summary(tmp_path)


def test_a_party_node_config_flag_fails_closed() -> None:
    """``--node-config "secure-aggregation=1"`` reaches the party as the int 1: refused, never read as false."""

    def context(value):
        return Context(
            run_id=1, node_id=10, node_config={"secure-aggregation": value}, state=RecordDict(), run_config={}
        )

    assert secure_upload.party_demands_secure_aggregation(context(True))
    assert secure_upload.party_demands_secure_aggregation(context("True"))
    assert not secure_upload.party_demands_secure_aggregation(context(False))
    assert not secure_upload.party_demands_secure_aggregation(context("false"))
    for bad in (1, 0, "1", "yes", 1.0):
        with pytest.raises(secure_upload.SecureUploadError, match="expected true or false"):
            secure_upload.party_demands_secure_aggregation(context(bad))


def test_local_dp_noise_beyond_a_quarter_of_the_clipping_range_is_refused() -> None:
    dp = {"secure_aggregation": True, "dp": "local", "dp_noise_multiplier": 4.0}
    FederationSettings(**dp, dp_clip=0.5)  # z C = 2 = c / 4
    with pytest.raises(SettingsError, match=r"noise std z \* dp-clip = 4 \* 1 = 4 exceeds"):
        FederationSettings(**dp, dp_clip=1.0)
    FederationSettings(**dp, dp_clip=1.0, secagg_clipping_range=16.0)
    FederationSettings(**{**dp, "secure_aggregation": False}, dp_clip=1.0)  # no SecAgg+: no range to fit


# ----------------------------------------------------------------------------- guards
@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"aggregation": "median"}, "aggregation = mean"),
        ({"aggregation": "trimmed-mean"}, "aggregation = mean"),
        ({"setting": "isolation"}, "setting = fede"),
        ({"setting": "collection"}, "setting = fede"),
        ({"min_clients": 1}, "min-clients >= 2"),
    ],
)
def test_settings_secure_aggregation_cannot_serve_are_refused(values, match) -> None:
    FederationSettings(**{**values, "secure_aggregation": False})  # fine without it
    with pytest.raises(SettingsError, match=match):
        FederationSettings(secure_aggregation=True, **values)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"secagg_clipping_range": 3.0}, "power of 2"),
        # SecAgg+ clips the 0/1 holder mask to +-c too: below 1 the counts and the means come out wrong
        ({"secagg_clipping_range": 0.5}, "power of 2 >= 1"),
        ({"secagg_clipping_range": 0.25}, "power of 2 >= 1"),
        ({"secagg_clipping_range": 0.0}, "power of 2"),
        ({"secagg_clipping_range": float("inf")}, "power of 2"),
        ({"secagg_reconstruction_threshold": 1}, ">= 2"),
        ({"secagg_num_shares": 2}, "secagg-num-shares"),
        ({"secagg_num_shares": 3, "secagg_reconstruction_threshold": 3}, "secagg-num-shares"),
    ],
)
def test_secagg_keys_are_checked(values, match) -> None:
    with pytest.raises(SettingsError, match=match):
        FederationSettings(secure_aggregation=True, **values)


def test_the_run_config_keys_and_the_federated_simskip_phase() -> None:
    settings, _, _ = load_run_configs(
        {"secure-aggregation": True, "secagg-clipping-range": 1.0, "secagg-num-shares": 5, "simskip-rounds": 0}
    )
    assert (settings.secure_aggregation, settings.secagg_clipping_range, settings.secagg_num_shares) == (True, 1.0, 5)
    with pytest.raises(SettingsError, match="power of 2 >= 1"):
        load_run_configs({"secure-aggregation": True, "secagg-clipping-range": 0.5, "simskip-rounds": 0})
    # a federated SimSkip phase (simskip-rounds 10) goes through SecAgg+ too; the local-only one uploads nothing
    settings, _, refinement = load_run_configs({"secure-aggregation": True})
    assert settings.secure_aggregation and refinement.enabled and refinement.federate
    load_run_configs({"secure-aggregation": True, "simskip-federate": False})


def test_the_strategy_and_the_round_refuse_what_secagg_cannot_do() -> None:
    with pytest.raises(ValueError, match="aggregation 'mean'"):
        FedEStrategy(secure_aggregation=SecureAggregation(), aggregation="median")
    with pytest.raises(ValueError, match="setting 'fede'"):
        FedEStrategy(secure_aggregation=SecureAggregation(), setting="isolation")
    with pytest.raises(FederationError, match="round 4: secure aggregation needs at least 2 sampled parties"):
        SecureAggregation().check_parties(4, 1)
    with pytest.raises(FederationError, match="at least 3 sampled parties"):
        SecureAggregation(num_shares=5, reconstruction_threshold=3).check_parties(1, 2)


def _train_message(node: int, content: RecordDict) -> Message:
    msg = Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _demanding_party(nations_root) -> Context:
    """Party 0's context on Nations, its node config demanding secure aggregation."""
    return Context(
        run_id=1,
        node_id=10,
        node_config={"partition-id": 0, "secure-aggregation": "true"},
        state=RecordDict(),
        run_config={**KGE, "client-data-root": str(nations_root)},
    )


def test_a_party_that_demands_secure_aggregation_refuses_a_plain_train_message(nations_root, tmp_path) -> None:
    context = _demanding_party(nations_root)
    content = RecordDict(
        {
            ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(np.zeros((3, 16), np.float16))}),
            CONFIG_KEY: ConfigRecord({"server-round": 1}),
        }
    )
    with pytest.raises(secure_upload.SecureUploadError, match="only under secure aggregation"):
        app(_train_message(10, content), context)
    assert not secure_upload.party_demands_secure_aggregation(
        Context(run_id=1, node_id=10, node_config={}, state=RecordDict(), run_config={"secure-aggregation": False})
    )


def test_values_beyond_the_clipping_range_are_counted_and_non_finite_rows_refused() -> None:
    request = secure_upload.SecureTrainRequest(
        rows=np.zeros((2, 3), np.float16),
        global_ids=np.array([4, 1]),
        num_union=5,
        clipping_range=0.5,
        config=ConfigRecord({"server-round": 1}),
    )
    msg = _train_message(10, RecordDict())
    rows = np.array([[0.1, 0.7, -0.2], [-0.9, 0.5, 0.0]], dtype=np.float32)
    reply = secure_upload.secure_train_reply(msg, request, rows, {"train-loss": 1.0})
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 1 and dict(fitres.metrics) == {"train-loss": 1.0}  # nothing added in the clear
    table, mask, bits = parameters_to_ndarrays(fitres.parameters)
    assert bits.shape == (secure_upload.CLIPPED_BITS,) and bits[:3].tolist() == [0, 1, 0]  # 2: 0.7 and -0.9
    np.testing.assert_array_equal(table[[4, 1]], rows)
    np.testing.assert_array_equal(table[[0, 2, 3]], 0.0)
    assert mask[:, 0].tolist() == [0, 1, 0, 0, 1]
    rows[1, 2] = np.nan
    with pytest.raises(secure_upload.SecureUploadError, match="1 uploaded values are NaN or Inf"):
        secure_upload.secure_train_reply(msg, request, rows, {})


# ----------------------------------------------------------------------------- whole runs
#: Valid MRR tolerance of a secure run against the plain run with the same seeds. Each coordinate of the
#: secure table is within 2c/R = 3.8e-6 of the plain one; the parties download it in float16 (a rounding step
#: of 1.2e-4 or more for |x| >= 0.25), so the two downloads differ only where a value sits within 3.8e-6 of a
#: float16 rounding boundary, and a rank moves only where two candidates' scores are that close. The bound is
#: the design's (docs/design/secure-aggregation-and-dp.md: at most 0.005, the float16-vs-float32 difference);
#: on Nations the two runs agree to every digit.
MRR_TOLERANCE = 0.005


def _start(root, tmp_path, secure: bool, rounds: int = 2):
    contexts = _contexts(root, tmp_path, **{"secure-aggregation": secure})
    grid = SecAggGrid(contexts)
    strategy = FedEStrategy(
        min_clients=3, eval_every=1, patience=5, secure_aggregation=SecureAggregation() if secure else None
    )
    vocabulary = strategy.handshake(grid)
    _, kge_config, _ = load_run_configs(contexts[10].run_config)
    table = initial_entity_table(kge_config, len(vocabulary), seed=0)
    result = strategy.start(
        grid,
        ArrayRecord({"entity-table": Array(table)}),
        num_rounds=rounds,
        train_config=ConfigRecord({"local-epochs": 1}),
    )
    return strategy, result


def test_a_secure_run_matches_the_plain_run(nations_root, tmp_path) -> None:
    plain_strategy, plain = _start(nations_root, tmp_path / "plain", secure=False)
    secure_strategy, secure = _start(nations_root, tmp_path / "secure", secure=True)
    assert [r.round for r in secure.rounds] == [1, 2]
    for p, s in zip(plain.rounds, secure.rounds, strict=True):
        assert not s.failures and set(s.train) == {"0", "1", "2"}
        assert abs(s.valid_overall["mrr"] - p.valid_overall["mrr"]) <= MRR_TOLERANCE
        assert s.bytes_sent == p.bytes_sent + 3 * 14 * 8  # the same rows down, plus each party's global ids
        assert s.bytes_received > 3 * upload_bytes(14, 16) > p.bytes_received  # masked vectors, keys and shares
        assert all(secure_upload.CLIPPED_METRIC not in m for m in s.train.values())
        assert s.secagg_clipped == 0 and s.as_dict()["secagg_clipped"] == 0
        assert p.secagg_clipped is None and "secagg_clipped" not in p.as_dict()  # a plain row is unchanged
        # per party: the masked vector is the formula's, and all replies add up to the round's bytes
        assert set(s.secagg_bytes) == {"0", "1", "2"} and "secagg_bytes" not in p.as_dict()
        assert all(b["masked_vector"] == upload_bytes(14, 16) < b["all_replies"] for b in s.secagg_bytes.values())
        assert sum(b["all_replies"] for b in s.secagg_bytes.values()) == s.bytes_received
        assert s.as_dict()["secagg_bytes"] == s.secagg_bytes
    assert abs(secure.test_overall["mrr"] - plain.test_overall["mrr"]) <= MRR_TOLERANCE
    # two rounds apart: within a few quantization steps (round 2 starts from tables 3.8e-6 apart)
    assert float(np.abs(secure_strategy.state.table - plain_strategy.state.table).max()) < 1e-3


@pytest.mark.slow  # ~45-80 s on 2 cores: Ray and SuperLink start-up dominate
@pytest.mark.timeout(300)
def test_simskip_sim_with_secure_aggregation_matches_the_plain_server_app(tmp_path) -> None:
    """The deployment path: simskip-sim (Ray, the real ServerApp, messages serialized) under SecAgg+, against
    the same ServerApp function (``run_federation``) run plain in-process on the data folder the simulation
    wrote, with the same run config."""
    import json

    from server.server_app import run_federation
    from server.simulation import main as sim_main

    run_dir = tmp_path / "secure"
    args = ["--dataset", "Nations", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir)]
    for item in ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "eval-every=1", "batch-size=256"]:
        args += ["--set", item]
    args += ["--set", "simskip-rounds=0", "--set", "secure-aggregation=true"]
    assert sim_main(args) == 0
    secure_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    run_config = json.loads((run_dir / "config.json").read_text())["run_config"]
    plain_dir = tmp_path / "plain"
    run_config.update(
        {"secure-aggregation": False, "run-dir": str(plain_dir), "client-output-root": str(plain_dir / "clients")}
    )
    contexts = {
        10 + k: Context(
            run_id=1, node_id=10 + k, node_config={"partition-id": k}, state=RecordDict(), run_config=run_config
        )
        for k in range(3)
    }
    run_federation(SecAggGrid(contexts), run_config)
    plain_rows = [json.loads(line) for line in (plain_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in secure_rows] == [r["round"] for r in plain_rows] == [1, 2]
    for s, p in zip(secure_rows, plain_rows, strict=True):
        assert not s.get("failures") and set(s["train"]) == {"0", "1", "2"}
        assert abs(s["valid_overall"]["mrr"] - p["valid_overall"]["mrr"]) <= MRR_TOLERANCE
        assert s["bytes_received"] > 3 * upload_bytes(14, 8)
    secure_table = np.load(run_dir / "entity_embeddings.npy")
    plain_table = np.load(plain_dir / "entity_embeddings.npy")
    assert float(np.abs(secure_table - plain_table).max()) < 1e-3


# ----------------------------------------------------------------------------- the SimSkip phase
SIMSKIP = {"simskip-rounds": 2, "simskip-local-epochs": 1, "downstream-protocols": "as-trained"}


@pytest.fixture
def weight_uploads(monkeypatch):
    """(SimSkip round, node id) -> the weights each party released at the masked-vector stage."""
    recorded: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = {}
    reply = secure_upload.secure_weights_reply

    def recording(msg, request, weights, metrics):
        round_number = int(request.config["server-round"])
        recorded[round_number, msg.metadata.dst_node_id] = [(n, np.array(a, copy=True)) for n, a in weights]
        return reply(msg, request, weights, metrics)

    monkeypatch.setattr(secure_upload, "secure_weights_reply", recording)
    return recorded


def _simskip_phase(root, tmp_path, secure: bool, drop=None):
    """One plain FedE round, then the federated SimSkip phase (2 rounds) and the downstream evaluation,
    under SecAgg+ when ``secure``: ``(SimSkip strategy, downstream records, global weights after each
    round, grid)``."""
    from server.simskip_strategy import SimSkipStrategy

    contexts = _contexts(root, tmp_path, **SIMSKIP, **{"secure-aggregation": False})
    grid = SecAggGrid(contexts)
    strategy = FedEStrategy(min_clients=3, eval_every=1, patience=5)
    vocabulary = strategy.handshake(grid)
    _, kge_config, refinement = load_run_configs(contexts[10].run_config)
    table = initial_entity_table(kge_config, len(vocabulary), seed=0)
    result = strategy.start(
        grid, ArrayRecord({"entity-table": Array(table)}), num_rounds=1, train_config=ConfigRecord({"local-epochs": 1})
    )
    strategy.secure_aggregation = SecureAggregation() if secure else None
    random.seed(0)  # SecAgg+'s neighbour shuffle and its stochastic rounding (global RNGs): a reproducible test
    np.random.seed(0)
    grid.drop = dict(drop or {})
    simskip = SimSkipStrategy(strategy, refinement, eval_protocol=kge_config.eval_protocol)
    snapshots = []
    records = simskip.run(
        grid,
        best_round=result.best_round,
        on_round_end=lambda _: snapshots.append({v: list(w) for v, w in simskip.global_weights.items()}),
    )
    return simskip, records, snapshots, grid


def test_the_simskip_phase_under_secagg_averages_the_weights_as_the_plain_phase(
    nations_root, tmp_path, weight_uploads
) -> None:
    """Each secure round's global weights are within the quantization bound of the row-weighted mean of
    the uploads (the plain phase's rule: 3.5e-6 and 3.6e-6 measured, bound 4.4e-6). Against the plain
    phase (round 2 starts from weights a quantization step apart, and training carries the gap on): the
    final weights within 1e-3 (1.6e-4 measured), the refined rows within 1e-4 (5.4e-6), the downstream
    valid and test MRR within 0.005 (equal on Nations)."""
    from client.kge.refinement import pack_variants
    from client.kge.weights import fedavg_named
    from server.secure_aggregation import power_of_two_weight, weighted_quantization_bound

    plain, plain_records, _, _ = _simskip_phase(nations_root, tmp_path / "plain", secure=False)
    assert not weight_uploads  # the plain phase never went through SecAgg+
    secure, secure_records, snapshots, grid = _simskip_phase(nations_root, tmp_path / "secure", secure=True)
    counts = {node: int(secure.members.clients[node].global_ids.shape[0]) for node in (10, 11, 12)}
    assert power_of_two_weight(max(counts.values())) == 16.0  # Nations' 14 entities (every party holds <= 14)
    bound = weighted_quantization_bound(list(counts.values()), 16.0, 8.0)
    for round_number, snapshot in enumerate(snapshots, start=1):
        assert sorted(node for r, node in weight_uploads if r == round_number) == [10, 11, 12]
        expected = fedavg_named([(weight_uploads[round_number, n], counts[n]) for n in (10, 11, 12)])
        got = pack_variants(snapshot)
        assert [name for name, _ in got] == [name for name, _ in expected]
        gap = max(float(np.abs(g - np.asarray(e, dtype=np.float64)).max()) for (_, g), (_, e) in zip(got, expected))
        assert gap <= bound + 1e-7  # + the float32 cast of the mean
        assert all(h["failures"] == [] for h in secure.history)
    # the four stages of a SimSkip round went to the train.simskip handler; no weight left a party in the clear
    stage2 = [reply for stage, _, reply in grid.log if stage == Stage.COLLECT_MASKED_VECTORS]
    assert len(stage2) == 3 * 2 and all(r.metadata.message_type == "train.simskip" for r in stage2)
    assert all(len(record) == 0 for r in stage2 for record in r.content.array_records.values())
    # against the plain phase: round 1 starts from the same weights, so the phases stay close
    final = max(
        float(np.abs(a - b).max())
        for (_, a), (_, b) in zip(pack_variants(secure.global_weights), pack_variants(plain.global_weights))
    )
    assert 0 < final < 1e-3
    for client, record in secure_records.items():
        for row in ("unrefined", "refined", "perturbed"):
            assert (
                abs(_as_trained(record, row)["mrr"] - _as_trained(plain_records[client], row)["mrr"]) <= MRR_TOLERANCE
            )
        candidates = [c["valid"] for c in record["protocols"]["as-trained"]["selection"]["candidates"]]
        plain_candidates = [
            c["valid"] for c in plain_records[client]["protocols"]["as-trained"]["selection"]["candidates"]
        ]
        assert np.abs(np.array(candidates) - np.array(plain_candidates)).max() <= MRR_TOLERANCE
        # the raw encoder output the party refined its rows with (alpha 1)
        refined = np.load(tmp_path / "secure" / "clients" / client / "refined" / "refined.npy")
        plain_refined = np.load(tmp_path / "plain" / "clients" / client / "refined" / "refined.npy")
        assert float(np.abs(refined - plain_refined).max()) < 1e-4


def _as_trained(record, row):
    return record["protocols"]["as-trained"]["seeds"]["0"][row]["test"]["standard"]


def test_a_party_gone_in_a_secure_simskip_round_is_left_out_and_recorded(nations_root, tmp_path) -> None:
    secure, _, _, _ = _simskip_phase(nations_root, tmp_path, secure=True, drop={12: Stage.COLLECT_MASKED_VECTORS})
    assert [sorted(h["num_rows"]) for h in secure.history] == [["0", "1"], ["0", "1"]]
    assert secure.history[0]["failures"] == [
        "2: simskip: secure aggregation: timeout (no reply to the collect_masked_vectors stage within 3600 s)"
    ]


def test_a_party_that_demands_secagg_refuses_a_plain_federated_simskip_message(nations_root) -> None:
    from client.protocol import SIMSKIP_TRAIN_TYPE, WEIGHTS_KEY

    context = _demanding_party(nations_root)
    content = RecordDict(
        {
            ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(np.zeros((3, 16), np.float32))}),
            WEIGHTS_KEY: ArrayRecord(),
            CONFIG_KEY: ConfigRecord({"server-round": 1, "federate": True}),
        }
    )
    msg = Message(content, dst_node_id=10, message_type=SIMSKIP_TRAIN_TYPE)
    msg.metadata.__dict__["_message_id"] = "m1"
    with pytest.raises(secure_upload.SecureUploadError, match="SimSkip encoder weights only under secure"):
        app(msg, context)
