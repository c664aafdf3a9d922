"""FedE as a Flower strategy: per-client entity rows out, per-row mean back in.

:class:`FedEStrategy` extends Flower's :class:`~flwr.serverapp.strategy.FedAvg`. FedAvg sends
one identical payload to every sampled node and averages whole arrays; FedE needs each client
to receive only the rows of the entities it holds (in its local order) and each global row to
be averaged over the clients that hold it. So the four ``configure_*`` / ``aggregate_*`` hooks
are overridden, and ``start`` is overridden because FedE's loop adds what FedAvg's lacks: a
handshake fixing the global vocabulary, validation every ``eval_every`` rounds, early stopping
on the weighted validation MRR, and a final test on the best round's state.

Message protocol (``message_type`` = category[.action]):

``query.entities`` (handshake, server -> every client)
    reply ConfigRecord ``"client"``: ``client-id`` (str), ``entity-labels`` (list[str], the
    client's local-id order), ``num-train``/``num-valid``/``num-test`` (int), ``entity-dim``.
``train`` (one message per sampled client)
    ArrayRecord ``"entity-rows"`` = {``"rows"``: float32 (n_k, entity_dim)} in the client's local
    order; ConfigRecord ``"config"`` with ``server-round`` and the train config. Reply: the same
    ArrayRecord after local training, MetricRecord ``"metrics"`` with ``num-entities`` (n_k),
    ``num-examples`` (train triples), ``train-loss`` (last epoch), ``train-seconds``,
    ``client-seconds``.
``evaluate`` (validation) / ``evaluate.test`` (final test)
    Same ArrayRecord; config with ``server-round`` and ``best-round`` (the round whose private
    state the client must keep, or restore for the test). Reply MetricRecord ``"metrics"``
    with ``mrr``, ``hits@k`` and ``num_triples``.

Relation embeddings never travel: they stay in each client's ``context.state``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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

from server.aggregation import AggregationError, aggregate_rows, build_vocabulary

__all__ = [
    "CLIENT_INFO_KEY",
    "CONFIG_KEY",
    "ENTITY_ROWS_KEY",
    "METRICS_KEY",
    "ClientInfo",
    "FedEResult",
    "FedEStrategy",
    "FederationError",
    "RoundReport",
]

ENTITY_ROWS_KEY = "entity-rows"
ROWS_ARRAY = "rows"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
CLIENT_INFO_KEY = "client"
HANDSHAKE_TYPE = f"{MessageType.QUERY}.entities"
VALID_TYPE = MessageType.EVALUATE
TEST_TYPE = f"{MessageType.EVALUATE}.test"
#: Metrics a client reports after evaluation; the overall value is weighted by num_triples.
WEIGHT_KEY = "num_triples"


class FederationError(RuntimeError):
    """The federation cannot go on (handshake failed, no client replied, bad update)."""


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of one registered client.

    :param node_id: Flower node id.
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
    best_round: int = 0

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
        }
        if self.failures:
            row["failures"] = self.failures
        if self.valid is not None:
            row["valid"] = self.valid
            row["valid_overall"] = self.valid_overall
        return row


@dataclass
class FedEResult(Result):
    """Flower's :class:`Result` plus FedE's outcome.

    :param best_round: the validated round with the highest overall MRR.
    :param best_valid: its overall validation metrics.
    :param test: per-client test metrics (client id -> metrics), from the best round's state.
    :param test_overall: test metrics weighted by each client's test size.
    :param stopped_early: whether patience ran out before ``num_rounds``.
    :param rounds: the per-round reports.
    """

    best_round: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    test_overall: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    rounds: list[RoundReport] = field(default_factory=list)


def weighted_mean(per_client: Mapping[str, Mapping[str, float]], weight_key: str = WEIGHT_KEY) -> dict[str, float]:
    """Average every metric over clients weighted by ``weight_key``; the weight is summed.

    :param per_client: client id -> metrics (each holding ``weight_key``).
    """
    total = float(sum(m[weight_key] for m in per_client.values()))
    if total <= 0:
        return {}
    keys = sorted({k for m in per_client.values() for k in m if k != weight_key})
    overall = {
        key: float(sum(m[key] * m[weight_key] for m in per_client.values() if key in m) / total) for key in keys
    }
    overall[weight_key] = total
    return overall


class FedEStrategy(FedAvg):
    """FedE (per-row mean of shared entity embeddings) and its Isolation baseline.

    :param setting: ``"fede"`` averages each entity row over its holders; ``"isolation"``
        runs the same loop but returns each client its own rows (no averaging).
    :param fraction_train: fraction of registered clients sampled each round (at least one).
    :param min_clients: clients that must be connected before the handshake.
    :param eval_every: validate every this many rounds (and always at the last round).
    :param patience: stop after this many validations without a better overall MRR.
    :param seed: seed of the client sampling when ``fraction_train < 1``.
    :param transfer_dtype: dtype of the entity rows in messages (``float32`` or ``float16``);
        the table itself stays float32.
    """

    def __init__(
        self,
        *,
        setting: str = "fede",
        fraction_train: float = 1.0,
        min_clients: int = 2,
        eval_every: int = 5,
        patience: int = 15,
        seed: int = 0,
        transfer_dtype: str = "float32",
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
        self.transfer_dtype = np.dtype(transfer_dtype)
        if self.transfer_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"transfer_dtype must be float32 or float16, got {transfer_dtype!r}")
        self.eval_every = eval_every
        self.patience = patience
        self._rng = np.random.default_rng(seed)
        self.clients: dict[int, ClientInfo] = {}
        self.vocabulary: list[str] = []
        self.entity_dim: int | None = None
        self.table: np.ndarray | None = None
        # Isolation keeps each client's own rows; FedE derives them from the table.
        self.client_rows: dict[int, np.ndarray] = {}
        self._report: RoundReport | None = None
        self._last_eval: dict[str, dict[str, float]] = {}
        self._best_round = 0

    # ------------------------------------------------------------------ handshake
    def configure_handshake(self, grid: Grid, wait_timeout: float = 3600.0) -> list[Message]:
        """Wait for ``min_clients`` nodes (at most ``wait_timeout`` s) and ask each for its labels.

        :raises FederationError: when fewer than ``min_clients`` nodes connected in time.
        """
        deadline = time.monotonic() + wait_timeout
        last_logged = -1
        while len(connected := sorted(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"handshake: {len(connected)} of {self.min_available_nodes} clients connected "
                    f"after {wait_timeout:.0f} s"
                )
            if len(connected) != last_logged:
                log(INFO, "waiting for clients: %s of %s connected", len(connected), self.min_available_nodes)
                last_logged = len(connected)
            time.sleep(1.0)
        node_ids = connected
        return [
            Message(content=RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 0})}),
                    message_type=HANDSHAKE_TYPE, dst_node_id=node_id)
            for node_id in node_ids
        ]

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
        """Run the handshake round trip; see :meth:`register_clients`."""
        replies = grid.send_and_receive(self.configure_handshake(grid, wait_timeout=timeout), timeout=timeout)
        return self.register_clients(replies)

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
        size = max(1, int(round(len(nodes) * self.fraction_train)))
        if size < len(nodes):
            nodes = sorted(self._rng.choice(nodes, size=size, replace=False).tolist())
        return nodes

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``train`` message per sampled client, carrying only its rows."""
        config = ConfigRecord({**dict(config), "server-round": server_round})
        nodes = self.sample_train_nodes(grid)
        log(INFO, "configure_train: round %s, %s of %s clients", server_round, len(nodes), len(self.clients))
        return self._messages(nodes, config, MessageType.TRAIN)

    def _rows_from(self, msg: Message) -> np.ndarray:
        info = self.clients.get(msg.metadata.src_node_id)
        if info is None:
            raise FederationError(f"reply from unregistered node {msg.metadata.src_node_id}")
        try:
            rows = msg.content.array_records[ENTITY_ROWS_KEY][ROWS_ARRAY].numpy()
        except KeyError as err:
            raise FederationError(f"client {info.client_id}: reply lacks {ENTITY_ROWS_KEY}/{ROWS_ARRAY}") from err
        expected = (info.global_ids.shape[0], self.entity_dim)
        if rows.shape != expected:
            raise FederationError(f"client {info.client_id}: returned rows of shape {rows.shape}, expected {expected}")
        if not np.issubdtype(rows.dtype, np.floating):
            raise FederationError(f"client {info.client_id}: returned rows of dtype {rows.dtype}")
        return rows

    def _split_replies(self, replies: Iterable[Message]) -> list[Message]:
        valid = []
        for msg in replies:
            node = msg.metadata.src_node_id
            name = self.clients[node].client_id if node in self.clients else str(node)
            if msg.has_error():
                log(WARNING, "client %s failed: %s", name, msg.error.reason)
                if self._report is not None:
                    self._report.failures.append(f"{name}: {msg.error.reason}")
            else:
                valid.append(msg)
        return valid

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per-row mean (FedE) or keep-own-rows (Isolation) of the clients' returned rows.

        :returns: ``(None, metrics)``: the table stays on the strategy (``self.table``),
            metrics are the train metrics weighted by ``num-entities``.
        :raises FederationError: when no client replied or an update does not fit.
        """
        valid = self._split_replies(replies)
        if not valid:
            raise FederationError(f"round {server_round}: no client returned a training result")
        started = time.perf_counter()
        updates, per_client = [], {}
        for msg in valid:
            info = self.clients[msg.metadata.src_node_id]
            rows = self._rows_from(msg)
            if self._report is not None:
                self._report.bytes_received += rows.nbytes
            rows = rows.astype(np.float32, copy=False)
            updates.append((msg.metadata.src_node_id, info.global_ids, rows))
            per_client[info.client_id] = {k: float(v) for k, v in msg.content.metric_records[METRICS_KEY].items()}
        try:
            if self.setting == "fede":
                self.table = aggregate_rows(self.table, [(ids, rows) for _, ids, rows in updates])
            else:
                for node_id, _, rows in updates:
                    if not np.all(np.isfinite(rows)):
                        raise AggregationError("rows contain NaN or infinite values")
                    self.client_rows[node_id] = rows.astype(np.float32, copy=True)
        except AggregationError as err:
            raise FederationError(f"round {server_round}: {err}") from err
        if self._report is not None:
            self._report.aggregation_seconds += time.perf_counter() - started
            self._report.train.update(per_client)
        metrics = weighted_mean(per_client, "num-entities")
        return None, MetricRecord(metrics) if metrics else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One validation message per connected registered client, with its current rows."""
        config = ConfigRecord({**dict(config), "server-round": server_round, "best-round": self._best_round})
        connected = set(grid.get_node_ids())
        return self._messages(sorted(n for n in self.clients if n in connected), config, VALID_TYPE)

    def _metrics_from(self, replies: Iterable[Message]) -> dict[str, dict[str, float]]:
        per_client = {}
        for msg in self._split_replies(replies):
            info = self.clients.get(msg.metadata.src_node_id)
            if info is None:
                continue
            per_client[info.client_id] = {k: float(v) for k, v in msg.content.metric_records[METRICS_KEY].items()}
        return per_client

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Overall validation metrics weighted by each client's number of triples."""
        per_client = self._metrics_from(replies)
        self._last_eval = per_client
        overall = weighted_mean(per_client)
        return MetricRecord(overall) if overall else None

    # ------------------------------------------------------------------ loop
    def start(  # noqa: PLR0913, PLR0915 - FedAvg's signature plus FedE's hooks
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        on_round_end: Callable[[RoundReport], None] | None = None,
    ) -> FedEResult:
        """Run FedE rounds with validation, early stopping and a final test.

        Call :meth:`handshake` first. ``initial_arrays`` holds the initial global table as
        ``{"entity-table": float32 (num_entities, entity_dim)}``. ``evaluate_fn`` is not
        used (there is no central evaluation data: every triple stays with its client).
        ``on_round_end`` receives each round's :class:`RoundReport` (for the run folder).
        """
        if not self.clients:
            raise FederationError("start() called before handshake()")
        self.set_table(initial_arrays["entity-table"].numpy())
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = FedEResult()
        best_mrr, bad_checks = -np.inf, 0
        best_table, best_rows = self.table.copy(), dict(self.client_rows)

        for current_round in range(1, num_rounds + 1):
            started = time.perf_counter()
            self._report = report = RoundReport(round=current_round)
            replies = grid.send_and_receive(
                self.configure_train(current_round, initial_arrays, train_config, grid), timeout=timeout
            )
            _, train_metrics = self.aggregate_train(current_round, replies)
            report.train_phase_seconds = time.perf_counter() - started
            slowest = max((m.get("train-seconds", 0.0) for m in report.train.values()), default=0.0)
            report.overhead_seconds = max(0.0, report.train_phase_seconds - slowest - report.aggregation_seconds)
            if train_metrics is not None:
                result.train_metrics_clientapp[current_round] = train_metrics

            stop = False
            if current_round % self.eval_every == 0 or current_round == num_rounds:
                eval_started = time.perf_counter()
                replies = grid.send_and_receive(
                    self.configure_evaluate(current_round, initial_arrays, evaluate_config, grid), timeout=timeout
                )
                overall = self.aggregate_evaluate(current_round, replies)
                report.evaluation_seconds = time.perf_counter() - eval_started
                report.valid = self._last_eval
                report.valid_overall = dict(overall) if overall is not None else {}
                if overall is not None:
                    result.evaluate_metrics_clientapp[current_round] = overall
                mrr = float(report.valid_overall.get("mrr", -np.inf))
                if mrr > best_mrr:
                    best_mrr, bad_checks = mrr, 0
                    self._best_round = current_round
                    best_table = self.table.copy()
                    best_rows = {n: r.copy() for n, r in self.client_rows.items()}
                    result.best_valid = dict(report.valid_overall)
                else:
                    bad_checks += 1
                    stop = bad_checks >= self.patience
            report.best_round = self._best_round
            report.server_peak_rss_mb = _peak_rss_mb()
            report.seconds = time.perf_counter() - started
            self._log_round(report, num_rounds)
            result.rounds.append(report)
            self._report = None
            if on_round_end is not None:
                on_round_end(report)
            if stop:
                log(INFO, "early stopping after round %s: %s checks without a better MRR", current_round, bad_checks)
                result.stopped_early = True
                break

        # Final test on the best round's entity rows; clients restore that round's private state.
        self.table, self.client_rows = best_table, best_rows
        result.best_round = self._best_round
        config = ConfigRecord({**dict(evaluate_config), "server-round": self._best_round, "best-round": self._best_round})
        connected = set(grid.get_node_ids())
        replies = grid.send_and_receive(
            self._messages(sorted(n for n in self.clients if n in connected), config, TEST_TYPE), timeout=timeout
        )
        result.test = self._metrics_from(replies)
        missing = sorted({i.client_id for i in self.clients.values()} - set(result.test))
        if missing:
            log(WARNING, "no test metrics from clients %s", missing)
        result.test_overall = weighted_mean(result.test)
        result.arrays = ArrayRecord({"entity-table": Array(self.table)})
        log(INFO, "best round %s; test overall %s", self._best_round, _fmt(result.test_overall))
        return result

    def _log_round(self, report: RoundReport, num_rounds: int) -> None:
        losses = " ".join(f"{cid}:{m.get('train-loss', float('nan')):.4f}" for cid, m in sorted(report.train.items()))
        line = f"[round {report.round}/{num_rounds}] {report.seconds:.1f}s loss {losses}"
        if report.valid_overall:
            line += f" | valid {_fmt(report.valid_overall)} (best round {report.best_round})"
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
