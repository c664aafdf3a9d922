"""The SimSkip refinement phase and the downstream evaluation as a Flower strategy.

Runs after the KGE phase, on the clients registered by :class:`server.strategy.FedEStrategy`
(its handshake and best-round entity rows are reused). :class:`SimSkipStrategy` extends
Flower's :class:`~flwr.serverapp.strategy.FedAvg`: like FedE, each client must receive its own
entity rows, so ``configure_train`` is overridden; ``aggregate_train`` is FedAvg of the named
encoder + head weights weighted by the number of rows (:func:`server.weights.fedavg_named`),
which Flower's ``aggregate_arrayrecords`` would do too but without the per-name checks.

Message protocol:

``train.simskip`` (one message per client per round)
    ArrayRecord ``"entity-rows"`` = {``"rows"``: the client's best-round rows}; ArrayRecord
    ``"simskip-weights"`` = the round's starting weights, ``"<variant>/<name>"`` entries
    (federated: the current average, every round; local-only: the initial weights in round 1
    only, afterwards the client continues from the weights it keeps in ``context.state``, so
    no encoder leaves a client); ConfigRecord ``"config"``: ``server-round``, ``federate``.
    Reply: ArrayRecord ``"simskip-weights"`` (federated only) and MetricRecord ``"metrics"``:
    ``num-rows``, ``loss/<variant>`` (last local epoch), ``simskip-seconds``.
``evaluate.downstream`` (once per client)
    Same rows (+ the final average weights when federated); config ``best-round``,
    ``refit-epochs``, ``gate-grid`` (the skip strengths of the ``refined-gated`` row, ``"none"``:
    no gate) and ``federate``. The client refines its rows, chooses the skip strength on its
    valid split, re-fits relations on frozen rows for each row of the table and ranks its test
    split. Reply MetricRecord ``"metrics"`` with ``<row>/<protocol>/<metric>`` entries (``row``
    of :data:`server.report.ROW_ORDER`) and the gate's ``gate-alpha``, ``gate-valid-mrr@<alpha>``,
    ``gate-refit-selection``, ``gate-seconds`` (:func:`parse_gate_metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from client.kge.refinement import RefinementConfig, RoundUpdate, initial_weights, pack_variants, round_record, unpack_variants
from server.strategy import CONFIG_KEY, ENTITY_ROWS_KEY, METRICS_KEY, ROWS_ARRAY, FederationError, FedEStrategy
from server.weights import WeightsAggregationError, fedavg_named

__all__ = [
    "DOWNSTREAM_TYPE",
    "SIMSKIP_TRAIN_TYPE",
    "WEIGHTS_KEY",
    "SimSkipStrategy",
    "parse_downstream_metrics",
    "parse_gate_metrics",
    "run_refinement_phase",
]

WEIGHTS_KEY = "simskip-weights"
SIMSKIP_TRAIN_TYPE = f"{MessageType.TRAIN}.simskip"
DOWNSTREAM_TYPE = f"{MessageType.EVALUATE}.downstream"
NamedArrays = list[tuple[str, np.ndarray]]


def parse_downstream_metrics(record: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{"refined/standard/mrr": v, ...}`` -> ``{"refined": {"standard": {"mrr": v}}}``.

    ``num_triples`` stays an int. Entries without two ``/`` are ignored (e.g. timings).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in record.items():
        parts = key.split("/")
        if len(parts) != 3:
            continue
        row, protocol, metric = parts
        out.setdefault(row, {}).setdefault(protocol, {})[metric] = int(value) if metric == "num_triples" else float(value)
    return out


def parse_gate_metrics(record: Mapping[str, Any], *, protocol: str, variant: str) -> dict[str, Any] | None:
    """The ``gate-*`` entries of a downstream reply -> the gate record of ``downstream.json``
    (the shape of :meth:`client.kge.refit.GateResult.as_dict`); ``None`` when the client ran no gate.

    :param protocol: the run's ``eval-protocol`` (the scores' protocol).
    :param variant: the gated variant.
    """
    if "gate-alpha" not in record:
        return None
    prefix = "gate-valid-mrr@"
    scores = sorted((float(key.removeprefix(prefix)), key.removeprefix(prefix), float(value))
                    for key, value in record.items() if key.startswith(prefix))
    return {
        "alpha": float(record["gate-alpha"]),
        "valid_mrr": {text: value for _, text, value in scores},
        "protocol": protocol,
        "split": "valid",
        "selection": "refit" if int(record.get("gate-refit-selection", 0)) else "as-trained",
        "variant": variant,
        "seconds": float(record.get("gate-seconds", 0.0)),
    }


class SimSkipStrategy(FedAvg):
    """Federated SimSkip rounds (or the local-only ablation) and the downstream evaluation.

    :param kge: the finished KGE strategy: its registered clients, ``entity_dim`` and
        ``rows_for(node_id)`` (the best round's rows) are used.
    :param config: the refinement phase config.
    :param eval_protocol: the run's ``eval-protocol`` (recorded with the gate's valid scores).
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
        if kge.entity_dim is None or not kge.clients:
            raise FederationError("the SimSkip phase needs a KGE strategy that ran its handshake")
        self.kge = kge
        self.config = config
        self.variants = list(config.variants())
        self.global_weights = initial_weights(int(kge.entity_dim), config)
        #: client id -> rows refined in the last round (also the FedAvg weights)
        self.num_rows: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self._last_updates: dict[str, RoundUpdate] = {}
        self.eval_protocol = eval_protocol
        #: client id -> its skip-strength gate record (filled by the downstream evaluation)
        self.gate: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ messages
    def _message(self, node_id: int, message_type: str, config: Mapping[str, Any], with_weights: bool) -> Message:
        content = RecordDict({
            ENTITY_ROWS_KEY: ArrayRecord({ROWS_ARRAY: Array(np.ascontiguousarray(self.kge.rows_for(node_id), dtype=np.float32))}),
            CONFIG_KEY: ConfigRecord({**dict(config), "federate": self.config.federate}),
        })
        if with_weights:
            content[WEIGHTS_KEY] = ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in pack_variants(self.global_weights)})
        return Message(content=content, message_type=message_type, dst_node_id=node_id)

    def _nodes(self, grid: Grid) -> list[int]:
        connected = set(grid.get_node_ids())
        nodes = sorted(n for n in self.kge.clients if n in connected)
        if not nodes:
            raise FederationError("SimSkip phase: no registered client is connected")
        return nodes

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """One ``train.simskip`` message per connected client, with its rows (and the weights)."""
        with_weights = self.config.federate or server_round == 1
        return [
            self._message(node, SIMSKIP_TRAIN_TYPE, {**dict(config), "server-round": server_round}, with_weights)
            for node in self._nodes(grid)
        ]

    def _client_name(self, msg: Message) -> str:
        info = self.kge.clients.get(msg.metadata.src_node_id)
        if info is None:
            raise FederationError(f"SimSkip reply from unregistered node {msg.metadata.src_node_id}")
        return info.client_id

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the returned weights (federated) and the round's loss record.

        :raises FederationError: when no client replied or a client's weights do not fit.
        """
        updates: dict[str, RoundUpdate] = {}
        for msg in replies:
            if msg.has_error():
                log(WARNING, "SimSkip round %s: node %s failed: %s", server_round, msg.metadata.src_node_id, msg.error.reason)
                continue
            name = self._client_name(msg)
            metrics = msg.content.metric_records[METRICS_KEY]
            weights: dict[str, NamedArrays] = {}
            if self.config.federate:
                record = msg.content.array_records.get(WEIGHTS_KEY)
                if record is None:
                    raise FederationError(f"SimSkip round {server_round}: client {name} returned no weights")
                flat = [(key, record[key].numpy()) for key in record]
                try:
                    weights = unpack_variants(flat, self.variants)
                except ValueError as error:
                    raise FederationError(f"SimSkip round {server_round}: client {name}: {error}") from error
            losses = {v: [float(metrics[f"loss/{v}"])] for v in self.variants if f"loss/{v}" in metrics}
            updates[name] = RoundUpdate(weights, int(metrics["num-rows"]), losses, float(metrics.get("simskip-seconds", 0.0)))
        if not updates:
            raise FederationError(f"SimSkip round {server_round}: no client returned a result")
        if self.config.federate:
            try:
                self.global_weights = {
                    variant: fedavg_named([(_in_order(u.weights[variant], self.global_weights[variant]), u.num_rows)
                                           for u in updates.values()])
                    for variant in self.variants
                }
            except (WeightsAggregationError, KeyError) as error:
                raise FederationError(f"SimSkip round {server_round}: {error}") from error
        self.num_rows = {name: u.num_rows for name, u in updates.items()}
        self._last_updates = updates
        overall = round_record(server_round, updates, 0.0)["simskip_loss_overall"]
        return None, MetricRecord({f"loss/{v}": float(x) for v, x in overall.items()})

    # ------------------------------------------------------------------ loop
    def run(
        self,
        grid: Grid,
        *,
        best_round: int,
        timeout: float = 3600.0,
        on_round_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """Run ``config.rounds`` SimSkip rounds, then the downstream evaluation.

        :param best_round: the KGE round whose client state (relations) is "FedE as trained".
        :param on_round_end: receives each round's history row (for ``simskip_metrics.jsonl``).
        :returns: ``{row: {client: {protocol: metrics}}}`` for :func:`server.report.write_results`.
        :raises FederationError: when a round gets no result or clients miss in the evaluation.
        """
        for server_round in range(1, self.config.rounds + 1):
            started = time.perf_counter()
            replies = grid.send_and_receive(self.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid), timeout=timeout)
            self.aggregate_train(server_round, replies)
            record = round_record(server_round, self._last_updates, time.perf_counter() - started)
            self.history.append(record)
            log(INFO, "[simskip round %s/%s] %.1fs loss %s", server_round, self.config.rounds, record["seconds"],
                " ".join(f"{v}={x:.4f}" for v, x in record["simskip_loss_overall"].items()))
            if on_round_end is not None:
                on_round_end(record)
        gate_grid = self.config.to_run_config()["simskip-gate-grid"]
        config = {"best-round": int(best_round), "refit-epochs": self.config.refit_epochs, "gate-grid": gate_grid}
        messages = [self._message(node, DOWNSTREAM_TYPE, config, self.config.federate) for node in self._nodes(grid)]
        downstream: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        failures = []
        for msg in grid.send_and_receive(messages, timeout=timeout):
            if msg.has_error():
                failures.append(f"node {msg.metadata.src_node_id}: {msg.error.reason}")
                continue
            name = self._client_name(msg)
            record = msg.content.metric_records[METRICS_KEY]
            for row, per_protocol in parse_downstream_metrics(record).items():
                downstream.setdefault(row, {})[name] = per_protocol
            gate = parse_gate_metrics(record, protocol=self.eval_protocol, variant=self.config.main_variant)
            if gate is not None:
                self.gate[name] = gate
        expected = {info.client_id for info in self.kge.clients.values()}
        missing = sorted(expected - {c for per in downstream.values() for c in per})
        if missing or failures:
            raise FederationError(f"downstream evaluation: no result from clients {missing}; failures {failures}")
        return downstream


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
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """The whole phase after KGE training: SimSkip rounds, downstream evaluation, report.

    With ``run_dir``: ``simskip_metrics.jsonl`` grows by one row per round (atomically
    rewritten), then ``downstream.json`` (with each client's skip-strength ``gate``) and the
    report files are written (:func:`server.downstream.write_downstream_and_report`).

    :returns: ``{row: {client: {protocol: metrics}}}``.
    """
    import json
    from pathlib import Path

    from server.downstream import write_downstream_and_report
    from server.report import SIMSKIP_METRICS_FILE
    from server.run_folder import atomic_write_text

    strategy = SimSkipStrategy(kge, refinement, eval_protocol=str(getattr(kge_config, "eval_protocol", "standard")))
    lines: list[str] = []

    def on_round_end(record: dict[str, Any]) -> None:
        lines.append(json.dumps(record, sort_keys=True))
        if run_dir:
            atomic_write_text(Path(run_dir) / SIMSKIP_METRICS_FILE, "\n".join(lines) + "\n")

    started = time.perf_counter()
    rows = strategy.run(grid, best_round=best_round, timeout=timeout, on_round_end=on_round_end)
    if run_dir:
        simskip_seconds = sum(r["seconds"] for r in strategy.history)
        write_downstream_and_report(
            run_dir, rows, kge_config=kge_config, refinement=refinement, setting=setting,
            extra={"source": "federated", "simskip_seconds": round(simskip_seconds, 3),
                   "phase_seconds": round(time.perf_counter() - started, 3), "best_round": int(best_round),
                   **({"gate": strategy.gate} if strategy.gate else {})},
        )
    return rows
