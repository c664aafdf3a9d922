"""FedE's per-row mean under Flower's SecAgg+ (``secure-aggregation = true``), one round at a time.

What each party uploads, what the server obtains and what it still learns are in
``docs/how-to/secure-aggregation.md`` (the design and the probes behind it:
``docs/design/secure-aggregation-and-dp.md``); the party's side is :mod:`client.secure_upload`.

**The shape.** SecAgg+ computes a weighted mean of whole arrays; FedE needs each row averaged over
the parties that hold it. So each party uploads two arrays: its rows scattered into the union table
(N x d, zeros elsewhere), its 0/1 holder mask (N x 1) and the binary digits of its count of values beyond
+-c (:func:`client.secure_upload.clipped_bits`), with ``num_examples = 1`` and the workflow's
``max_weight = 1.0`` (every party weighs exactly 1). The workflow returns ``(mean_k x_k m_k, mean_k m_k,
mean_k b_k)`` over the parties that delivered a masked vector; per row, ``table_mean / mask_mean`` is FedE's
mean over those holders (the number of parties cancels) and ``rint(mask_mean * k)`` the holder count, which
must equal the count the server knows from the handshake (the aggregated parties' global ids), else
:class:`HolderCountMismatch`. A row no survivor holds keeps its value. Each coordinate is within the
quantization step ``2c / 2^22`` of the plain mean of the same uploaded rows (c = ``secagg-clipping-range``,
a power of 2 >= 1: SecAgg+ clips every value to +-c, the 0/1 mask included, so at c < 1 the counts and the
means would be wrong; the settings refuse it). The clipped digits' sum is the round's total of clipped
values (:attr:`SecureRound.clipped`): the server logs a warning when it is above 0.

**Driving Flower's workflow unchanged.** ``SecAggPlusWorkflow`` is a legacy-API workflow: it wants a
``LegacyContext``, asks a legacy ``Strategy.configure_fit`` for per-node ``FitIns`` and hands the
mean to ``aggregate_fit``. :class:`OneRound` is that legacy face for one round (the FitIns FedE's
``configure_train`` built, and the result captured), with a fresh ``LegacyContext`` per round.
:class:`PolledGrid` gives the workflow this project's fast poll (:mod:`server.grid_io`, instead of
Flower's 3 s sleep), keeps only replies to the exchange's own messages from the node each went to,
refuses (as a dropout) a masked vector of the wrong shape before the workflow adds it into the sum,
and records who answered each stage and the bytes each party uploaded.

**The download (decided: each party its own rows, as in plain FedE).** The alternative, sending every
party the whole union table, would hide from the server nothing it does not already know: the
handshake gives it every party's entity labels, hence who holds what, the union vocabulary and every
row's holder count. It would hand each party the rows of entities it does not hold (the exact row of
any entity with one holder) and cost more bytes. It becomes worth its cost only together with a
private handshake (a later change). With own rows, the FitIns also names the party's global row ids
and the union size N, which the party needs to scatter its rows.

**The SimSkip phase** (:func:`secure_weighted_mean`, used by :mod:`server.simskip_strategy`): the
encoder + head weights' average is a plain weighted mean of whole arrays, which is what SecAgg+
computes; each party uploads its weights with ``num_examples`` = its row count (the plain phase's
FedAvg weight), and the workflow runs with ``max_weight`` = the smallest power of 2 >= the largest
row count, so the quantized weight ``n_k R / max_weight`` is exact and proportional to ``n_k``. The
row counts are not secret: the server knows them from the handshake (and the reply metrics carry
them in the clear). Each coordinate is within :func:`weighted_quantization_bound` of the plain mean.
The four stages go out as ``train.simskip`` messages (:attr:`PolledGrid.message_type`).

**Dropouts.** A party lost at any stage before the unmask stage is left out: one lost at the
masked-vector stage has its masks removed through its neighbours' shares; one lost at the set-up or
key-sharing stage never took part in anyone's masks, and :class:`SurvivorsWorkflow` takes it out of
the round (Flower 1.42's workflow would still count it at the unmask stage and halt). One lost at the
unmask stage still counts. When fewer than ``secagg-reconstruction-threshold`` parties keep
answering, the workflow halts without a result: :class:`SecureAggregationHalted`, the table untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from client.protocol import CONFIG_KEY, ENTITY_ROWS_KEY, ROWS_ARRAY
from client.secure_upload import CLIPPED_BITS, CLIPPING_RANGE_KEY, NUM_UNION_KEY, WEIGHT_NAMES_KEY
from server import grid_io
from server.records import FederationError

__all__ = [
    "QUANTIZATION_RANGE",
    "HolderCountMismatch",
    "OneRound",
    "PolledGrid",
    "SecureAggregation",
    "SecureAggregationHalted",
    "SecureMean",
    "SecureRound",
    "SurvivorsWorkflow",
    "check_holder_counts",
    "per_row_mean",
    "power_of_two_weight",
    "quantization_step",
    "secure_fede_round",
    "secure_weighted_mean",
    "upload_bytes",
    "weighted_quantization_bound",
    "weights_fitins",
]

#: SecAgg+'s quantization range R (Flower's default, 2^22): values are quantized in steps of 2c / R.
QUANTIZATION_RANGE = 1 << 22


def quantization_step(clipping_range: float) -> float:
    """The step 2c / R: each coordinate of the secure mean is within it of the plain mean."""
    return 2.0 * float(clipping_range) / QUANTIZATION_RANGE


def power_of_two_weight(largest: int) -> float:
    """The workflow's ``max_weight`` for row-count weights: the smallest power of 2 >= ``largest``
    (at least 1), so that each party's quantized weight ``n_k R / max_weight`` is an exact integer."""
    return float(2 ** max(0, math.ceil(math.log2(max(1, int(largest))))))


def weighted_quantization_bound(weights: Sequence[int], max_weight: float, clipping_range: float) -> float:
    """How far a coordinate of SecAgg+'s weighted mean can be from the plain weighted mean of the same
    uploads: each party's scaled values ``(n_k / max_weight) x_k`` are quantized to within one step
    ``2c / R``; the sum of ``K`` such errors is divided by ``sum_k n_k / max_weight``.

    :param weights: the row counts ``n_k`` of the parties aggregated.
    """
    return len(weights) * quantization_step(clipping_range) * float(max_weight) / float(sum(weights))


def upload_bytes(num_union: int, entity_dim: int) -> int:
    """Bytes of one party's masked vector: int64 weight factor, N x d table, N x 1 mask and the clipped
    count's :data:`~client.secure_upload.CLIPPED_BITS` digits as Flower serializes them
    (``ndarray_to_bytes``: each array's .npy header of 128 bytes plus 8 bytes a value)."""
    return 8 * (num_union * (entity_dim + 1) + 1 + CLIPPED_BITS) + 4 * 128


class HolderCountMismatch(FederationError):
    """A secure round's holder counts (the sum of the 0/1 masks) differ from those the server knows from
    the handshake: the aggregate is corrupt (e.g. a clipping range below 1 clipped the masks, or a party
    uploaded a wrong mask); the message names the round and the rows. The table is left untouched."""


class SecureAggregationHalted(FederationError):
    """SecAgg+ could not complete a round: fewer than the reconstruction threshold answered a stage.
    The message names the round and how many parties answered; the table is left untouched."""


@dataclass(frozen=True)
class SecureAggregation:
    """The SecAgg+ settings of a federation (run-config keys ``secagg-*``).

    :param num_shares: SecAgg+'s ``num_shares``; 0: every sampled party.
    :param reconstruction_threshold: SecAgg+'s ``reconstruction_threshold`` (>= 2).
    :param clipping_range: SecAgg+'s ``clipping_range`` c (a power of 2).
    """

    num_shares: int = 0
    reconstruction_threshold: int = 2
    clipping_range: float = 8.0

    def workflow(self, timeout: float | None, max_weight: float = 1.0) -> SurvivorsWorkflow:
        """Flower's workflow (:class:`SurvivorsWorkflow`) for one upload.

        :param timeout: seconds each of the four exchanges waits for replies.
        :param max_weight: SecAgg+'s ``max_weight``: 1.0 for FedE's upload (every party weighs 1);
            :func:`power_of_two_weight` of the row counts for the SimSkip phase's weights.
        """
        return SurvivorsWorkflow(
            num_shares=self.num_shares if self.num_shares else 1.0,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=max_weight,
            clipping_range=self.clipping_range,
            quantization_range=QUANTIZATION_RANGE,
            timeout=timeout,
        )

    def check_parties(self, round_number: int, num_parties: int) -> None:
        """Refuse a round SecAgg+ cannot complete even if everyone answers.

        :raises FederationError: fewer than 2 sampled parties, or fewer than the threshold.
        """
        needed = max(2, self.reconstruction_threshold)
        if num_parties < needed:
            raise FederationError(
                f"round {round_number}: secure aggregation needs at least {needed} sampled parties "
                f"(2, and secagg-reconstruction-threshold = {self.reconstruction_threshold}); {num_parties} sampled"
            )


class SurvivorsWorkflow(SecAggPlusWorkflow):
    """Flower's ``SecAggPlusWorkflow`` that takes a party lost at the set-up or key-sharing stage out
    of the round, as SecAgg+ itself does (Bonawitz et al.: the round goes on with the parties that
    sent their keys, then their shares).

    Flower 1.42 keeps such a party in ``sampled_node_ids`` and in its neighbours' sets: at the unmask
    stage it asks the survivors for shares of its key, which they never received (``KeyError`` in
    ``secaggplus_mod``), and the round halts whatever the threshold. Such a party is in no one's
    masks (a party masks only against the neighbours whose key shares reached it at the masked-vector
    stage), so nothing of it needs removing: after each of the two stages the lost parties are pruned
    from the workflow's state and the threshold is checked again over the survivors. No cryptography
    changes; a party lost at the masked-vector or unmask stage is handled by Flower as before. It reads
    and writes flwr 1.42's ``WorkflowState`` fields (``sampled_node_ids``, ``active_node_ids``,
    ``nid_to_neighbours``; flwr is pinned below 1.43 in ``pyproject.toml``).
    """

    def setup_stage(self, grid: Any, context: LegacyContext, state: WorkflowState) -> bool:
        return self._survivors(state, super().setup_stage(grid, context, state))

    def share_keys_stage(self, grid: Any, context: LegacyContext, state: WorkflowState) -> bool:
        return self._survivors(state, super().share_keys_stage(grid, context, state))

    def _survivors(self, state: WorkflowState, ok: bool) -> bool:
        lost = state.sampled_node_ids - state.active_node_ids
        if not lost:  # nobody lost (or the stage halted before sampling)
            return ok
        state.sampled_node_ids = state.sampled_node_ids - lost
        for node in lost:
            state.nid_to_neighbours.pop(node, None)
        for neighbours in state.nid_to_neighbours.values():
            neighbours -= lost
        return len(state.sampled_node_ids) >= 2 and self._check_threshold(state)


class OneRound(LegacyStrategy):
    """The legacy ``Strategy`` face ``SecAggPlusWorkflow`` needs, for one round: the FitIns already
    built for each node, and the workflow's result captured (:attr:`result`, ``None`` if it halted).

    :param grid: the grid the workflow sends through (only its node ids are used here).
    :param run_id: the run's id (for the proxies; the workflow reads only their node ids).
    :param fitins: node id -> its FitIns.
    """

    def __init__(self, grid: Any, run_id: int, fitins: Mapping[int, FitIns]) -> None:
        super().__init__()
        self.grid, self.run_id, self.fitins = grid, run_id, dict(fitins)
        #: ``(mean arrays, node id -> metrics of the parties aggregated, failures)`` once aggregated
        self.result: tuple[list[np.ndarray], dict[int, dict[str, Any]], list[Any]] | None = None

    def initialize_parameters(self, client_manager: Any) -> None:
        return None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, FitIns]]:
        return [(GridClientProxy(node, self.grid, self.run_id), ins) for node, ins in self.fitins.items()]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict]:
        # the workflow sets every result's parameters to the same mean
        self.result = (
            parameters_to_ndarrays(results[0][1].parameters),
            {proxy.node_id: dict(res.metrics) for proxy, res in results},
            list(failures),
        )
        return None, {}

    def configure_evaluate(self, *args: Any) -> list:
        return []

    def aggregate_evaluate(self, *args: Any) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, *args: Any) -> None:
        return None


@dataclass
class PolledGrid:
    """The grid as the workflow sees it: :func:`server.grid_io.send_and_receive` for its exchanges, and
    a record of them.

    A reply is kept only when it answers one of the exchange's messages and comes from the node that
    message went to. A masked vector whose arrays do not have the expected shapes (``[(1,), (N, d),
    (N, 1)]``, integers) is dropped before the workflow adds it in: that party counts as dropped at
    that stage (:attr:`refused`), and the others' sum stays sound.

    :param grid: the Flower grid.
    :param shapes: the expected shapes of a masked vector.
    :param message_type: the type the four stages' messages go out as: Flower's workflow builds
        ``train`` messages; the SimSkip phase's go to the parties' ``train.simskip`` handler.
    """

    grid: Any
    shapes: list[tuple[int, ...]]
    message_type: str = MessageType.TRAIN
    #: stage -> the nodes that answered it without an error
    answered: dict[str, set[int]] = field(default_factory=dict)
    #: node -> why it was left out (error reply text, or a refused masked vector)
    refused: dict[int, str] = field(default_factory=dict)
    #: node -> bytes of its masked vector
    upload: dict[int, int] = field(default_factory=dict)
    #: node -> bytes of every reply it sent in the four stages (keys, shares, masked vector)
    reply_bytes: dict[int, int] = field(default_factory=dict)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if self.message_type != MessageType.TRAIN:
            for msg in messages:
                msg.metadata.message_type = self.message_type
        stage = _stage_of(messages)
        replies = grid_io.send_and_receive(self.grid, messages, timeout)
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        kept = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if sent and sent.get(reply.metadata.reply_to_message_id) != node:
                continue  # not an answer to this exchange from the node asked (e.g. the SuperLink's)
            if reply.has_error():
                self.refused[node] = f"{stage}: {reply.error.reason}"
                kept.append(reply)
                continue
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS, ConfigRecord())
            self.reply_bytes[node] = self.reply_bytes.get(node, 0) + _config_bytes(configs)
            if stage == Stage.COLLECT_MASKED_VECTORS:
                why = self._check_masked(configs)
                if why:
                    self.refused[node] = f"{stage}: {why}"
                    continue
                self.upload[node] = sum(len(b) for b in configs[Key.MASKED_PARAMETERS])
            self.answered.setdefault(stage, set()).add(node)
            kept.append(reply)
        return kept

    def _check_masked(self, configs: ConfigRecord) -> str:
        if Key.MASKED_PARAMETERS not in configs:
            return "no masked vector"
        try:
            arrays = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
        except Exception as err:  # noqa: BLE001 - any undecodable payload is that party's fault
            return f"masked vector cannot be decoded: {err}"
        shapes = [a.shape for a in arrays]
        if shapes != self.shapes or not all(np.issubdtype(a.dtype, np.integer) for a in arrays):
            return f"masked vector of shapes {shapes}, expected {self.shapes} (integers)"
        return ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def _stage_of(messages: Sequence[Message]) -> str:
    for msg in messages:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.STAGE in configs:
            return str(configs[Key.STAGE])
    return "?"


def _config_bytes(record: ConfigRecord) -> int:
    total = 0
    for value in record.values():
        for item in value if isinstance(value, list) else [value]:
            total += len(item) if isinstance(item, bytes | str) else 8
    return total


@dataclass
class SecureRound:
    """One round's secure aggregation.

    :param table: the new global table (float32, a copy; rows no survivor holds unchanged).
    :param counts: int64 (N,), the holders of each row among the parties aggregated.
    :param clipped: the values beyond +-c over all parties aggregated (summed under the masks).
    :param metrics: node id -> the train metrics of each party aggregated (they travel in the clear).
    :param left_out: node id -> why a sampled party was not aggregated.
    :param upload: node id -> bytes of its masked vector.
    :param reply_bytes: node id -> bytes of all its SecAgg+ replies (keys, shares, masked vector).
    :param download: node id -> bytes of the rows and ids it was sent.
    """

    table: np.ndarray
    counts: np.ndarray
    metrics: dict[int, dict[str, float]]
    left_out: dict[int, str]
    upload: dict[int, int]
    reply_bytes: dict[int, int]
    download: dict[int, int]
    clipped: int = 0


def _fitins(message: Message, global_ids: np.ndarray, num_union: int, clipping_range: float) -> tuple[FitIns, int]:
    """The FitIns of one plain FedE train message: [its rows, their global ids] and its config, plus
    the union size and the clipping range; and its bytes."""
    rows = message.content.array_records[ENTITY_ROWS_KEY][ROWS_ARRAY].numpy()
    ids = np.ascontiguousarray(global_ids, dtype=np.int64)
    config = {
        **dict(message.content.config_records[CONFIG_KEY]),
        NUM_UNION_KEY: int(num_union),
        CLIPPING_RANGE_KEY: float(clipping_range),
    }
    return FitIns(ndarrays_to_parameters([rows, ids]), config), rows.nbytes + ids.nbytes


def weights_fitins(message: Message, weights_key: str, names: Sequence[str], clipping_range: float) -> FitIns:
    """The FitIns of one plain SimSkip train message: [its rows, the weights of ``weights_key`` in the
    order ``names``] and its config, plus the names (a JSON list) and the clipping range
    (:func:`client.secure_upload.secure_weights_request` reads it)."""
    rows = message.content.array_records[ENTITY_ROWS_KEY][ROWS_ARRAY].numpy()
    record = message.content.array_records[weights_key]
    config = {
        **dict(message.content.config_records[CONFIG_KEY]),
        WEIGHT_NAMES_KEY: json.dumps(list(names)),
        CLIPPING_RANGE_KEY: float(clipping_range),
    }
    return FitIns(ndarrays_to_parameters([rows, *[record[name].numpy() for name in names]]), config)


def _missed(polled: PolledGrid, node: int, timeout: float | None) -> str:
    """Why a party without a masked vector and without an error reply was left out: the first stage it
    did not answer."""
    for stage in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS):
        if node not in polled.answered.get(stage, set()):
            return f"timeout (no reply to the {stage} stage" + (f" within {timeout:g} s)" if timeout else ")")
    return "no masked vector"


def _secure_mean(
    grid: Any,
    round_number: int,
    fitins: Mapping[int, FitIns],
    polled: PolledGrid,
    settings: SecureAggregation,
    timeout: float | None,
    max_weight: float = 1.0,
) -> tuple[list[np.ndarray], dict[int, dict[str, Any]]]:
    """Run the workflow once on ``fitins``: ``(the weighted mean arrays, node -> metrics of the parties
    aggregated)``.

    :raises SecureAggregationHalted: fewer than the threshold answered some stage.
    """
    adapter = OneRound(polled, int(getattr(grid, "run_id", 0) or 0), fitins)
    context = LegacyContext(
        Context(run_id=adapter.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=adapter,
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_number})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # read by the setup stage, unused here
    for node in fitins:  # only counted, in the workflow's log line
        context.client_manager.register(GridClientProxy(node, polled, adapter.run_id))
    settings.workflow(timeout, max_weight)(polled, context)
    if adapter.result is None:
        answered = {stage: len(nodes) for stage, nodes in polled.answered.items()}
        raise SecureAggregationHalted(
            f"round {round_number}: secure aggregation halted, fewer than secagg-reconstruction-threshold = "
            f"{settings.reconstruction_threshold} parties answered; of {len(fitins)} sampled, answers per stage: "
            f"{answered or 'none'}" + (f"; refused: {dict(sorted(polled.refused.items()))}" if polled.refused else "")
        )
    means, metrics, _ = adapter.result
    return means, metrics


def _left_out(polled: PolledGrid, sampled: Iterable[int], aggregated: Iterable[int], timeout: float | None) -> dict:
    return {
        node: polled.refused.get(node) or _missed(polled, node, timeout)
        for node in sorted(set(sampled) - set(aggregated))
    }


def secure_fede_round(
    grid: Any,
    round_number: int,
    messages: Sequence[Message],
    global_ids: Mapping[int, np.ndarray],
    table: np.ndarray,
    settings: SecureAggregation,
    timeout: float | None,
) -> SecureRound:
    """One FedE round's upload and aggregation under SecAgg+.

    :param grid: the Flower grid.
    :param round_number: the FedE round (the workflow's ``current_round``, the messages' group id).
    :param messages: the round's plain train messages (``FedEStrategy.configure_train``: one per
        sampled node, with its rows and config); their content goes out as each node's FitIns.
    :param global_ids: node id -> its local id -> global row mapping.
    :param table: the current global table (N, d); not modified.
    :param settings: the SecAgg+ settings.
    :param timeout: seconds each of the four exchanges waits for replies.
    :returns: the new table, the counts, the survivors' metrics, who was left out and why, bytes.
    :raises SecureAggregationHalted: fewer than the threshold answered some stage (table untouched).
    :raises HolderCountMismatch: the summed masks differ from the aggregated parties' holders.
    :raises FederationError: fewer sampled parties than SecAgg+ needs.
    """
    settings.check_parties(round_number, len(messages))
    num_union, dim = table.shape
    fitins, download = {}, {}
    for msg in messages:
        node = msg.metadata.dst_node_id
        fitins[node], download[node] = _fitins(msg, global_ids[node], num_union, settings.clipping_range)
    polled = PolledGrid(grid, shapes=[(1,), (num_union, dim), (num_union, 1), (CLIPPED_BITS,)])
    (table_mean, mask_mean, bits_mean), metrics = _secure_mean(grid, round_number, fitins, polled, settings, timeout)
    aggregated = len(metrics)
    new, counts = per_row_mean(table, table_mean, mask_mean, aggregated)
    check_holder_counts(round_number, counts, [global_ids[node] for node in metrics])
    clipped = int(sum(int(np.rint(b * aggregated)) << j for j, b in enumerate(bits_mean)))
    return SecureRound(
        table=new,
        counts=counts,
        metrics={node: {k: float(v) for k, v in m.items()} for node, m in metrics.items()},
        left_out=_left_out(polled, fitins, metrics, timeout),
        upload=dict(polled.upload),
        reply_bytes=dict(polled.reply_bytes),
        download=download,
        clipped=clipped,
    )


def per_row_mean(
    table: np.ndarray, table_mean: np.ndarray, mask_mean: np.ndarray, aggregated: int
) -> tuple[np.ndarray, np.ndarray]:
    """FedE's per-row mean from SecAgg+'s means over ``aggregated`` parties: ``table_mean / mask_mean`` for
    every row some party holds, ``table``'s row for the others.

    :param table: the current global table (N, d); not modified.
    :param table_mean: (N, d), ``mean_k x_k m_k`` (the scattered rows, zeros where a party holds none).
    :param mask_mean: (N, 1), ``mean_k m_k``.
    :returns: ``(the new table (float32, a copy), the holder counts (int64, N))``.
    """
    counts = np.rint(mask_mean[:, 0] * aggregated).astype(np.int64)
    held = counts > 0
    new = np.array(table, dtype=np.float32, copy=True)
    new[held] = (table_mean[held] / mask_mean[held]).astype(np.float32)
    return new, counts


def check_holder_counts(round_number: int, counts: np.ndarray, holders: Sequence[np.ndarray]) -> None:
    """Cross-check a secure round's holder counts against the handshake: row ``i`` must be held by exactly
    as many aggregated parties as the server knows hold it (``holders``: each aggregated party's global ids).

    :raises HolderCountMismatch: naming the round, how many rows differ and the first of them.
    """
    expected = np.zeros(counts.shape[0], dtype=np.int64)
    for ids in holders:
        expected[np.asarray(ids, dtype=np.int64)] += 1
    wrong = np.flatnonzero(expected != counts)
    if wrong.size:
        first = int(wrong[0])
        raise HolderCountMismatch(
            f"round {round_number}: the secure aggregate's holder counts differ from the handshake's in "
            f"{wrong.size} of {counts.shape[0]} rows (row {first}: {int(counts[first])} summed, "
            f"{int(expected[first])} expected); the aggregate is corrupt (secagg-clipping-range must be >= 1), "
            "the table is left untouched"
        )


@dataclass
class SecureMean:
    """One SimSkip round's secure weighted mean.

    :param arrays: the weighted mean of the uploaded arrays (float64, in the upload's order).
    :param metrics: node id -> the train metrics of each party aggregated (they travel in the clear).
    :param left_out: node id -> why a sampled party was not aggregated.
    :param max_weight: the workflow's ``max_weight`` (:func:`power_of_two_weight` of the row counts).
    :param reply_bytes: node id -> bytes of all its SecAgg+ replies (keys, shares, masked vector).
    """

    arrays: list[np.ndarray]
    metrics: dict[int, dict[str, float]]
    left_out: dict[int, str]
    max_weight: float
    reply_bytes: dict[int, int]


def secure_weighted_mean(
    grid: Any,
    round_number: int,
    fitins: Mapping[int, FitIns],
    shapes: Sequence[tuple[int, ...]],
    weights: Mapping[int, int],
    settings: SecureAggregation,
    timeout: float | None,
    message_type: str,
) -> SecureMean:
    """A weighted mean of whole arrays under SecAgg+ (the SimSkip phase's encoder weights).

    :param fitins: node id -> its FitIns (what the party's masked-vector stage reads).
    :param shapes: the shapes of the arrays each party uploads (masked vectors of other shapes are
        refused as a dropout).
    :param weights: node id -> its weight ``n_k`` (the row count it was sent; each party uploads it
        as ``num_examples``): the workflow's ``max_weight`` is :func:`power_of_two_weight` of the largest.
    :param message_type: the stages' message type (e.g. ``train.simskip``).
    :raises SecureAggregationHalted: fewer than the threshold answered some stage.
    :raises FederationError: fewer sampled parties than SecAgg+ needs.
    """
    settings.check_parties(round_number, len(fitins))
    max_weight = power_of_two_weight(max(weights[node] for node in fitins))
    polled = PolledGrid(grid, shapes=[(1,), *[tuple(shape) for shape in shapes]], message_type=message_type)
    means, metrics = _secure_mean(grid, round_number, fitins, polled, settings, timeout, max_weight)
    return SecureMean(
        arrays=list(means),
        metrics={node: {k: float(v) for k, v in m.items()} for node, m in metrics.items()},
        left_out=_left_out(polled, fitins, metrics, timeout),
        max_weight=max_weight,
        reply_bytes=dict(polled.reply_bytes),
    )
