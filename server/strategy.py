"""FedE as a Flower strategy: per-client entity rows out, per-row mean back in.

:class:`FedEStrategy` extends Flower's :class:`~flwr.serverapp.strategy.FedAvg`. FedAvg sends
one identical payload to every sampled node and averages whole arrays; FedE needs each client
to receive only the rows of the entities it holds (in its local order) and each global row to
be averaged over the clients that hold it. So the four ``configure_*`` / ``aggregate_*`` hooks
are overridden, and ``start`` is overridden because FedE's loop adds what FedAvg's lacks: a
handshake fixing the global vocabulary, validation every ``eval_every`` rounds, early stopping
on the weighted validation MRR, a final test on the best round's state, and the failure
semantics below.

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

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from client.kge.aggregation import (
    AggregationError,
    aggregate_rows,
    build_vocabulary,
    check_rule,
)
from server.grid_io import send_and_receive

__all__ = [
    "CLIENT_INFO_KEY",
    "CONFIG_KEY",
    "ENTITY_ROWS_KEY",
    "METRICS_KEY",
    "RESTORE_TYPE",
    "ClientInfo",
    "FedEResult",
    "FedEStrategy",
    "FederationError",
    "LoopState",
    "RoundReport",
    "UpdateRejectedError",
    "weighted_mean",
]

ENTITY_ROWS_KEY = "entity-rows"
ROWS_ARRAY = "rows"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
CLIENT_INFO_KEY = "client"
HANDSHAKE_TYPE = f"{MessageType.QUERY}.entities"
RESTORE_TYPE = f"{MessageType.QUERY}.restore"
VALID_TYPE = MessageType.EVALUATE
TEST_TYPE = f"{MessageType.EVALUATE}.test"
FINISH_TYPE = f"{MessageType.QUERY}.finish"
#: seconds the server waits for the parties to acknowledge the end of the run
FINISH_TIMEOUT = 15.0
#: Metrics a client reports after evaluation; the overall value is weighted by num_triples.
WEIGHT_KEY = "num_triples"
#: Prefix of the test metrics a client adds to a validation reply when ``track-test`` is on.
TRACK_TEST_PREFIX = "test-"
#: Seconds between two looks at the connected nodes while waiting for clients.
POLL_SECONDS = 1.0


class FederationError(RuntimeError):
    """The federation cannot go on (handshake failed, too few clients, no update survived)."""


class UpdateRejectedError(ValueError):
    """One client's reply cannot be used this round (the message names why); the others go on."""


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of one registered client.

    :param node_id: Flower node id (changes when the client's SuperNode restarts).
    :param client_id: the client's own name (its partition id or data folder name).
    :param global_ids: int64 (n_k,), local entity id -> global entity id.
    :param num_train: / num_valid / num_test: triple counts of its splits.
    """

    node_id: int
    client_id: str
    global_ids: np.ndarray
    num_train: int
    num_valid: int
    num_test: int


@dataclass
class RoundReport:
    """Everything measured in one round (one row of ``metrics.jsonl``).

    Times in seconds. ``overhead_seconds`` is the training phase's wall time minus the slowest
    client's local training and the server's aggregation: message transport, process start-up,
    data and model set-up (framework overhead). Bytes count the entity-row payloads of the
    training phase (``bytes_sent`` / ``bytes_received``) and of validation (``eval_bytes_sent``).
    ``failures`` lists ``"<client>: <why>"`` for every client left out (train phase) and
    ``"<client>: validation: <why>"`` for the validation phase. ``finished_at`` is the wall
    clock (``time.time()``) when the round ended.

    With ``track-test`` clients also report test metrics (``test-`` prefixed) in validation
    replies: they are kept OUT of ``valid`` / ``valid_overall`` (which alone drive the best
    round and early stopping) and go to ``test`` (per client, prefix removed) and
    ``test_overall`` (weighted by each client's test ``num_triples``).
    """

    round: int
    seconds: float = 0.0
    train_phase_seconds: float = 0.0
    aggregation_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    overhead_seconds: float = 0.0
    bytes_sent: int = 0
    eval_bytes_sent: int = 0
    server_peak_rss_mb: float = 0.0
    bytes_received: int = 0
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    valid: dict[str, dict[str, float]] | None = None
    valid_overall: dict[str, float] | None = None
    test: dict[str, dict[str, float]] | None = None
    test_overall: dict[str, float] | None = None
    best_round: int = 0
    finished_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``valid`` keys only when this round was validated)."""
        row: dict[str, Any] = {
            "round": self.round,
            "seconds": round(self.seconds, 4),
            "train_phase_seconds": round(self.train_phase_seconds, 4),
            "aggregation_seconds": round(self.aggregation_seconds, 6),
            "evaluation_seconds": round(self.evaluation_seconds, 4),
            "overhead_seconds": round(self.overhead_seconds, 4),
            "bytes_sent": self.bytes_sent,
            "eval_bytes_sent": self.eval_bytes_sent,
            "bytes_received": self.bytes_received,
            "train": self.train,
            "best_round": self.best_round,
            "server_peak_rss_mb": round(self.server_peak_rss_mb, 1),
            "finished_at": round(self.finished_at, 3),
        }
        if self.failures:
            row["failures"] = self.failures
        if self.valid is not None:
            row["valid"] = self.valid
            row["valid_overall"] = self.valid_overall
        if self.test is not None:
            row["test"] = self.test
            row["test_overall"] = self.test_overall
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> RoundReport:
        """Rebuild a report from :meth:`as_dict`'s output (a resumed run's earlier rounds)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in row.items() if key in names})


@dataclass
class FedEResult(Result):
    """Flower's :class:`Result` plus FedE's outcome.

    :param best_round: the validated round with the highest overall MRR.
    :param best_valid: its overall validation metrics.
    :param test: per-client test metrics (client id -> metrics), from the best round's state.
    :param test_overall: test metrics weighted by each client's test size.
    :param stopped_early: whether patience ran out before ``num_rounds``.
    :param rounds: the per-round reports (a resumed run's earlier rounds included).
    """

    best_round: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    test_overall: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    rounds: list[RoundReport] = field(default_factory=list)


@dataclass
class LoopState:
    """FedE's loop state after the last completed round: what a checkpoint must hold.

    The arrays (global table, best table, per-client rows) live on the strategy; this is the
    rest. ``best_mrr`` is ``-inf`` before the first validation.

    :param round: the last completed round (0: none).
    :param best_mrr: the best overall validation MRR so far.
    :param bad_checks: validations since the last improvement (early stopping).
    :param best_round: the round of ``best_mrr`` (0: none yet).
    :param best_valid: the overall validation metrics of ``best_round``.
    :param stopped_early: patience ran out at ``round``.
    :param federation_id: random id of this federation (kept across a resume): clients only
        restore private checkpoints written for the same id.
    :param reports: :meth:`RoundReport.as_dict` of every completed round.
    """

    round: int = 0
    best_mrr: float = -math.inf
    bad_checks: int = 0
    best_round: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    federation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    reports: list[dict[str, Any]] = field(default_factory=list)


def weighted_mean(per_client: Mapping[str, Mapping[str, float]], weight_key: str = WEIGHT_KEY) -> dict[str, float]:
    """Average every metric over clients weighted by ``weight_key``; the weight is summed.

    Clients are visited in sorted id order, so the float sums do not depend on reply order.

    :param per_client: client id -> metrics (each holding ``weight_key``).
    """
    ordered = [per_client[name] for name in sorted(per_client)]
    total = float(sum(m[weight_key] for m in ordered))
    if total <= 0:
        return {}
    keys = sorted({k for m in ordered for k in m if k != weight_key})
    overall = {key: float(sum(m[key] * m[weight_key] for m in ordered if key in m) / total) for key in keys}
    overall[weight_key] = total
    return overall


def split_tracked_test(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``(validation metrics, test metrics with the "test-" prefix removed)`` of one reply."""
    valid = {k: v for k, v in metrics.items() if not k.startswith(TRACK_TEST_PREFIX)}
    test = {k.removeprefix(TRACK_TEST_PREFIX): v for k, v in metrics.items() if k.startswith(TRACK_TEST_PREFIX)}
    return valid, test


#: Longest silence of a long exchange's progress line (seconds).
PROGRESS_SECONDS = 15.0


class _ProgressLine:
    """``on_poll`` of :func:`server.grid_io.send_and_receive`: one log line per reply and at
    least every :data:`PROGRESS_SECONDS` s, with an estimate of the time left.

    The estimate assumes the clients still working need as long as the ones done took on
    average (they run side by side as far as the machines allow); before the first reply there
    is none.
    """

    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.done = 0
        self.last = 0.0

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        if done == self.done and elapsed - self.last < PROGRESS_SECONDS:
            return
        self.done, self.last = done, elapsed
        left = "" if not done or done == total else f", about {elapsed / done * (total - done):.0f} s left"
        log(INFO, "%s: %s of %s clients done after %.0f s%s", self.phase, done, total, elapsed, left)


class FedEStrategy(FedAvg):
    """FedE (per-row mean of shared entity embeddings) and its Isolation baseline.

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
    ) -> None:
        if setting not in ("fede", "isolation"):
            raise ValueError(f"FedEStrategy runs 'fede' or 'isolation', got {setting!r}")
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
        self.min_clients_timeout = float(min_clients_timeout)
        self.eval_every = eval_every
        self.patience = patience
        self._rng = np.random.default_rng(seed)
        self.clients: dict[int, ClientInfo] = {}
        self.vocabulary: list[str] = []
        self.entity_dim: int | None = None
        self.table: np.ndarray | None = None
        # Isolation keeps each client's own rows; FedE derives them from the table.
        self.client_rows: dict[int, np.ndarray] = {}
        self.best_table: np.ndarray | None = None
        self.best_rows: dict[int, np.ndarray] = {}
        self.loop = LoopState()
        self._report: RoundReport | None = None
        self._last_eval: dict[str, dict[str, float]] = {}
        self._last_test: dict[str, dict[str, float]] = {}
        #: nodes whose handshake was refused (unknown client id, other labels): never asked again
        self._refused_nodes: set[int] = set()
        self._exchange_timeout = 3600.0
        # where failures outside a KGE round go (see collecting_failures)
        self._failure_sink: list[str] | None = None

    def client_name(self, node_id: int) -> str:
        """The client id of a registered node, else ``"node <id>"``."""
        info = self.clients.get(node_id)
        return info.client_id if info is not None else f"node {node_id}"

    def record_failure(self, name: str, reason: str, phase: str = "") -> str:
        """Log and record one client's failure in the current round's report (else in the list
        of :meth:`collecting_failures`); return the text."""
        text = f"{name}: {phase + ': ' if phase else ''}{reason}"
        log(WARNING, "client %s", text)
        sink = self._report.failures if self._report is not None else self._failure_sink
        if sink is not None:
            sink.append(text)
        return text

    @contextlib.contextmanager
    def collecting_failures(self) -> Iterator[list[str]]:
        """A block whose failures (:meth:`exchange`, :meth:`record_failure`) go to the list it
        yields: a step outside the KGE rounds (a SimSkip round, the downstream evaluation)."""
        failures: list[str] = []
        self._failure_sink = failures
        try:
            yield failures
        finally:
            self._failure_sink = None

    # ------------------------------------------------------------------ exchange
    def exchange(
        self, grid: Grid, messages: Sequence[Message], timeout: float, phase: str = "", progress: bool = False
    ) -> list[tuple[int, Message]]:
        """Send ``messages``, wait at most ``timeout`` s, return ``(node id, reply)`` pairs.

        A reply is attributed to the node its *request* went to (Flower's own "node
        unavailable" replies come from the SuperLink's node id); replies to messages of another
        exchange, second replies from one node and replies from nodes that got no message are
        dropped (logged). A node without a reply is recorded as a ``timeout`` failure.

        Flower's Grid pulls replies by the ids of this exchange's messages only, so a straggler's
        late reply stays on the SuperLink (``tests/test_straggler_deployment.py``); the checks
        here guard against grids that do not (and are unit-tested with one).

        With ``progress`` (a long step: the downstream evaluation) a line says how many clients
        have replied, the elapsed time and an estimate of what is left, whenever a reply comes and
        at least every :data:`PROGRESS_SECONDS` s (:class:`_ProgressLine`).
        """
        messages = list(messages)
        if not messages:
            return []
        sent_to = [m.metadata.dst_node_id for m in messages]
        replies = send_and_receive(grid, messages, timeout, on_poll=_ProgressLine(phase) if progress else None)
        # The grid sets each message's id when it pushes it (in place); a fake grid may not.
        by_message_id = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        attributed: dict[int, Message] = {}
        for reply in replies:
            reply_to = reply.metadata.reply_to_message_id
            if by_message_id and reply_to:
                node = by_message_id.get(reply_to)
                if node is None:
                    log(WARNING, "dropped a reply to a message of another round (from node %s)",
                        reply.metadata.src_node_id)
                    continue
            else:
                node = reply.metadata.src_node_id
            if node not in sent_to:
                self.record_failure(f"node {node}", "reply from a node that got no message", phase)
                continue
            if node in attributed:
                log(WARNING, "dropped a second reply of client %s", self.client_name(node))
                continue
            attributed[node] = reply
        for node in sent_to:
            if node not in attributed:
                self.record_failure(self.client_name(node), f"timeout (no reply within {timeout:g} s)", phase)
        return sorted(attributed.items(), key=lambda pair: (self.client_name(pair[0]), pair[0]))

    # ------------------------------------------------------------------ end of the run
    def finish(self, grid: Grid, status: str, reason: str = "", run_dir: str = "",
               timeout: float = FINISH_TIMEOUT) -> list[int]:
        """Tell every registered party that this run is over (``query.finish``).

        A party writes ``federation.json`` and its ``simskip-client`` exits 0 on ``completed``
        (it stays up on ``failed``, for a resumed run). Best effort: a party that does not
        answer within ``timeout`` s is only logged; nothing is recorded as a round failure.

        :param status: ``completed`` or ``failed``.
        :param reason: one line for a failed run.
        :returns: the node ids that acknowledged.
        """
        config = {"status": status, "reason": reason, "federation-id": self.loop.federation_id, "run-dir": run_dir}
        messages = [Message(content=RecordDict({CONFIG_KEY: ConfigRecord(dict(config))}),
                            message_type=FINISH_TYPE, dst_node_id=node_id) for node_id in sorted(self.clients)]
        if not messages:
            return []
        with self.collecting_failures() as failures:  # not a round's failures: only logged
            try:
                replies = self.exchange(grid, messages, timeout, phase="finish")
            except Exception as err:  # noqa: BLE001 - the run's result is already on disk; only the notice is lost
                log(WARNING, "could not tell the parties that the run %s: %s", status, err)
                return []
        if failures:
            log(WARNING, "the end of the run was not acknowledged: %s", failures)
        return sorted(node for node, reply in replies if not reply.has_error())

    # ------------------------------------------------------------------ handshake
    def _handshake_messages(self, node_ids: Iterable[int]) -> list[Message]:
        return [
            Message(content=RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 0})}),
                    message_type=HANDSHAKE_TYPE, dst_node_id=node_id)
            for node_id in node_ids
        ]

    def configure_handshake(self, grid: Grid, wait_timeout: float | None = None) -> list[Message]:
        """Wait for ``min_clients`` nodes (at most ``wait_timeout`` s) and ask each for its labels.

        :param wait_timeout: default ``min_clients_timeout``.
        :raises FederationError: when fewer than ``min_clients`` nodes connected in time.
        """
        wait_timeout = self.min_clients_timeout if wait_timeout is None else wait_timeout
        started = time.monotonic()
        last_logged = -1
        while len(connected := sorted(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() - started > wait_timeout:
                raise FederationError(
                    f"handshake: {len(connected)} of {self.min_available_nodes} clients connected "
                    f"after {wait_timeout:g} s (min-clients-timeout)"
                )
            if len(connected) != last_logged:
                log(INFO, "waiting for clients: %s of %s connected", len(connected), self.min_available_nodes)
                last_logged = len(connected)
            time.sleep(POLL_SECONDS)
        return self._handshake_messages(connected)

    def register_clients(self, replies: Iterable[Message]) -> list[str]:
        """Build the global vocabulary from the handshake replies.

        :returns: the global entity labels (sorted union; global id = position).
        :raises FederationError: when a client failed, two share an id, or entity widths differ.
        """
        infos, labels = [], []
        for msg in replies:
            if msg.has_error():
                raise FederationError(
                    f"handshake: node {msg.metadata.src_node_id} failed: {msg.error.reason}"
                )
            record = msg.content.config_records[CLIENT_INFO_KEY]
            infos.append((msg.metadata.src_node_id, record))
            labels.append(list(record["entity-labels"]))
        if not infos:
            raise FederationError("handshake: no client replied")
        client_ids = [str(record["client-id"]) for _, record in infos]
        if len(set(client_ids)) != len(client_ids):
            raise FederationError(f"handshake: duplicate client ids {sorted(client_ids)}")
        widths = {int(record["entity-dim"]) for _, record in infos}
        if len(widths) != 1:
            raise FederationError(f"handshake: clients disagree on the entity width: {sorted(widths)}")
        try:
            vocabulary, index_arrays = build_vocabulary(labels)
        except AggregationError as err:
            raise FederationError(f"handshake: {err}") from err
        self.vocabulary = vocabulary
        self.entity_dim = widths.pop()
        self.clients = {
            node_id: ClientInfo(
                node_id=node_id,
                client_id=str(record["client-id"]),
                global_ids=ids,
                num_train=int(record["num-train"]),
                num_valid=int(record["num-valid"]),
                num_test=int(record["num-test"]),
            )
            for (node_id, record), ids in zip(infos, index_arrays, strict=True)
        }
        return vocabulary

    def handshake(self, grid: Grid, timeout: float = 3600.0) -> list[str]:
        """Run the handshake round trip; see :meth:`register_clients`.

        :param timeout: seconds to wait for the replies (waiting for ``min_clients`` to
            connect is bounded by ``min_clients_timeout``).
        """
        self._exchange_timeout = timeout
        replies = send_and_receive(grid, self.configure_handshake(grid), timeout)
        return self.register_clients(replies)

    # ------------------------------------------------------------------ rejoin
    def admit(self, grid: Grid, node_ids: Sequence[int], timeout: float) -> list[int]:
        """Ask unregistered nodes for their labels; re-map those that are a known client.

        A restarted SuperNode gets a new node id: it is accepted as client ``c`` when it says
        it is ``c`` and its labels (in its local order) and entity width are exactly what
        ``c`` registered. Other nodes are refused (logged) and not asked again.

        :returns: the newly admitted node ids.
        """
        by_client = {info.client_id: info for info in self.clients.values()}
        admitted = []
        for node, reply in self.exchange(grid, self._handshake_messages(node_ids), timeout, phase="rejoin"):
            if reply.has_error():
                log(WARNING, "rejoin: node %s failed its handshake: %s", node, reply.error.reason)
                continue
            record = reply.content.config_records.get(CLIENT_INFO_KEY)
            known = by_client.get(str(record["client-id"])) if record is not None else None
            reason = None
            if known is None:
                reason = "it is no client of this federation" if record is not None else "no client record"
            elif int(record["entity-dim"]) != self.entity_dim:
                reason = f"entity width {int(record['entity-dim'])} != {self.entity_dim}"
            elif list(record["entity-labels"]) != [self.vocabulary[i] for i in known.global_ids]:
                reason = f"its entity labels differ from those client {known.client_id} registered"
            if reason is not None:
                log(WARNING, "rejoin: refused node %s: %s", node, reason)
                self._refused_nodes.add(node)
                continue
            del self.clients[known.node_id]
            self.clients[node] = ClientInfo(node, known.client_id, known.global_ids, known.num_train,
                                            known.num_valid, known.num_test)
            for rows in (self.client_rows, self.best_rows):
                if known.node_id in rows:
                    rows[node] = rows.pop(known.node_id)
            by_client[known.client_id] = self.clients[node]
            log(INFO, "rejoin: client %s is back as node %s (was node %s)", known.client_id, node, known.node_id)
            admitted.append(node)
        return admitted

    def restore_clients(self, grid: Grid, node_ids: Sequence[int], timeout: float, *, strict: bool) -> dict[str, int]:
        """Tell clients to restore their private state as of ``loop.round`` (``query.restore``).

        :param strict: resume (a client without its checkpoint fails the run) rather than a
            rejoin (the client starts afresh, logged).
        :returns: client id -> round restored (-1: started afresh).
        :raises FederationError: in strict mode, when a client failed or did not answer.
        """
        config = ConfigRecord({"resume-round": self.loop.round, "best-round": self.loop.best_round,
                               "federation-id": self.loop.federation_id, "strict": strict})
        messages = [Message(content=RecordDict({CONFIG_KEY: ConfigRecord(dict(config))}),
                            message_type=RESTORE_TYPE, dst_node_id=node) for node in node_ids]
        restored, failed, answered = {}, [], set()
        replies = self.exchange(grid, messages, timeout, phase="restore")
        for node, reply in replies:
            name = self.client_name(node)
            answered.add(name)
            if reply.has_error():
                failed.append(f"{name}: {reply.error.reason}")
                continue
            try:
                restored[name] = int(reply.content.metric_records[METRICS_KEY]["restored-round"])
            except (KeyError, TypeError, ValueError) as err:  # a malformed reply fails that client only
                failed.append(f"{name}: malformed restore reply ({type(err).__name__}: {err})")
                continue
            log(INFO, "client %s restored its private state of round %s", name, restored[name])
        missing = sorted({self.client_name(n) for n in node_ids} - answered)
        failed += [f"{name}: no reply" for name in missing]
        if failed:
            text = f"restoring the clients' state of round {self.loop.round} failed: {failed}"
            if strict:
                raise FederationError(text)
            log(WARNING, text)
        return restored

    def await_clients(self, grid: Grid, context: str) -> list[int]:
        """Admit rejoined nodes and wait until ``min_clients`` registered clients are connected.

        :param context: what is waiting (for messages), e.g. ``"round 3"``.
        :returns: the connected registered node ids, sorted.
        :raises FederationError: naming how many of how many after ``min_clients_timeout`` s.
        """
        started = time.monotonic()
        last_logged = None
        asked: set[int] = set()  # a node whose handshake failed is asked again next round, not in a loop
        while True:
            connected = set(grid.get_node_ids())
            newcomers = sorted(connected - set(self.clients) - self._refused_nodes - asked)
            if newcomers:
                asked.update(newcomers)
                admitted = self.admit(grid, newcomers, self._exchange_timeout)
                if admitted and self.loop.round > 0:
                    self.restore_clients(grid, admitted, self._exchange_timeout, strict=False)
                continue  # the admitted nodes count now; look again
            live = sorted(n for n in self.clients if n in connected)
            if len(live) >= self.min_available_nodes:
                return live
            waited = time.monotonic() - started
            if waited > self.min_clients_timeout:
                missing = sorted(info.client_id for n, info in self.clients.items() if n not in connected)
                raise FederationError(
                    f"{context}: {len(live)} of {self.min_available_nodes} required clients connected after "
                    f"waiting {waited:.0f} s (min-clients-timeout {self.min_clients_timeout:g} s); "
                    f"not connected: {missing}"
                )
            if last_logged != len(live):
                log(WARNING, "%s: %s of %s required clients connected; waiting up to %g s",
                    context, len(live), self.min_available_nodes, self.min_clients_timeout)
                last_logged = len(live)
            time.sleep(POLL_SECONDS)

    def clients_for_last_step(self, grid: Grid, context: str) -> list[int]:
        """:meth:`await_clients`, but when ``min_clients`` do not connect in time, the registered
        clients that are connected (a last step such as the test reports the missing ones
        rather than losing the others' results)."""
        try:
            return self.await_clients(grid, context)
        except FederationError as err:
            log(WARNING, "%s; going on with the clients that are connected", err)
            connected = set(grid.get_node_ids())
            return sorted(n for n in self.clients if n in connected)

    # ------------------------------------------------------------------ table
    def set_table(self, table: np.ndarray) -> None:
        """Set the global entity table, float32 ``(len(vocabulary), entity_dim)``."""
        expected = (len(self.vocabulary), self.entity_dim)
        if table.shape != expected:
            raise FederationError(f"entity table has shape {table.shape}, expected {expected}")
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.client_rows = {node: self.table[info.global_ids] for node, info in self.clients.items()}

    def rows_for(self, node_id: int) -> np.ndarray:
        """The rows node ``node_id`` gets: float32 ``(n_k, entity_dim)`` in its local order."""
        if self.setting == "fede":
            return self.table[self.clients[node_id].global_ids]
        return self.client_rows[node_id]

    def use_best(self) -> None:
        """Make the best round's table / rows current (for the final test and the SimSkip phase)."""
        if self.best_table is not None:
            self.table = self.best_table
        if self.best_rows:
            self.client_rows = dict(self.best_rows)

    # ------------------------------------------------------------------ messages
    def _messages(self, node_ids: Iterable[int], config: ConfigRecord, message_type: str) -> list[Message]:
        messages = []
        for node_id in node_ids:
            rows = self.rows_for(node_id).astype(self.transfer_dtype, copy=False)
            if self._report is not None and message_type == MessageType.TRAIN:
                self._report.bytes_sent += rows.nbytes
            elif self._report is not None:
                self._report.eval_bytes_sent += rows.nbytes
            content = RecordDict({
                ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(np.ascontiguousarray(rows))}),
                CONFIG_KEY: ConfigRecord(dict(config)),
            })
            messages.append(Message(content=content, message_type=message_type, dst_node_id=node_id))
        return messages

    def sample_train_nodes(self, grid: Grid) -> list[int]:
        """Registered and still connected nodes, a ``fraction_train`` sample of them."""
        connected = set(grid.get_node_ids())
        nodes = sorted(n for n in self.clients if n in connected)
        if not nodes:
            raise FederationError("no registered client is connected")
        size = max(1, round(len(nodes) * self.fraction_train))
        if size < len(nodes):
            # sample client ids, not node ids: a node id changes when a client rejoins
            names = sorted(self.clients[n].client_id for n in nodes)
            chosen = set(self._rng.choice(names, size=size, replace=False).tolist())
            nodes = sorted(n for n in nodes if self.clients[n].client_id in chosen)
        return nodes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``train`` message per sampled client, carrying only its rows."""
        config = ConfigRecord({**dict(config), "server-round": server_round, "best-round": self.loop.best_round,
                               "federation-id": self.loop.federation_id})
        nodes = self.sample_train_nodes(grid)
        log(INFO, "configure_train: round %s, %s of %s clients", server_round, len(nodes), len(self.clients))
        return self._messages(nodes, config, MessageType.TRAIN)

    def check_update(self, node_id: int, msg: Message) -> tuple[np.ndarray, dict[str, float]]:
        """One client's training reply, checked: ``(float32 rows (n_k, entity_dim), metrics)``.

        :raises UpdateRejectedError: error reply, unregistered node, missing record, rows of
            another shape (ids not that client's), non-float dtype, or NaN / Inf.
        """
        if msg.has_error():
            raise UpdateRejectedError(msg.error.reason)
        info = self.clients.get(node_id)
        if info is None:
            raise UpdateRejectedError("reply from an unregistered node")
        record = msg.content.array_records.get(ENTITY_ROWS_KEY)
        if record is None or ROWS_ARRAY not in record:
            raise UpdateRejectedError(f"reply lacks {ENTITY_ROWS_KEY}/{ROWS_ARRAY}")
        metrics = msg.content.metric_records.get(METRICS_KEY)
        if metrics is None:
            raise UpdateRejectedError(f"reply lacks the {METRICS_KEY!r} record")
        try:
            rows = record[ROWS_ARRAY].numpy()
        except Exception as err:  # noqa: BLE001 - any undecodable payload is this client's fault
            raise UpdateRejectedError(f"rows cannot be decoded: {err}") from None
        expected = (info.global_ids.shape[0], self.entity_dim)
        if rows.shape != expected:
            raise UpdateRejectedError(
                f"rows of shape {rows.shape}, expected {expected} (its {expected[0]} entities)"
            )
        if not np.issubdtype(rows.dtype, np.floating):
            raise UpdateRejectedError(f"rows of dtype {rows.dtype}, expected a float dtype")
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            raise UpdateRejectedError(f"{int((~finite).sum())} rows hold NaN or Inf (first: local row "
                                      f"{int(np.flatnonzero(~finite)[0])})")
        values = {k: float(v) for k, v in metrics.items()}
        values.setdefault("num-entities", float(expected[0]))
        return rows, values

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per-row mean (FedE) or keep-own-rows (Isolation) of the clients' returned rows.

        Replies are attributed by their source node; :meth:`start` attributes them by request
        (see :meth:`exchange`) and calls :meth:`aggregate_attributed`.
        """
        pairs = sorted(((m.metadata.src_node_id, m) for m in replies), key=lambda p: (self.client_name(p[0]), p[0]))
        return self.aggregate_attributed(server_round, pairs)

    def aggregate_attributed(
        self, server_round: int, replies: Sequence[tuple[int, Message]]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each client's update, drop the bad ones, aggregate the rest in client-id order.

        :returns: ``(None, metrics)``: the table stays on the strategy (``self.table``),
            metrics are the train metrics weighted by ``num-entities``.
        :raises FederationError: when no update survived.
        """
        started = time.perf_counter()
        updates, per_client, rejected = [], {}, []
        for node_id, msg in sorted(replies, key=lambda p: (self.client_name(p[0]), p[0])):
            name = self.client_name(node_id)
            try:
                rows, metrics = self.check_update(node_id, msg)
            except UpdateRejectedError as err:
                rejected.append(self.record_failure(name, f"update rejected: {err}" if not msg.has_error() else str(err)))
                continue
            if self._report is not None:
                self._report.bytes_received += rows.nbytes
            updates.append((node_id, self.clients[node_id].global_ids, rows.astype(np.float32, copy=False)))
            per_client[name] = metrics
        if not updates:
            failures = self._report.failures if self._report is not None else rejected
            raise FederationError(f"round {server_round}: no client update survived; failures: {failures}")
        if self.setting == "fede":
            try:  # every update was checked above: an error here is a bug of ours, not a client's
                self.table = aggregate_rows(self.table, [(ids, rows) for _, ids, rows in updates],
                                            self.aggregation, self.aggregation_trim)
            except AggregationError as err:
                raise FederationError(f"round {server_round}: {err}") from err
        else:
            for node_id, _, rows in updates:
                self.client_rows[node_id] = rows.astype(np.float32, copy=True)
        if self._report is not None:
            self._report.aggregation_seconds += time.perf_counter() - started
            self._report.train.update(per_client)
        metrics = weighted_mean(per_client, "num-entities")
        return None, MetricRecord(metrics) if metrics else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One validation message per connected registered client, with its current rows."""
        config = ConfigRecord({**dict(config), "server-round": server_round, "best-round": self.loop.best_round})
        connected = set(grid.get_node_ids())
        return self._messages(sorted(n for n in self.clients if n in connected), config, VALID_TYPE)

    def _metrics_attributed(self, replies: Sequence[tuple[int, Message]], phase: str) -> dict[str, dict[str, float]]:
        per_client = {}
        for node_id, msg in replies:
            name = self.client_name(node_id)
            if msg.has_error():
                self.record_failure(name, msg.error.reason, phase)
                continue
            record = msg.content.metric_records.get(METRICS_KEY)
            if node_id not in self.clients or record is None or WEIGHT_KEY not in record:
                self.record_failure(name, "reply without metrics (or from an unregistered node)", phase)
                continue
            per_client[name] = {k: float(v) for k, v in record.items()}
        return dict(sorted(per_client.items()))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Overall validation metrics weighted by each client's number of triples."""
        return self._aggregate_evaluate_attributed([(m.metadata.src_node_id, m) for m in replies])

    def _aggregate_evaluate_attributed(self, replies: Sequence[tuple[int, Message]]) -> MetricRecord | None:
        per_client = self._metrics_attributed(replies, "validation")
        split = {name: split_tracked_test(m) for name, m in per_client.items()}
        self._last_eval = {name: valid for name, (valid, _) in split.items()}
        self._last_test = {name: test for name, (_, test) in split.items() if test}
        overall = weighted_mean(self._last_eval)
        return MetricRecord(overall) if overall else None

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The loop's arrays: ``table``, ``best-table`` and (isolation) ``rows/<client>``,
        ``best-rows/<client>``; keyed by client id since node ids change across restarts."""
        arrays = {"table": self.table, "best-table": self.best_table if self.best_table is not None else self.table}
        if self.setting == "isolation":
            for node, info in self.clients.items():
                arrays[f"rows/{info.client_id}"] = self.client_rows[node]
                arrays[f"best-rows/{info.client_id}"] = self.best_rows.get(node, self.client_rows[node])
        return {name: np.ascontiguousarray(array) for name, array in arrays.items()}

    def checkpoint_state(self) -> dict[str, Any]:
        """The loop's JSON state: :class:`LoopState`'s fields, the sampling RNG, setting, clients."""
        state = {f.name: getattr(self.loop, f.name) for f in fields(LoopState)}
        state.update({
            "phase": "fede",
            "setting": self.setting,
            "clients": sorted(info.client_id for info in self.clients.values()),
            "rng": self._rng.bit_generator.state,
        })
        return state

    def restore_checkpoint(self, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        """Load what :meth:`checkpoint_arrays` / :meth:`checkpoint_state` returned (after the handshake).

        :raises FederationError: when the checkpoint is of another setting, other clients or
            another table shape.
        """
        if not self.clients:
            raise FederationError("restore_checkpoint() called before handshake()")
        if state.get("setting") != self.setting:
            raise FederationError(f"checkpoint is of setting {state.get('setting')!r}, this run is {self.setting!r}")
        names = sorted(info.client_id for info in self.clients.values())
        if list(state.get("clients", [])) != names:
            raise FederationError(f"checkpoint holds clients {state.get('clients')}, connected are {names}")
        self.set_table(np.asarray(arrays["table"]))
        self.best_table = np.ascontiguousarray(arrays["best-table"], dtype=np.float32)
        if self.best_table.shape != self.table.shape:
            raise FederationError(f"checkpoint best-table has shape {self.best_table.shape}, expected {self.table.shape}")
        self.best_rows = {}
        if self.setting == "isolation":
            for node, info in self.clients.items():
                for prefix, target in (("rows", self.client_rows), ("best-rows", self.best_rows)):
                    rows = np.ascontiguousarray(arrays[f"{prefix}/{info.client_id}"], dtype=np.float32)
                    if rows.shape != (info.global_ids.shape[0], self.entity_dim):
                        raise FederationError(f"checkpoint {prefix}/{info.client_id} has shape {rows.shape}")
                    target[node] = rows
        self._rng.bit_generator.state = dict(state["rng"])
        values = {f.name: state[f.name] for f in fields(LoopState) if f.name in state}
        if values.get("best_mrr") is None:
            values["best_mrr"] = -math.inf
        self.loop = LoopState(**values)

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
        state is updated (so :meth:`checkpoint_state` there is that round's state).

        :param resume_from: ``(arrays, state)`` of a checkpoint: the loop continues after its
            round (the clients restore their private state of that round first);
            ``initial_arrays`` is ignored then.
        :raises FederationError: too few clients for ``min_clients_timeout``, a round in which
            no update survived, or (resume) a client that cannot restore its state.
        """
        if not self.clients:
            raise FederationError("start() called before handshake()")
        self._exchange_timeout = timeout
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = FedEResult()
        if resume_from is None:
            self.set_table(initial_arrays["entity-table"].numpy())
            self.best_table, self.best_rows = self.table.copy(), dict(self.client_rows)
            self.loop = LoopState()
        else:
            self.restore_checkpoint(*resume_from)
            log(INFO, "resuming after round %s (best round %s)", self.loop.round, self.loop.best_round)
            self.restore_clients(grid, sorted(self.clients), timeout, strict=True)
            result.rounds = [RoundReport.from_dict(row) for row in self.loop.reports]
            for report in result.rounds:
                if report.valid_overall:
                    result.evaluate_metrics_clientapp[report.round] = MetricRecord(report.valid_overall)

        for current_round in range(self.loop.round + 1, num_rounds + 1):
            if self.loop.stopped_early:
                break
            result.rounds.append(self._run_round(grid, current_round, num_rounds, timeout, train_config,
                                                 evaluate_config, result))
            if on_round_end is not None:
                on_round_end(result.rounds[-1])
            if self.loop.stopped_early:
                log(INFO, "early stopping after round %s: %s checks without a better MRR",
                    current_round, self.loop.bad_checks)
        result.stopped_early = self.loop.stopped_early
        return self.final_test(grid, result, evaluate_config, timeout)

    def _run_round(
        self, grid: Grid, current_round: int, num_rounds: int, timeout: float,
        train_config: ConfigRecord, evaluate_config: ConfigRecord, result: FedEResult,
    ) -> RoundReport:
        """One round: wait for clients, train + aggregate, maybe validate; updates ``self.loop``."""
        started = time.perf_counter()
        self._report = report = RoundReport(round=current_round)
        try:
            self.await_clients(grid, f"round {current_round}")
            train_started = time.perf_counter()
            messages = list(self.configure_train(current_round, ArrayRecord(), train_config, grid))
            replies = self.exchange(grid, messages, timeout)
            del messages
            _, train_metrics = self.aggregate_attributed(current_round, replies)
            del replies
            report.train_phase_seconds = time.perf_counter() - train_started
            slowest = max((m.get("train-seconds", 0.0) for m in report.train.values()), default=0.0)
            report.overhead_seconds = max(0.0, report.train_phase_seconds - slowest - report.aggregation_seconds)
            if train_metrics is not None:
                result.train_metrics_clientapp[current_round] = train_metrics

            stop = False
            if current_round % self.eval_every == 0 or current_round == num_rounds:
                eval_started = time.perf_counter()
                messages = list(self.configure_evaluate(current_round, ArrayRecord(), evaluate_config, grid))
                overall = self._aggregate_evaluate_attributed(
                    self.exchange(grid, messages, timeout, phase="validation"))
                del messages
                report.evaluation_seconds = time.perf_counter() - eval_started
                report.valid = self._last_eval
                report.valid_overall = dict(overall) if overall is not None else {}
                if self._last_test:
                    report.test = self._last_test
                    report.test_overall = weighted_mean(self._last_test)
                if overall is not None:
                    result.evaluate_metrics_clientapp[current_round] = overall
                mrr = float(report.valid_overall.get("mrr", -math.inf))
                if mrr > self.loop.best_mrr:
                    self.loop.best_mrr, self.loop.bad_checks = mrr, 0
                    self.loop.best_round = current_round
                    self.loop.best_valid = dict(report.valid_overall)
                    self.best_table = self.table.copy()
                    self.best_rows = {n: r.copy() for n, r in self.client_rows.items()}
                else:
                    self.loop.bad_checks += 1
                    stop = self.loop.bad_checks >= self.patience
            report.best_round = self.loop.best_round
            report.server_peak_rss_mb = _peak_rss_mb()
            report.seconds = time.perf_counter() - started
            report.finished_at = time.time()
            self._log_round(report, num_rounds)
            self.loop.round, self.loop.stopped_early = current_round, stop
            self.loop.reports.append(report.as_dict())
            return report
        finally:
            self._report = None

    def final_test(
        self, grid: Grid, result: FedEResult, evaluate_config: ConfigRecord | None = None, timeout: float = 3600.0
    ) -> FedEResult:
        """Test every connected client on the best round's rows; clients restore that round's state.

        A client that cannot be reached is reported by its absence from ``result.test`` (the
        caller decides; the ServerApp writes ``final_metrics.json`` with ``missing_clients``
        first), so a late failure never loses what was computed.
        """
        nodes = self.clients_for_last_step(grid, "final test")
        self.use_best()
        result.best_round = self.loop.best_round
        result.best_valid = dict(self.loop.best_valid)
        config = ConfigRecord({**dict(evaluate_config or {}), "server-round": self.loop.best_round,
                               "best-round": self.loop.best_round})
        replies = self.exchange(grid, self._messages(nodes, config, TEST_TYPE), timeout, phase="test")
        result.test = self._metrics_attributed(replies, "test")
        missing = sorted({i.client_id for i in self.clients.values()} - set(result.test))
        if missing:
            log(WARNING, "no test metrics from clients %s", missing)
        result.test_overall = weighted_mean(result.test)
        result.arrays = ArrayRecord({"entity-table": Array(self.table)})
        log(INFO, "best round %s; test overall %s", self.loop.best_round, _fmt(result.test_overall))
        return result

    def _log_round(self, report: RoundReport, num_rounds: int) -> None:
        losses = " ".join(f"{cid}:{m.get('train-loss', float('nan')):.4f}" for cid, m in sorted(report.train.items()))
        line = f"[round {report.round}/{num_rounds}] {report.seconds:.1f}s loss {losses}"
        if report.valid_overall:
            line += f" | valid {_fmt(report.valid_overall)} (best round {report.best_round})"
        if report.failures:
            line += f" | left out: {report.failures}"
        log(INFO, line)

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├──> setting: %s, eval every %s rounds, patience %s", self.setting, self.eval_every, self.patience)
        super().summary()


def _peak_rss_mb() -> float:
    """This (ServerApp) process's peak resident set size in MiB (Linux: ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k != WEIGHT_KEY)
