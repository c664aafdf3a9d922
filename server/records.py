"""What the FedE server records and raises: its errors, a registered client, one round's report,
the loop state a checkpoint holds, the run's result, and the weighted mean of client metrics.

Plain data (numpy and Flower's ``Result`` only): shared by the strategy's parts
(:mod:`server.membership`, :mod:`server.fede_state`, :mod:`server.strategy`), the ServerApp and
the SimSkip phase.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Result

from client.protocol import TRACK_TEST_PREFIX, WEIGHT_KEY

__all__ = [
    "ClientInfo",
    "FedEResult",
    "FederationError",
    "LoopState",
    "RoundReport",
    "UpdateRejectedError",
    "dp_record",
    "dp_text",
    "secagg_clipped_total",
    "split_tracked_test",
    "train_messages_sent",
    "weighted_mean",
]


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
    #: ``stopping = per-party``, validated rounds: where each party's tracker stood after this round
    #: (:meth:`~client.kge.early_stopping.PartyStopping.summary`); ``None`` otherwise
    parties: dict[str, dict[str, Any]] | None = None
    #: ``secure-aggregation = true``: the uploaded values beyond SecAgg+'s +-c this round, summed over the
    #: parties under the masks (``secagg_clipped`` in the row); ``None`` (no key) for a plain round
    secagg_clipped: int | None = None
    #: ``secure-aggregation = true``: per party (client name), the bytes of its masked vector
    #: (``masked_vector``) and of all its SecAgg+ replies this round (``all_replies``: keys, shares and
    #: the masked vector; their sum over the parties is ``bytes_received``); ``None`` for a plain round
    secagg_bytes: dict[str, dict[str, int]] | None = None

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
        if self.parties is not None:
            row["parties"] = self.parties
        if self.secagg_clipped is not None:
            row["secagg_clipped"] = self.secagg_clipped
        if self.secagg_bytes is not None:
            row["secagg_bytes"] = self.secagg_bytes
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
    :param stopping: ``final_metrics.json``'s ``stopping`` record: ``rule``, ``ended_by`` and
        (``per-party``) ``parties`` (as the in-process runners', ``docs/concepts/stopping.md``).
    """

    best_round: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, dict[str, float]] = field(default_factory=dict)
    test_overall: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    rounds: list[RoundReport] = field(default_factory=list)
    stopping: dict[str, Any] = field(default_factory=dict)


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
    :param parties: ``stopping = per-party`` only (``None`` otherwise, and before the first
        validation): :meth:`~client.kge.early_stopping.PartyStopping.state` of the per-party
        trackers; each party's own best round is there. ``best_round`` is then the latest of them,
        ``best_valid`` the weighted overall of ``party_best_valid``.
    :param party_best_valid: ``per-party``: client id -> its validation metrics at its own best round.
    """

    round: int = 0
    best_mrr: float = -math.inf
    bad_checks: int = 0
    best_round: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    federation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    reports: list[dict[str, Any]] = field(default_factory=list)
    parties: dict[str, Any] | None = None
    party_best_valid: dict[str, dict[str, float]] = field(default_factory=dict)

    def party_best_round(self, client_id: str) -> int:
        """``per-party``: the best round of ``client_id``'s own tracker (0: none yet)."""
        party = ((self.parties or {}).get("parties") or {}).get(client_id) or {}
        return int(party.get("best_round") or 0)


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


#: Train-reply metrics of ``dp = local`` (:mod:`client.party_dp`): the party's own accountant.
DP_METRICS = ("dp-epsilon", "dp-releases", "dp-noise-multiplier", "dp-delta")


#: Failure phases of a round report that are not the train phase (``"<client>: <phase>: <why>"``).
_NOT_TRAIN_PHASES = ("validation", "finish", "rejoin", "restore", "test")


def train_messages_sent(row: Mapping[str, Any]) -> set[str]:
    """The clients a round's train message went to, from its report row: those whose reply was used
    (``train``) and those recorded as a train-phase failure (a lost, late or rejected reply)."""
    sent = set(row.get("train") or {})
    for failure in row.get("failures") or []:
        name, _, rest = str(failure).partition(": ")
        if rest and not name.startswith("node ") and rest.split(":", 1)[0] not in _NOT_TRAIN_PHASES:
            sent.add(name)
    return sent


def dp_record(reports: Sequence[RoundReport | Mapping[str, Any]]) -> dict[str, Any] | None:
    """``dp = local``: each party's (epsilon, delta) for the whole run, from its latest train reply, and the
    server's own conservative bound.

    The party's accountant is authoritative (it counts every release it made, also one whose reply
    came late or was rejected); ``rounds_received`` is the server's cross-check, the rounds in which
    its update reached the server (``releases`` >= it). ``messages_sent`` counts the rounds whose train
    message went to the party (:func:`train_messages_sent`; a party releases at most once per message),
    and ``epsilon_bound`` is the epsilon of that many releases at the party's ``z``: the server's figure,
    which does not trust the party's count (it misses only rounds of a crashed server attempt that a
    resume re-ran). ``releases_went_down`` lists the rounds whose ``dp-releases`` was below the party's
    previous one (its accountant restarted, or a wrong reply): the reported epsilon is then suspect.
    Per-round values stay in each round's ``train`` metrics (``metrics.jsonl``). An infinite epsilon
    (z = 0) is written as ``None`` with an ``epsilon_note`` (JSON has no Infinity).

    :param reports: the run's round reports (objects or :meth:`RoundReport.as_dict` rows).
    :returns: ``{"parties": {client: {"epsilon", "delta", "releases", "noise_multiplier", "round",
        "rounds_received", "messages_sent", "epsilon_bound"[, "releases_went_down", "epsilon_note"]}},
        "max_epsilon", "max_epsilon_bound"}``, or ``None`` when no reply carried DP metrics.
    """
    from client.kge.local_dp import INFINITE_EPSILON_NOTE, epsilon_for, json_epsilon  # dp_accounting: heavy

    parties: dict[str, dict[str, Any]] = {}
    sent: dict[str, int] = {}
    went_down: dict[str, list[int]] = {}
    rows = [report.as_dict() if isinstance(report, RoundReport) else report for report in reports]
    for row in rows:
        for client in train_messages_sent(row):
            sent[client] = sent.get(client, 0) + 1
        for client, metrics in (row.get("train") or {}).items():
            if "dp-epsilon" not in metrics:
                continue
            received = parties.get(client, {}).get("rounds_received", 0) + 1
            releases = int(metrics.get("dp-releases", 0))
            if client in parties and releases < parties[client]["releases"]:
                went_down.setdefault(client, []).append(int(row["round"]))
            parties[client] = {
                "epsilon": float(metrics["dp-epsilon"]),
                "delta": float(metrics.get("dp-delta", float("nan"))),
                "releases": releases,
                "noise_multiplier": float(metrics.get("dp-noise-multiplier", float("nan"))),
                "round": int(row["round"]),
                "rounds_received": received,
            }
    if not parties:
        return None
    for client, party in parties.items():
        party["messages_sent"] = sent.get(client, party["rounds_received"])
        bound = epsilon_for(party["noise_multiplier"], party["messages_sent"], party["delta"])
        party["epsilon_bound"] = bound
        if client in went_down:
            party["releases_went_down"] = went_down[client]
    ordered = dict(sorted(parties.items()))
    record: dict[str, Any] = {
        "parties": ordered,
        "max_epsilon": max(p["epsilon"] for p in ordered.values()),
        "max_epsilon_bound": max(p["epsilon_bound"] for p in ordered.values()),
    }
    infinite = False
    for party in ordered.values():
        for key in ("epsilon", "epsilon_bound"):
            infinite |= math.isinf(party[key])
            party[key] = json_epsilon(party[key])
        if party["epsilon"] is None:
            party["epsilon_note"] = INFINITE_EPSILON_NOTE
    for key in ("max_epsilon", "max_epsilon_bound"):
        record[key] = json_epsilon(record[key])
    if infinite:
        record["epsilon_note"] = INFINITE_EPSILON_NOTE
    return record


def secagg_clipped_total(reports: Sequence[RoundReport | Mapping[str, Any]]) -> int:
    """``secure-aggregation = true``: the run's total of uploaded values SecAgg+ clipped to +-c (0 for a
    plain run, or when none was); ``final_metrics.json`` holds it as ``secagg_clipped`` when above 0."""
    total = 0
    for report in reports:
        row = report.as_dict() if isinstance(report, RoundReport) else report
        total += int(row.get("secagg_clipped") or 0)
    return total


def dp_text(record: Mapping[str, Any]) -> str:
    """:func:`dp_record` in one line: epsilon at delta per party, with its releases, the server's bound,
    and a warning where ``dp-releases`` went down."""

    def eps(value: Any) -> str:
        return "inf" if value is None else f"{value:.4g}"

    parts = []
    for client, party in record["parties"].items():
        text = (
            f"party {client}: epsilon {eps(party['epsilon'])} at delta {party['delta']:g} after "
            f"{party['releases']} releases"
        )
        if "epsilon_bound" in party:
            text += f" (server's bound {eps(party['epsilon_bound'])} over {party['messages_sent']} train messages)"
        if party.get("releases_went_down"):
            text += f" WARNING: dp-releases went down in rounds {party['releases_went_down']}"
        parts.append(text)
    return ", ".join(parts)
