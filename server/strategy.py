"""FedE as a Flower strategy: per-client entity rows out, per-row mean back in.

:class:`FedEStrategy` extends Flower's :class:`~flwr.serverapp.strategy.FedAvg`. FedAvg sends
one identical payload to every sampled node and averages whole arrays; FedE needs each client
to receive only the rows of the entities it holds (in its local order) and each global row to
be averaged over the clients that hold it. So the four ``configure_*`` / ``aggregate_*`` hooks
are overridden, and ``start`` is overridden because FedE's loop adds what FedAvg's lacks: a
handshake fixing the global vocabulary, validation every ``eval_every`` rounds, early stopping
(``stopping = overall``: on the weighted validation MRR; ``per-party``: one tracker per client over
its own validation MRR, ``docs/concepts/stopping.md``), a final test on the best round's state
(per party: each client's own best round's), and the failure semantics below.

``best-round`` in every message below is the round whose private state the receiving client keeps
(and tests, and hands the SimSkip phase): the run's one best round under ``overall``, that
client's own under ``per-party`` (:meth:`FedEStrategy.best_round_for`). A client needs nothing
else to follow either rule.

Message protocol (``message_type`` = category[.action]):

``query.entities`` (handshake, server -> every client)
    reply ConfigRecord ``"client"``: ``client-id`` (str), ``entity-labels`` (list[str], the
    client's local-id order), ``num-train``/``num-valid``/``num-test`` (int), ``entity-dim``.
``query.restore`` (after a resume, and to a client that rejoined with a new node id)
    ConfigRecord ``"config"``: ``resume-round`` (the last completed round), ``best-round``,
    ``federation-id`` and ``strict`` (resume: a missing client checkpoint is an error; rejoin:
    the client starts afresh, logged). Reply MetricRecord ``"metrics"`` with
    ``restored-round`` (-1: nothing restored).
``train`` (one message per sampled client)
    ArrayRecord ``"entity-rows"`` = {``"rows"``: float32 (n_k, entity_dim)} in the client's local
    order; ConfigRecord ``"config"`` with ``server-round``, ``best-round``, ``federation-id``
    and the train config. Reply: the same ArrayRecord after local training, MetricRecord
    ``"metrics"`` with ``num-entities`` (n_k), ``num-examples`` (train triples), ``train-loss``
    (last epoch), ``train-seconds``, ``client-seconds``.
``evaluate`` (validation) / ``evaluate.test`` (final test)
    Same ArrayRecord; config with ``server-round`` and ``best-round`` (the round whose private
    state the client must keep, or restore for the test). Reply MetricRecord ``"metrics"``
    with ``mrr``, ``hits@k`` and ``num_triples`` (and ``test-*`` with ``track-test``).

Relation embeddings never travel: they stay with each client.

Failure semantics (each recorded in the round's ``failures`` and logged, never fatal alone):

* an error reply (the ClientApp raised, or Flower's "node unavailable" reply for a SuperNode
  that stopped sending heartbeats: Flower answers for it after at most 2 x 30 s), a reply
  missing after ``round_timeout`` ("timeout"), a reply from an unregistered node, and an
  update that does not fit (missing record, wrong shape = entity ids that are not that
  client's, non-float dtype, NaN / Inf): that client is left out of the round, the others are
  aggregated, in client-id order (results never depend on reply order).
* A late reply is never applied to a later round: Flower pulls replies by the ids of the
  messages of *this* exchange only, and replies to other messages are dropped here too. The
  straggler's SuperNode handles its messages one at a time, so it takes part again as soon as
  it answers a round's message within that round's timeout.
* A node that is not registered (a restarted SuperNode gets a new node id) is asked for its
  labels at the start of the next round and re-mapped to its client id when its labels are
  exactly the registered ones (else rejected, logged); it is then told to restore its
  private state from its own checkpoint (``query.restore``).
* Fewer than ``min_clients`` registered clients connected at the handshake or at the start of
  a round: wait up to ``min_clients_timeout`` seconds, then :class:`FederationError`. Only a
  round in which no update survives fails the run; every completed round is already on disk
  (``on_round_end``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from client.kge.aggregation import AggregationError, aggregate_rows, check_rule
from client.kge.early_stopping import EarlyStopping, PartyStopping
from client.kge.registry import ConfigError
from client.kge.round_engine import RoundEngine
from client.protocol import CONFIG_KEY, ENTITY_ROWS_KEY, ROWS_ARRAY, TEST_TYPE, VALID_TYPE
from server.fede_rounds import FedERoundSteps, format_metrics
from server.fede_state import FedEState
from server.membership import Membership
from server.records import (
    ClientInfo,
    FederationError,
    FedEResult,
    LoopState,
    RoundReport,
    UpdateRejectedError,
    dp_record,
    dp_text,
    split_tracked_test,
    weighted_mean,
)
from server.secure_aggregation import SecureAggregation, SecureRound, secure_fede_round
from server.updates import check_rows_update, evaluation_metrics

__all__ = ["FLOWER_STOPPING_RULES", "FedEStrategy", "check_stopping"]

#: The values of the run-config key ``stopping`` the Flower engine implements: today every one of
#: :data:`~client.kge.early_stopping.STOPPING_RULES` (``docs/concepts/stopping.md``); each message
#: carries the receiving client's own ``best-round``.
FLOWER_STOPPING_RULES = ("overall", "per-party")


def check_stopping(stopping: str, setting: str) -> None:
    """Refuse a stopping rule the Flower engine does not implement (collection trains in-process):
    it implements every rule of :data:`~client.kge.early_stopping.STOPPING_RULES` today, so this
    guards a rule added there before the engine follows it.

    :raises ConfigError: in one line, naming the key, the value and the rules implemented here.
    """
    if setting != "collection" and stopping not in FLOWER_STOPPING_RULES:
        raise ConfigError(
            f"key 'stopping': {stopping!r} is not implemented by the Flower engine "
            f"({', '.join(FLOWER_STOPPING_RULES)}); the in-process runners: scripts/run_experiments.py "
            "--engine in-process, scripts/tune_kge.py"
        )


class FedEStrategy(FedAvg):
    """FedE (per-row mean of shared entity embeddings) and its Isolation baseline.

    The parts: :attr:`members` (:class:`~server.membership.Membership`: handshake, rejoin,
    exchange, failure records), :attr:`state` (:class:`~server.fede_state.FedEState`: table,
    best round, checkpoint), the update checks of :mod:`server.updates`, and the round loop of
    :class:`~client.kge.round_engine.RoundEngine`, whose steps are this class's ``_train`` ...
    ``_end_round``.

    :param setting: ``"fede"`` averages each entity row over its holders; ``"isolation"``
        runs the same loop but returns each client its own rows (no averaging).
    :param fraction_train: fraction of registered clients sampled each round (at least one).
    :param min_clients: registered clients that must be connected before the handshake and at
        the start of every round.
    :param min_clients_timeout: seconds to wait for ``min_clients`` before giving up with
        :class:`FederationError`.
    :param eval_every: validate every this many rounds (and always at the last round).
    :param patience: stop after this many validations without a better overall MRR.
    :param seed: seed of the client sampling when ``fraction_train < 1``.
    :param transfer_dtype: dtype of the entity rows in messages (``float32`` or ``float16``);
        the table itself stays float32.
    :param aggregation: per-row rule of FedE's averaging (and of the SimSkip phase's encoder
        weights): ``mean``, ``median`` or ``trimmed-mean`` (:mod:`client.kge.aggregation`).
    :param aggregation_trim: the fraction cut from each end by ``trimmed-mean``.
    :param stopping: the run-config key ``stopping``: one of :data:`FLOWER_STOPPING_RULES`
        (:func:`check_stopping` raises :class:`~client.kge.registry.ConfigError` otherwise).
        ``per-party``: one :class:`~client.kge.early_stopping.PartyStopping` tracker per client id,
        each client's own best rows (:class:`~server.fede_state.FedEState`) and best round.
    :param secure_aggregation: ``None`` (plain FedE: each client's rows reach the server) or the SecAgg+
        settings (run-config ``secure-aggregation = true``): each round's upload goes through Flower's
        SecAgg+ (:func:`server.secure_aggregation.secure_fede_round`), so the server obtains only the per-row
        sums and holder counts. Needs ``setting = "fede"`` and ``aggregation = "mean"``.
    """

    def __init__(
        self,
        *,
        setting: str = "fede",
        fraction_train: float = 1.0,
        min_clients: int = 2,
        min_clients_timeout: float = 600.0,
        eval_every: int = 5,
        patience: int = 15,
        seed: int = 0,
        transfer_dtype: str = "float16",
        aggregation: str = "mean",
        aggregation_trim: float = 0.25,
        stopping: str = "overall",
        secure_aggregation: SecureAggregation | None = None,
    ) -> None:
        if setting not in ("fede", "isolation"):
            raise ValueError(f"FedEStrategy runs 'fede' or 'isolation', got {setting!r}")
        if secure_aggregation is not None and (setting != "fede" or aggregation != "mean"):
            raise ValueError(
                f"secure aggregation needs setting 'fede' and aggregation 'mean', got {setting!r} and {aggregation!r}"
            )
        self.secure_aggregation = secure_aggregation
        check_stopping(stopping, setting)
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=min_clients,
            weighted_by_key="num-entities",
            arrayrecord_key=ENTITY_ROWS_KEY,
            configrecord_key=CONFIG_KEY,
        )
        self.setting = setting
        check_rule(aggregation, aggregation_trim)
        self.aggregation, self.aggregation_trim = aggregation, float(aggregation_trim)
        self.transfer_dtype = np.dtype(transfer_dtype)
        if self.transfer_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"transfer_dtype must be float32 or float16, got {transfer_dtype!r}")
        self.eval_every = eval_every
        self.patience = patience
        self.members = Membership(
            min_clients=min_clients, min_clients_timeout=min_clients_timeout, loop_state=lambda: self.state.loop
        )
        self.stopping = stopping
        self.state = FedEState(self.members, setting, seed, per_party=stopping == "per-party")
        self.members.on_rejoin = self.state.rejoined
        self.members.best_round_for = self.best_round_for
        #: client id -> metrics of the last validation (with track-test, the test metrics go to last_test)
        self.last_eval: dict[str, dict[str, float]] = {}
        self.last_test: dict[str, dict[str, float]] = {}
        self._run: FedERoundSteps | None = None

    # The registered clients and the loop state are the parts' own; these read them.
    @property
    def clients(self) -> dict[int, ClientInfo]:
        """Node id -> :class:`~server.records.ClientInfo` of the registered clients."""
        return self.members.clients

    @property
    def loop(self) -> LoopState:
        """The loop state after the last completed round (:class:`~server.records.LoopState`)."""
        return self.state.loop

    @property
    def per_party(self) -> bool:
        """Whether each client has its own best round (``stopping = per-party``)."""
        return self.state.per_party

    def best_round_for(self, node_id: int) -> int:
        """The best round whose state node ``node_id``'s client keeps and tests (0: none yet):
        the run's under ``overall``, the client's own under ``per-party``."""
        if not self.per_party:
            return self.loop.best_round
        return self.loop.party_best_round(self.members.client_name(node_id))

    def handshake(self, grid: Grid, timeout: float = 3600.0) -> list[str]:
        """Register the connected clients and fix the global vocabulary (:meth:`Membership.handshake`)."""
        return self.members.handshake(grid, timeout)

    # ------------------------------------------------------------------ messages
    def _messages(
        self, node_ids: Iterable[int], config: ConfigRecord, message_type: str, best_keys: Sequence[str] = ()
    ) -> list[Message]:
        """One message per node with its rows; the ``best_keys`` of ``config`` are set to that
        node's :meth:`best_round_for` (per party each client's own)."""
        messages = []
        report = self.members.report
        for node_id in node_ids:
            node_config = dict(config)
            if self.per_party:
                node_config.update(dict.fromkeys(best_keys, self.best_round_for(node_id)))
            rows = self.state.rows_for(node_id).astype(self.transfer_dtype, copy=False)
            if report is not None and message_type == MessageType.TRAIN:
                report.bytes_sent += rows.nbytes
            elif report is not None:
                report.eval_bytes_sent += rows.nbytes
            content = RecordDict(
                {
                    ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(np.ascontiguousarray(rows))}),
                    CONFIG_KEY: ConfigRecord(node_config),
                }
            )
            messages.append(Message(content=content, message_type=message_type, dst_node_id=node_id))
        return messages

    def sample_train_nodes(self, grid: Grid) -> list[int]:
        """Registered and still connected nodes, a ``fraction_train`` sample of them."""
        nodes = self.members.connected(grid)
        if not nodes:
            raise FederationError("no registered client is connected")
        size = max(1, round(len(nodes) * self.fraction_train))
        if size < len(nodes):
            # sample client ids, not node ids: a node id changes when a client rejoins
            names = sorted(self.clients[n].client_id for n in nodes)
            chosen = set(self.state.rng.choice(names, size=size, replace=False).tolist())
            nodes = sorted(n for n in nodes if self.clients[n].client_id in chosen)
        return nodes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``train`` message per sampled client, carrying only its rows."""
        config = ConfigRecord(
            {
                **dict(config),
                "server-round": server_round,
                "best-round": self.loop.best_round,
                "federation-id": self.loop.federation_id,
            }
        )
        nodes = self.sample_train_nodes(grid)
        log(INFO, "configure_train: round %s, %s of %s clients", server_round, len(nodes), len(self.clients))
        return self._messages(nodes, config, MessageType.TRAIN, best_keys=("best-round",))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per-row mean (FedE) or keep-own-rows (Isolation) of the clients' returned rows.

        Replies are attributed by their source node; :meth:`start` attributes them by request
        (see :meth:`Membership.exchange`) and calls :meth:`aggregate_attributed`.
        """
        name = self.members.client_name
        pairs = sorted(((m.metadata.src_node_id, m) for m in replies), key=lambda p: (name(p[0]), p[0]))
        return self.aggregate_attributed(server_round, pairs)

    def aggregate_attributed(
        self, server_round: int, replies: Sequence[tuple[int, Message]]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each client's update, drop the bad ones, aggregate the rest in client-id order.

        :returns: ``(None, metrics)``: the table stays on :attr:`state`, metrics are the train
            metrics weighted by ``num-entities``.
        :raises FederationError: when no update survived.
        """
        started = time.perf_counter()
        members, report = self.members, self.members.report
        updates, per_client, rejected = [], {}, []
        for node_id, msg in sorted(replies, key=lambda p: (members.client_name(p[0]), p[0])):
            name = members.client_name(node_id)
            try:
                rows, metrics = check_rows_update(self.clients.get(node_id), members.entity_dim, msg)
            except UpdateRejectedError as err:
                rejected.append(
                    members.record_failure(name, f"update rejected: {err}" if not msg.has_error() else str(err))
                )
                continue
            if report is not None:
                report.bytes_received += rows.nbytes
            updates.append((node_id, self.clients[node_id].global_ids, rows.astype(np.float32, copy=False)))
            per_client[name] = metrics
        if not updates:
            failures = report.failures if report is not None else rejected
            raise FederationError(f"round {server_round}: no client update survived; failures: {failures}")
        if self.setting == "fede":
            try:  # every update was checked above: an error here is a bug of ours, not a client's
                self.state.table = aggregate_rows(
                    self.state.table, [(ids, rows) for _, ids, rows in updates], self.aggregation, self.aggregation_trim
                )
            except AggregationError as err:
                raise FederationError(f"round {server_round}: {err}") from err
        else:
            for node_id, _, rows in updates:
                self.state.client_rows[node_id] = rows.astype(np.float32, copy=True)
        if report is not None:
            report.aggregation_seconds += time.perf_counter() - started
            report.train.update(per_client)
        metrics = weighted_mean(per_client, "num-entities")
        return None, MetricRecord(metrics) if metrics else None

    def secure_round(self, grid: Grid, server_round: int, messages: Sequence[Message], timeout: float) -> SecureRound:
        """Send the round's train messages through SecAgg+ (:func:`~server.secure_aggregation.secure_fede_round`).

        :raises server.secure_aggregation.SecureAggregationHalted: too few parties answered (table untouched).
        :raises server.secure_aggregation.HolderCountMismatch: the summed masks differ from the handshake's
            holders (a corrupt aggregate; table untouched).
        """
        assert self.secure_aggregation is not None
        global_ids = {m.metadata.dst_node_id: self.clients[m.metadata.dst_node_id].global_ids for m in messages}
        if self.members.report is not None:  # the rows were counted by configure_train; the ids go too
            self.members.report.bytes_sent += sum(ids.shape[0] * 8 for ids in global_ids.values())
        return secure_fede_round(
            grid, server_round, messages, global_ids, self.state.table, self.secure_aggregation, timeout
        )

    def aggregate_secure(self, server_round: int, outcome: SecureRound) -> tuple[None, MetricRecord | None]:
        """Take a secure round's table; record the parties left out, the metrics and the bytes.

        :returns: ``(None, metrics)`` as :meth:`aggregate_attributed`.
        """
        members, report = self.members, self.members.report
        for node_id, why in outcome.left_out.items():
            members.record_failure(members.client_name(node_id), f"secure aggregation: {why}")
        self.state.table = outcome.table
        per_client = dict(sorted((members.client_name(node), metrics) for node, metrics in outcome.metrics.items()))
        if outcome.clipped:
            log(
                WARNING,
                "round %s: secure aggregation clipped %s uploaded values to +-%s (secagg-clipping-range): "
                "the mean of those rows is biased; raise the range",
                server_round,
                outcome.clipped,
                self.secure_aggregation.clipping_range if self.secure_aggregation else "c",
            )
        if report is not None:
            report.bytes_received += sum(outcome.reply_bytes.values())
            report.train.update(per_client)
            report.secagg_clipped = outcome.clipped
            report.secagg_bytes = {
                members.client_name(node): {"masked_vector": outcome.upload.get(node, 0), "all_replies": sent}
                for node, sent in sorted(outcome.reply_bytes.items())
            }
        metrics = weighted_mean(per_client, "num-entities")
        return None, MetricRecord(metrics) if metrics else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One validation message per connected registered client, with its current rows."""
        config = ConfigRecord({**dict(config), "server-round": server_round, "best-round": self.loop.best_round})
        return self._messages(self.members.connected(grid), config, VALID_TYPE, best_keys=("best-round",))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Overall validation metrics weighted by each client's number of triples (FedAvg's hook;
        :meth:`start` attributes replies by request and calls :meth:`aggregate_evaluate_attributed`)."""
        return self.aggregate_evaluate_attributed([(m.metadata.src_node_id, m) for m in replies])

    def aggregate_evaluate_attributed(self, replies: Sequence[tuple[int, Message]]) -> MetricRecord | None:
        per_client = evaluation_metrics(self.members, replies, "validation")
        split = {name: split_tracked_test(m) for name, m in per_client.items()}
        self.last_eval = {name: valid for name, (valid, _) in split.items()}
        self.last_test = {name: test for name, (_, test) in split.items() if test}
        overall = weighted_mean(self.last_eval)
        return MetricRecord(overall) if overall else None

    # ------------------------------------------------------------------ loop
    def start(  # FedAvg's signature plus FedE's hooks
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        on_round_end: Callable[[RoundReport], None] | None = None,
        resume_from: tuple[Mapping[str, np.ndarray], Mapping[str, Any]] | None = None,
    ) -> FedEResult:
        """Run FedE rounds with validation, early stopping and a final test.

        Call :meth:`handshake` first. ``initial_arrays`` holds the initial global table as
        ``{"entity-table": float32 (num_entities, entity_dim)}``. ``evaluate_fn`` is not
        used (there is no central evaluation data: every triple stays with its client).
        ``on_round_end`` receives each completed round's :class:`RoundReport` after the loop
        state is updated (so ``state.checkpoint_state()`` there is that round's state).

        :param resume_from: ``(arrays, state)`` of a checkpoint: the loop continues after its
            round (the clients restore their private state of that round first);
            ``initial_arrays`` is ignored then.
        :raises FederationError: too few clients for ``min_clients_timeout``, a round in which
            no update survived, or (resume) a client that cannot restore its state.
        """
        if not self.clients:
            raise FederationError("start() called before handshake()")
        self.members.exchange_timeout = timeout
        result = FedEResult()
        state = self.state
        if resume_from is None:
            state.set_table(initial_arrays["entity-table"].numpy())
            if self.per_party:  # each client's best rows arrive with its first improvement
                state.best_table, state.best_rows = None, {}
            else:
                state.best_table, state.best_rows = state.table.copy(), dict(state.client_rows)
            state.loop = LoopState()
        else:
            state.restore_checkpoint(*resume_from)
            log(INFO, "resuming after round %s (best round %s)", self.loop.round, self.loop.best_round)
            self.members.restore_clients(grid, sorted(self.clients), timeout, strict=True)
            result.rounds = [RoundReport.from_dict(row) for row in self.loop.reports]
            for report in result.rounds:
                if report.valid_overall:
                    result.evaluate_metrics_clientapp[report.round] = MetricRecord(report.valid_overall)

        loop = self.loop
        stopper = self._stopper(loop)
        engine = RoundEngine(
            num_rounds=num_rounds, eval_every=self.eval_every, stopper=stopper, stopped_early=loop.stopped_early
        )
        self._run = FedERoundSteps(
            self,
            grid,
            engine,
            timeout,
            train_config or ConfigRecord(),
            evaluate_config or ConfigRecord(),
            result,
            on_round_end,
        )
        try:
            engine.run(self._run, first_round=loop.round + 1)
        finally:
            self._run, self.members.report = None, None
        result.stopped_early = self.loop.stopped_early
        result.stopping = self.stopping_record()
        return self.final_test(grid, result, evaluate_config, timeout)

    def _stopper(self, loop: LoopState) -> EarlyStopping | PartyStopping:
        """The loop's early-stopping tracker(s), from the loop state (fresh or resumed)."""
        if self.per_party:
            names = sorted(info.client_id for info in self.clients.values())
            if loop.parties is None:
                return PartyStopping(self.patience, names)
            return PartyStopping.from_state(self.patience, names, loop.parties)
        return EarlyStopping.from_state(
            self.patience,
            {
                "best_value": loop.best_mrr,
                "best_round": loop.best_round or None,
                "checks_without_improvement": loop.bad_checks,
            },
        )

    def stopping_record(self) -> dict[str, Any]:
        """``final_metrics.json``'s ``stopping``: ``rule``, ``ended_by`` and, per party,
        ``parties`` (client id -> ``best_round``, ``best_valid_mrr``, ``stopped_round``,
        ``best_valid``), as the in-process runners record it (``docs/concepts/stopping.md``)."""
        # their words, written once; heavy (torch, pykeen), loaded by the run long before this
        from client.kge.in_process_rounds import ENDED_BY_BUDGET, ENDED_BY_RULE

        loop = self.loop
        record: dict[str, Any] = {
            "rule": self.stopping,
            "ended_by": ENDED_BY_RULE[self.stopping] if loop.stopped_early else ENDED_BY_BUDGET,
            "parties": None,
        }
        if self.per_party:
            summary = self._stopper(loop).summary()
            record["parties"] = {
                name: {**party, "best_valid": dict(loop.party_best_valid.get(name, {}))}
                for name, party in summary.items()
            }
        return record

    def final_test(
        self, grid: Grid, result: FedEResult, evaluate_config: ConfigRecord | None = None, timeout: float = 3600.0
    ) -> FedEResult:
        """Test every connected client on the best round's rows; clients restore that round's state
        (per party: each client its own best round's rows and state).

        A client that cannot be reached is reported by its absence from ``result.test`` (the
        caller decides; the ServerApp writes ``final_metrics.json`` with ``missing_clients``
        first), so a late failure never loses what was computed.
        """
        nodes = self.members.clients_for_last_step(grid, "final test")
        self.state.use_best()
        result.best_round = self.loop.best_round
        result.best_valid = dict(self.loop.best_valid)
        config = ConfigRecord(
            {**dict(evaluate_config or {}), "server-round": self.loop.best_round, "best-round": self.loop.best_round}
        )
        messages = self._messages(nodes, config, TEST_TYPE, best_keys=("server-round", "best-round"))
        replies = self.members.exchange(grid, messages, timeout, phase="test")
        result.test = evaluation_metrics(self.members, replies, "test")
        missing = sorted({i.client_id for i in self.clients.values()} - set(result.test))
        if missing:
            log(WARNING, "no test metrics from clients %s", missing)
        result.test_overall = weighted_mean(result.test)
        result.arrays = ArrayRecord({"entity-table": Array(self.state.table)})
        log(INFO, "best round %s; test overall %s", self.loop.best_round, format_metrics(result.test_overall))
        dp = dp_record(result.rounds)
        if dp is not None:  # dp = local: what each party's accountant reported last, and the server's bound
            suspect = any(party.get("releases_went_down") for party in dp["parties"].values())
            log(WARNING if suspect else INFO, "dp = local: %s", dp_text(dp))
        return result

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├──> setting: %s, eval every %s rounds, patience %s", self.setting, self.eval_every, self.patience)
        super().summary()
