"""The SimSkip refinement phase and the downstream evaluation as a Flower strategy.

Runs after the KGE phase, on the clients registered by :class:`server.strategy.FedEStrategy`
(its handshake and best-round entity rows are reused). :class:`SimSkipStrategy` extends
Flower's :class:`~flwr.serverapp.strategy.FedAvg`: like FedE, each client must receive its own
entity rows, so ``configure_train`` is overridden; ``aggregate_train`` is FedAvg of the named
encoder + head weights weighted by the number of rows (:func:`client.kge.weights.fedavg_named`),
which Flower's ``aggregate_arrayrecords`` would do too but without the per-name checks.

Message protocol:

``train.simskip`` (one message per client per round)
    ArrayRecord ``"entity-rows"`` = {``"rows"``: the client's best-round rows}; ArrayRecord
    ``"simskip-weights"`` = the round's starting weights, ``"<variant>/<name>"`` entries
    (federated: the current average, every round; local-only: the initial weights in round 1
    only, afterwards the client continues from its own weights, kept in ``context.state`` and
    in its private checkpoint, so no encoder leaves a client); ConfigRecord ``"config"``:
    ``server-round``, ``best-round`` (the KGE round whose relations a client's structure view
    uses, ``simskip-augmentations = "row_view,..."``; with ``stopping = per-party`` the client's
    own best round, as its rows are), ``federate``, ``federation-id``.
    Reply: ArrayRecord ``"simskip-weights"`` (federated only) and MetricRecord ``"metrics"``:
    ``num-rows``, ``loss/<variant>`` (last local epoch), ``simskip-seconds``.
``evaluate.downstream`` (once per client)
    Same rows (+ the final average weights when federated); config ``best-round``,
    ``simskip-round`` (the last round), ``federate`` and ``federation-id``; protocols, seeds,
    search and budget are the run config's. The client refines its rows and runs every
    downstream protocol (:func:`client.kge.comparison.evaluate_client_rows`). Reply: ConfigRecord
    ``"downstream"`` = {``"record"``: the JSON record}, ArrayRecord ``"downstream-rr"`` = the
    per-triple test reciprocal ranks by :func:`client.kge.comparison.rr_key`, MetricRecord
    ``"metrics"`` = {``client-seconds``} (:func:`parse_downstream_reply`).

Under ``secure-aggregation = true`` (federated phase) each round's upload and average go through
Flower's SecAgg+ (:func:`server.secure_aggregation.secure_weighted_mean`, the adapter the FedE rounds
use): the four stages are ``train.simskip`` messages, the masked-vector stage's a FitIns of the same
rows and weights (:func:`server.secure_aggregation.weights_fitins`); each party uploads its weights
masked, weighted by its row count, and the server obtains only the weighted mean (the reply metrics
travel in the clear). A party lost before the unmask stage is left out and recorded, as in the plain
phase; too few parties halt the round (:class:`~server.secure_aggregation.SecureAggregationHalted`).

Checkpoint and resume: after every SimSkip round the ServerApp checkpoints the KGE state plus
:meth:`SimSkipStrategy.checkpoint_arrays` (the global encoder weights) and
:meth:`SimSkipStrategy.checkpoint_state` (round, history); a resumed run continues after that
round. Each round's training is seeded by (``simskip-seed``, client, round) and starts from the
checkpointed weights, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from client.kge.comparison import DownstreamRecordError, check_record
from client.kge.protocols import protocol_labels
from client.kge.refinement import (
    RefinementConfig,
    RoundUpdate,
    initial_weights,
    pack_variants,
    round_record,
    unpack_variants,
)
from client.kge.run_folder import atomic_write_text
from client.kge.weights import WeightsAggregationError, fedavg_named
from client.protocol import (
    CONFIG_KEY,
    DOWNSTREAM_RANKS,
    DOWNSTREAM_RECORD,
    DOWNSTREAM_TYPE,
    ENTITY_ROWS_KEY,
    METRICS_KEY,
    ROWS_ARRAY,
    SIMSKIP_TRAIN_TYPE,
    WEIGHTS_KEY,
)
from server.downstream import write_downstream_and_report
from server.records import FederationError, UpdateRejectedError
from server.report import SIMSKIP_METRICS_FILE
from server.secure_aggregation import SecureMean, secure_weighted_mean, weights_fitins
from server.strategy import FedEStrategy

__all__ = [
    "DOWNSTREAM_TYPE",
    "SIMSKIP_TRAIN_TYPE",
    "WEIGHTS_KEY",
    "SimSkipStrategy",
    "parse_downstream_reply",
    "run_refinement_phase",
]

#: prefix of the SimSkip weights among the server checkpoint's arrays
CHECKPOINT_PREFIX = "simskip/"
NamedArrays = list[tuple[str, np.ndarray]]


class SimSkipStrategy(FedAvg):
    """Federated SimSkip rounds (or the local-only ablation) and the downstream evaluation.

    Failures are handled as in the KGE phase (:class:`server.strategy.FedEStrategy`): every
    round waits for ``min-clients`` registered clients (re-admitting a restarted party by its
    client id, which then restores its private KGE state); a client that fails, times out
    (``round-timeout``) or sends an unusable update (:meth:`check_update`) is left out of that
    round and recorded in the round's ``failures``; the others are averaged.

    :param kge: the finished KGE strategy: its membership component (:attr:`members`, the same
        :class:`~server.membership.Membership`: registered clients, exchange, waits, failure
        records), its state's ``rows_for(node_id)`` (the best round's rows), its loop state and
        aggregation rule are used.
    :param config: the refinement phase config.
    :param eval_protocol: the run's ``eval-protocol`` (the valid score of the downstream choices).
    """

    def __init__(self, kge: FedEStrategy, config: RefinementConfig, eval_protocol: str = "standard") -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
            weighted_by_key="num-rows",
            arrayrecord_key=WEIGHTS_KEY,
            configrecord_key=CONFIG_KEY,
        )
        if kge.members.entity_dim is None or not kge.clients:
            raise FederationError("the SimSkip phase needs a KGE strategy that ran its handshake")
        self.kge = kge
        self.members = kge.members
        self.config = config
        self.variants = list(config.variants())
        self.global_weights = initial_weights(int(kge.members.entity_dim), config)
        #: the last completed SimSkip round (a resumed run continues after it)
        self.round = 0
        #: client id -> rows refined in the last round (also the FedAvg weights)
        self.num_rows: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self._last_updates: dict[str, RoundUpdate] = {}
        self.eval_protocol = eval_protocol
        #: the SecAgg+ settings of a federated phase under ``secure-aggregation = true``, else ``None``
        self.secure_aggregation = kge.secure_aggregation if config.federate else None
        #: ``dp = local``: client id -> its accountant's ``epsilon`` and ``releases`` after its last SimSkip
        #: upload (its reply metrics; the KGE rounds' releases included)
        self.dp: dict[str, dict[str, float]] = {}
        #: client id -> {rr_key: per-triple test reciprocal ranks} (filled by the downstream evaluation)
        self.ranks: dict[str, dict[str, np.ndarray]] = {}
        #: clients without a downstream result, with the reason (filled by :meth:`downstream`)
        self.missing: dict[str, str] = {}

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The global encoder + head weights as ``simskip/<variant>/<name>`` arrays."""
        return {
            f"{CHECKPOINT_PREFIX}{name}": np.ascontiguousarray(array)
            for name, array in pack_variants(self.global_weights)
        }

    def checkpoint_state(self) -> dict[str, Any]:
        """``phase`` = ``"simskip"``, the last completed round and the history rows."""
        return {"phase": "simskip", "simskip_round": self.round, "simskip_history": list(self.history)}

    def restore_checkpoint(self, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        """Load what :meth:`checkpoint_arrays` / :meth:`checkpoint_state` returned.

        :raises FederationError: when the checkpoint's weights do not fit this phase's encoder.
        """
        flat = [
            (key.removeprefix(CHECKPOINT_PREFIX), np.asarray(array))
            for key, array in arrays.items()
            if key.startswith(CHECKPOINT_PREFIX)
        ]
        try:
            weights = unpack_variants(flat, self.variants)
            self.global_weights = {v: _checked(weights[v], self.global_weights[v]) for v in self.variants}
        except (ValueError, WeightsAggregationError) as error:
            raise FederationError(f"checkpoint: the SimSkip weights do not fit this run's encoder: {error}") from error
        self.round = int(state["simskip_round"])
        self.history = [dict(row) for row in state.get("simskip_history", [])]

    # ------------------------------------------------------------------ messages
    def _message(self, node_id: int, message_type: str, config: Mapping[str, Any], with_weights: bool) -> Message:
        """One message to ``node_id`` with its best-round rows; with ``stopping = per-party`` its
        ``best-round`` is that client's own (:meth:`FedEStrategy.best_round_for`)."""
        if self.kge.per_party and "best-round" in config:
            config = {**dict(config), "best-round": self.kge.best_round_for(node_id)}
        content = RecordDict(
            {
                ENTITY_ROWS_KEY: ArrayRecord(
                    {ROWS_ARRAY: Array(np.ascontiguousarray(self.kge.state.rows_for(node_id), dtype=np.float32))}
                ),
                CONFIG_KEY: ConfigRecord(
                    {**dict(config), "federate": self.config.federate, "federation-id": self.kge.loop.federation_id}
                ),
            }
        )
        if with_weights:
            content[WEIGHTS_KEY] = ArrayRecord(
                {name: Array(np.ascontiguousarray(a)) for name, a in pack_variants(self.global_weights)}
            )
        return Message(content=content, message_type=message_type, dst_node_id=node_id)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``train.simskip`` message per connected registered client, with its rows (and the
        weights); waits for ``min-clients`` of them (:meth:`Membership.await_clients`)."""
        with_weights = self.config.federate or server_round == 1
        return [
            self._message(node, SIMSKIP_TRAIN_TYPE, {**dict(config), "server-round": server_round}, with_weights)
            for node in self.members.await_clients(grid, f"SimSkip round {server_round}")
        ]

    def check_update(self, node_id: int, msg: Message) -> RoundUpdate:
        """One client's SimSkip reply, checked.

        :raises UpdateRejectedError: error reply, unregistered node, missing metrics, a row
            count other than the rows it was sent, a non-finite loss, or (federated) weights
            missing, of other names or shapes than the global encoder's, or holding NaN / Inf.
        """
        if msg.has_error():
            raise UpdateRejectedError(msg.error.reason)
        update = self._checked_metrics(node_id, msg.content.metric_records.get(METRICS_KEY))
        weights: dict[str, NamedArrays] = {}
        if self.config.federate:
            record = msg.content.array_records.get(WEIGHTS_KEY)
            if record is None:
                raise UpdateRejectedError(f"reply lacks the {WEIGHTS_KEY!r} record")
            try:
                flat = [(key, record[key].numpy()) for key in record]
                unpacked = unpack_variants(flat, self.variants)
                weights = {v: _checked(unpacked[v], self.global_weights[v]) for v in self.variants}
            except (ValueError, WeightsAggregationError) as error:
                raise UpdateRejectedError(str(error)) from None
        return RoundUpdate(weights, update.num_rows, update.losses, update.seconds)

    def _checked_metrics(self, node_id: int, metrics: Mapping[str, Any] | None) -> RoundUpdate:
        """A reply's metrics, checked, as a :class:`RoundUpdate` without weights.

        :raises UpdateRejectedError: unregistered node, missing metrics, a row count other than the
            rows it was sent, or a non-finite loss.
        """
        info = self.members.clients.get(node_id)
        if info is None:
            raise UpdateRejectedError("reply from an unregistered node")
        if metrics is None or "num-rows" not in metrics:
            raise UpdateRejectedError(f"reply lacks {METRICS_KEY}/num-rows")
        num_rows = int(metrics["num-rows"])
        if num_rows != info.global_ids.shape[0]:
            raise UpdateRejectedError(f"refined {num_rows} rows, it was sent {info.global_ids.shape[0]}")
        losses = {v: [float(metrics[f"loss/{v}"])] for v in self.variants if f"loss/{v}" in metrics}
        bad = [v for v, (loss,) in losses.items() if not math.isfinite(loss)]
        if bad:
            raise UpdateRejectedError(f"non-finite SimSkip loss of {bad}")
        return RoundUpdate({}, num_rows, losses, float(metrics.get("simskip-seconds", 0.0)))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's signature: replies attributed by their source node (:meth:`run` attributes
        them by request, :meth:`aggregate_attributed`)."""
        return self.aggregate_attributed(server_round, [(m.metadata.src_node_id, m) for m in replies])

    def aggregate_attributed(
        self, server_round: int, replies: Iterable[tuple[int, Message]]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the usable updates' weights (federated) and the round's loss record.

        A rejected update is logged and recorded (:meth:`Membership.record_failure`); the others go on.

        :raises FederationError: when no update survived.
        """
        updates: dict[str, RoundUpdate] = {}
        rejected = []
        for node_id, msg in replies:
            name = self.members.client_name(node_id)
            try:
                updates[name] = self.check_update(node_id, msg)
                self._note_dp(name, msg.content.metric_records.get(METRICS_KEY))
            except UpdateRejectedError as error:
                rejected.append(
                    self.members.record_failure(
                        name, str(error) if msg.has_error() else f"update rejected: {error}", "simskip"
                    )
                )
        if not updates:
            raise FederationError(f"SimSkip round {server_round}: no client update survived; failures: {rejected}")
        if self.config.federate:
            try:
                self.global_weights = {
                    variant: fedavg_named(
                        [(u.weights[variant], u.num_rows) for _, u in sorted(updates.items())],
                        self.kge.aggregation,
                        self.kge.aggregation_trim,
                    )
                    for variant in self.variants
                }
            except WeightsAggregationError as error:  # checked above: a bug of ours, not a client's
                raise FederationError(f"SimSkip round {server_round}: {error}") from error
        self.num_rows = {name: u.num_rows for name, u in updates.items()}
        self._last_updates = updates
        overall = round_record(server_round, updates, 0.0)["simskip_loss_overall"]
        return None, MetricRecord({f"loss/{v}": float(x) for v, x in overall.items()})

    def _note_dp(self, name: str, metrics: Mapping[str, Any] | None) -> None:
        """Keep a reply's ``dp-epsilon`` and ``dp-releases`` (``dp = local``; absent otherwise)."""
        if metrics is not None and "dp-epsilon" in metrics:
            self.dp[name] = {"epsilon": float(metrics["dp-epsilon"]), "releases": int(metrics.get("dp-releases", 0))}

    def secure_round(self, grid: Grid, server_round: int, messages: list[Message], timeout: float) -> SecureMean:
        """The round's upload and weighted mean under SecAgg+ (``secure-aggregation = true``): each
        party's weights weighted by its row count, as :meth:`aggregate_attributed` weights them.

        :raises server.secure_aggregation.SecureAggregationHalted: too few parties answered.
        """
        assert self.secure_aggregation is not None
        packed = pack_variants(self.global_weights)
        names = [name for name, _ in packed]
        clipping_range = self.secure_aggregation.clipping_range
        fitins = {m.metadata.dst_node_id: weights_fitins(m, WEIGHTS_KEY, names, clipping_range) for m in messages}
        counts = {node: int(self.members.clients[node].global_ids.shape[0]) for node in fitins}
        shapes = [np.shape(array) for _, array in packed]
        return secure_weighted_mean(
            grid, server_round, fitins, shapes, counts, self.secure_aggregation, timeout, SIMSKIP_TRAIN_TYPE
        )

    def aggregate_secure(self, server_round: int, outcome: SecureMean) -> MetricRecord:
        """Take a secure round's mean as the global weights; record the parties left out and the losses.

        A party whose masked vector was aggregated but whose (clear) metrics do not check is recorded as
        a failure; its weights stay in the mean (SecAgg+ cannot take them out).

        :raises FederationError: no party's metrics survived, or the mean does not fit the encoder.
        """
        for node_id, why in outcome.left_out.items():
            self.members.record_failure(self.members.client_name(node_id), f"secure aggregation: {why}", "simskip")
        updates: dict[str, RoundUpdate] = {}
        for node_id, metrics in sorted(outcome.metrics.items()):
            name = self.members.client_name(node_id)
            try:
                updates[name] = self._checked_metrics(node_id, metrics)
                self._note_dp(name, metrics)
            except UpdateRejectedError as error:
                self.members.record_failure(
                    name, f"metrics rejected (its weights are in the secure mean): {error}", "simskip"
                )
        if not updates:
            raise FederationError(f"SimSkip round {server_round}: no client's metrics survived the secure round")
        names = [name for name, _ in pack_variants(self.global_weights)]
        try:
            unpacked = unpack_variants(list(zip(names, outcome.arrays, strict=True)), self.variants)
            self.global_weights = {v: _checked(unpacked[v], self.global_weights[v]) for v in self.variants}
        except (ValueError, WeightsAggregationError) as error:
            raise FederationError(f"SimSkip round {server_round}: the secure mean: {error}") from error
        self.num_rows = {name: u.num_rows for name, u in updates.items()}
        self._last_updates = updates
        overall = round_record(server_round, updates, 0.0)["simskip_loss_overall"]
        return MetricRecord({f"loss/{v}": float(x) for v, x in overall.items()})

    # ------------------------------------------------------------------ loop
    def run(
        self,
        grid: Grid,
        *,
        best_round: int,
        timeout: float = 3600.0,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Run SimSkip rounds ``self.round + 1`` .. ``config.rounds``, then the downstream evaluation.

        :param best_round: the KGE round whose client state (relations) is "FedE as trained".
        :param on_round_end: receives each round's history row (for ``simskip_metrics.jsonl``
            and the checkpoint) after the strategy's state is that round's.
        :returns: ``{row: {client: {protocol: metrics}}}``; clients without a result are in
            :attr:`missing`.
        :raises FederationError: too few clients for ``min-clients-timeout``, or a round in
            which no update survived.
        """
        for server_round in range(self.round + 1, self.config.rounds + 1):
            started = time.perf_counter()
            with self.members.collecting_failures() as failures:
                messages = list(
                    self.configure_train(
                        server_round, ArrayRecord(), ConfigRecord({"best-round": int(best_round)}), grid
                    )
                )
                if self.secure_aggregation is not None:
                    self.aggregate_secure(server_round, self.secure_round(grid, server_round, messages, timeout))
                else:
                    replies = self.members.exchange(grid, messages, timeout, phase="simskip")
                    self.aggregate_attributed(server_round, replies)
            record = round_record(server_round, self._last_updates, time.perf_counter() - started)
            record["failures"] = failures
            if self.dp:  # dp = local: each party's epsilon so far (rows and encoder releases together)
                from client.kge.local_dp import json_epsilon  # null, not Infinity, in the JSON rows (z = 0)

                record["dp"] = {
                    name: {**values, "epsilon": json_epsilon(values["epsilon"])}
                    for name, values in sorted(self.dp.items())
                }
            self.history.append(record)
            self.round = server_round
            log(
                INFO,
                "[simskip round %s/%s] %.1fs loss %s%s",
                server_round,
                self.config.rounds,
                record["seconds"],
                " ".join(f"{v}={x:.4f}" for v, x in record["simskip_loss_overall"].items()),
                f" | left out: {failures}" if failures else "",
            )
            if on_round_end is not None:
                on_round_end(record)
        if self.dp:
            log(
                INFO,
                "dp = local: after the SimSkip phase, %s",
                ", ".join(
                    f"{n}: epsilon {v['epsilon']:.4g} after {v['releases']} releases"
                    for n, v in sorted(self.dp.items())
                ),
            )
        return self.downstream(grid, best_round=best_round, timeout=timeout)

    def downstream(self, grid: Grid, *, best_round: int, timeout: float = 3600.0) -> dict[str, dict[str, Any]]:
        """The downstream evaluation on every registered client; a client that fails or times
        out is asked once more after :meth:`Membership.await_clients` (it may have rejoined).

        :returns: ``{client: record}`` (:func:`client.kge.comparison.evaluate_client_rows`); the
            per-triple reciprocal ranks are in :attr:`ranks`, the clients still without a
            result in :attr:`missing` (client id -> the last failure).
        """
        config = {"best-round": int(best_round), "simskip-round": self.round}
        records: dict[str, dict[str, Any]] = {}
        self.ranks = {}
        expected = {info.client_id for info in self.members.clients.values()}
        self.missing = {}
        for attempt in (1, 2):
            with self.members.collecting_failures() as failures:
                nodes = self.members.clients_for_last_step(grid, "downstream evaluation")
                messages = [
                    self._message(node, DOWNSTREAM_TYPE, config, self.config.federate)
                    for node in nodes
                    if self.members.client_name(node) not in records
                ]
                for node, msg in self.members.exchange(grid, messages, timeout, phase="downstream", progress=True):
                    name = self.members.client_name(node)
                    try:
                        records[name], self.ranks[name] = parse_downstream_reply(msg, self.config)
                    except UpdateRejectedError as error:
                        self.members.record_failure(name, str(error), "downstream")
            self.missing = {
                name: next((f for f in reversed(failures) if f.startswith(f"{name}: ")), "not connected")
                for name in sorted(expected - set(records))
            }
            if not self.missing:
                break
            if attempt == 1:
                log(WARNING, "downstream evaluation: no result from %s; asking them once more", sorted(self.missing))
        return records


def parse_downstream_reply(
    msg: Message, config: RefinementConfig | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A client's downstream reply -> ``(record, reciprocal ranks)``, checked
    (:func:`client.kge.comparison.check_record`: structure, the run's protocols and seeds, one
    reciprocal rank in (0, 1] per test triple).

    :param config: the run's refinement config (its protocol labels and seeds are expected).
    :raises UpdateRejectedError: for an error reply or anything malformed, naming it.
    """
    if msg.has_error():
        raise UpdateRejectedError(msg.error.reason)
    if DOWNSTREAM_RECORD not in msg.content.config_records or DOWNSTREAM_RANKS not in msg.content.array_records:
        raise UpdateRejectedError("reply lacks the downstream record or its reciprocal ranks")
    try:
        record = json.loads(str(msg.content.config_records[DOWNSTREAM_RECORD]["record"]))
        ranks = {key: array.numpy() for key, array in msg.content.array_records[DOWNSTREAM_RANKS].items()}
    except (KeyError, ValueError, TypeError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise UpdateRejectedError(f"malformed downstream reply: {type(error).__name__}: {error}") from None
    try:
        check_record(
            record,
            ranks,
            labels=protocol_labels(config.downstream_protocols, config.refit_init) if config else None,
            seeds=config.downstream_seeds if config else None,
        )
    except DownstreamRecordError as error:
        raise UpdateRejectedError(f"downstream record: {error}") from None
    return record, ranks


def _checked(weights: NamedArrays, reference: NamedArrays) -> NamedArrays:
    """``weights`` in ``reference``'s name order, float32, with ``reference``'s shapes and finite.

    :raises WeightsAggregationError: naming the first entry that does not fit.
    """
    ordered = _in_order(weights, reference)
    out = []
    for (name, array), (_, ref) in zip(ordered, reference, strict=True):
        array = np.asarray(array)
        if array.shape != ref.shape:
            raise WeightsAggregationError(f"weight {name!r} has shape {array.shape}, expected {ref.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsAggregationError(f"weight {name!r} has dtype {array.dtype}, expected a float dtype")
        if not np.isfinite(array).all():
            raise WeightsAggregationError(f"weight {name!r} holds NaN or Inf")
        out.append((name, array.astype(np.float32, copy=False)))
    return out


def _in_order(weights: NamedArrays, reference: NamedArrays) -> NamedArrays:
    """``weights`` in ``reference``'s name order (a record's key order is not part of the contract)."""
    by_name = dict(weights)
    missing = [name for name, _ in reference if name not in by_name]
    if missing or len(by_name) != len(reference):
        raise WeightsAggregationError(f"weights names differ from the global encoder's: missing {missing}")
    return [(name, by_name[name]) for name, _ in reference]


def run_refinement_phase(
    grid: Grid,
    kge: FedEStrategy,
    *,
    best_round: int,
    refinement: RefinementConfig,
    kge_config: Any,
    setting: str,
    run_dir: str | None = None,
    timeout: float = 3600.0,
    save_checkpoint: Callable[[SimSkipStrategy], None] | None = None,
    resume_from: tuple[Mapping[str, np.ndarray], Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The whole phase after KGE training: SimSkip rounds, downstream evaluation, report.

    With ``run_dir``: ``simskip_metrics.jsonl`` grows by one row per round (atomically
    rewritten), then ``downstream.json`` (every client's record and the ``missing_clients``),
    ``downstream_rr.npz`` and the report files are written
    (:func:`server.downstream.write_downstream_and_report`).

    :param save_checkpoint: called after every round (after ``simskip_metrics.jsonl``) with the
        strategy, whose :meth:`SimSkipStrategy.checkpoint_arrays` / ``checkpoint_state`` are
        that round's.
    :param resume_from: ``(arrays, state)`` of a checkpoint written during this phase: the
        rounds continue after its round, ``simskip_metrics.jsonl`` is rewritten from its history.
    :returns: ``{client: record}`` of the downstream evaluation.
    :raises FederationError: when a round fails, or after writing the results of the others
        when clients have no downstream result.
    """
    strategy = SimSkipStrategy(kge, refinement, eval_protocol=str(getattr(kge_config, "eval_protocol", "standard")))
    if resume_from is not None:
        strategy.restore_checkpoint(*resume_from)
        log(INFO, "resume: the SimSkip phase continues after round %s of %s", strategy.round, refinement.rounds)
    lines = [json.dumps(record, sort_keys=True) for record in strategy.history]

    def write_history() -> None:
        if run_dir:
            atomic_write_text(Path(run_dir) / SIMSKIP_METRICS_FILE, "".join(line + "\n" for line in lines))

    def on_round_end(record: dict[str, Any]) -> None:
        lines.append(json.dumps(record, sort_keys=True))
        write_history()  # first the history, then the checkpoint naming that round
        if save_checkpoint is not None:
            save_checkpoint(strategy)

    if resume_from is not None:
        write_history()  # drops rows of rounds after the checkpoint
    started = time.perf_counter()
    rows = strategy.run(grid, best_round=best_round, timeout=timeout, on_round_end=on_round_end)
    if run_dir and rows:
        simskip_seconds = sum(r["seconds"] for r in strategy.history)
        write_downstream_and_report(
            run_dir,
            rows,
            strategy.ranks,
            kge_config=kge_config,
            refinement=refinement,
            setting=setting,
            extra={
                "source": "federated",
                "simskip_seconds": round(simskip_seconds, 3),
                "phase_seconds": round(time.perf_counter() - started, 3),
                "best_round": int(best_round),
                "missing_clients": strategy.missing,
            },
        )
    if strategy.missing:
        raise FederationError(
            f"downstream evaluation: no result from clients {sorted(strategy.missing)} "
            f"({strategy.missing}); the others' results are in downstream.json"
        )
    return rows
