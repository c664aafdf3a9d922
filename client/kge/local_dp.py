"""Local differential privacy of a party's uploaded entity rows (run config ``dp = local``).

Each round, before its trained entity rows leave it, a party releases them through the Gaussian
mechanism (:func:`release_rows`): the update ``uploaded - downloaded`` (``downloaded``: exactly the
rows the server sent that round) is clipped as a whole to Frobenius norm ``C`` (``dp-clip``), and
N(0, (z C)^2) noise is added to every element (``z``: ``dp-noise-multiplier``), in float64 before
any cast to the wire dtype, with noise from an RNG seeded by :mod:`secrets` (never from the run's
``seed``, which the server knows). One :class:`PartyAccountant` per party counts its releases and
turns them into (epsilon, delta) with the RDP accountant of Google's ``dp-accounting`` library
(``dp_accounting.rdp.RdpAccountant``; Flower's ``flwr.serverapp.RdpAccountant`` is a thin wrapper of
the same class, not used here because :mod:`client.kge` stays free of Flower).

**The unit protected.** Two datasets of the party with the same entity vocabulary (the handshake
reveals it and fixes which rows the party uploads), whatever triples they differ in, give clipped
updates at most ``2C`` apart (each is within ``C`` of the same downloaded rows), so one release is a
Gaussian mechanism with sensitivity ``2C`` and noise ``z C``: noise multiplier ``z / 2`` for the
accountant (:func:`accountant_multiplier`), with no amplification (the server, not chance, picks
who trains). The (epsilon, delta) reported therefore covers the party's **entire training data, given
the entity set revealed by the handshake** (one triple, all triples of an entity it keeps, or all of
them alike, with no group-privacy factor), and **only the released rows** (every upload counted,
adaptive composition under RDP). The guarantee is :func:`epsilon_for` ``(z, T)`` for the run's planned
``T`` releases (with ``dp-target-epsilon`` enforced by :func:`check_budget`); the running value after
each release is informational.

Under a federated SimSkip phase each round's encoder + head weights are released the same way
(:func:`release_weights`: the whole update against the downloaded global weights, clipped to
``dp-clip-encoder``, noise ``z`` times that clip) and counted by the same accountant, one release per
round: the guarantee then covers the rows and the weights together.

**Not covered**, and not to be claimed: the handshake (entity labels, hence the party's entity
set and its size, and the split sizes); the metrics a party reports (train loss, validation and
test MRR / hits, downstream records); the server's choices of the best round and of early stopping,
made on the clear validation metrics (the guarantee treats those metrics as public); timing;
floating-point attacks on the noise; and any upload that does not take this path.

This module is Flower-free (``client/kge`` is, by import-linter); ``dp_accounting`` is imported
where it is used (about a second to import).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "ACCOUNTANT_NAME",
    "DP_MODES",
    "PROTECTED_UNIT",
    "LocalDpError",
    "LocalDpSpec",
    "PartyAccountant",
    "PrivacyBudgetExceeded",
    "Release",
    "accountant_multiplier",
    "calibrate_noise_multiplier",
    "check_budget",
    "epsilon_for",
    "json_epsilon",
    "new_noise_rng",
    "release_rows",
    "release_weights",
]

#: The values of run config ``dp``: ``none`` (rows travel as trained) or ``local`` (this module).
DP_MODES = ("none", "local")

#: How results name the accountant (method and library).
ACCOUNTANT_NAME = "rdp (dp-accounting)"

#: What the guarantee covers, in one line (written into results beside the numbers).
PROTECTED_UNIT = (
    "each party's entire training data given the entity set revealed by the handshake, for the entity "
    "rows it uploads (and, with a federated SimSkip phase, its encoder weights; each upload one release; "
    "whole-update clipping, sensitivity 2C, no amplification); not the handshake's entity labels, the "
    "reported metrics (treated as public), the best-round and stopping choices made on them, or timing"
)

_STATE_VERSION = 1


class LocalDpError(ValueError):
    """A DP parameter is out of range, or an accountant state cannot be loaded."""


class PrivacyBudgetExceeded(LocalDpError):
    """A release would take a party's epsilon past ``dp-target-epsilon`` (the privacy filter): refused
    before any noise is drawn, so nothing leaves the party (e.g. a resume that re-runs a round)."""


#: Why an epsilon is written as JSON ``null`` (:func:`json_epsilon`).
INFINITE_EPSILON_NOTE = "epsilon is infinite (dp-noise-multiplier = 0: clipping only, no privacy); written as null"


def json_epsilon(epsilon: float) -> float | None:
    """``epsilon`` for a JSON file: ``None`` (``null``) when infinite (z = 0), as standard JSON has no
    Infinity (:data:`INFINITE_EPSILON_NOTE` says why beside it)."""
    return None if math.isinf(epsilon) else float(epsilon)


@dataclass(frozen=True)
class LocalDpSpec:
    """The parameters of ``dp = local`` for one run, as resolved from the run config.

    :param clip: ``C``, the Frobenius norm the whole update is clipped to (> 0).
    :param noise_multiplier: ``z``, noise std over ``C`` (>= 0; 0 releases clipped rows without
        noise: no privacy, epsilon infinite, a control only).
    :param delta: the delta epsilon is reported at (in (0, 1)).
    :param target_epsilon: the target ``z`` was calibrated to (``None``: ``z`` was given).
    """

    clip: float
    noise_multiplier: float
    delta: float = 1e-5
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        if not self.clip > 0 or not math.isfinite(self.clip):
            raise LocalDpError(f"dp-clip must be a finite number > 0, got {self.clip!r}")
        if not self.noise_multiplier >= 0 or not math.isfinite(self.noise_multiplier):
            raise LocalDpError(f"dp-noise-multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.delta < 1:
            raise LocalDpError(f"dp-delta must be in (0, 1), got {self.delta!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``clip``, ``noise_multiplier``, ``delta``, ``target_epsilon``, ``accountant``."""
        return {
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "accountant": ACCOUNTANT_NAME,
            "protected": PROTECTED_UNIT,
        }


@dataclass(frozen=True)
class Release:
    """One party's released rows and what happened to its update.

    :param rows: float64 (n_k, d): ``downloaded + clipped update + noise``; cast to the wire dtype
        only after this.
    :param norm: the Frobenius norm of ``uploaded - downloaded`` before clipping. Data-dependent:
        keep it inside the party (its log), never send it.
    :param clipped: whether the update was scaled down to ``clip``.
    """

    rows: np.ndarray
    norm: float
    clipped: bool


def new_noise_rng() -> np.random.Generator:
    """A generator seeded from :func:`secrets.randbits`: neither the server (which knows the run's
    seed) nor another party can predict it, and no two runs share it."""
    return np.random.default_rng(secrets.randbits(128))


def release_rows(
    uploaded: np.ndarray,
    downloaded: np.ndarray,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> Release:
    """The Gaussian mechanism on one upload: clip the whole update to ``clip``, add N(0, (z C)^2).

    All arithmetic is float64 (a float16 norm overflows above 256 and would zero the update).

    :param uploaded: the rows the party trained, (n_k, d).
    :param downloaded: exactly the rows the server sent this round (same shape; the reference the
        update is measured from).
    :param clip: ``C`` (> 0).
    :param noise_multiplier: ``z`` (>= 0): the noise std is ``z * C``.
    :param rng: the noise source; default :func:`new_noise_rng`. Pass one only in tests: an RNG
        the server can reproduce voids the guarantee.
    :raises LocalDpError: shapes differ, a parameter is out of range, or the update is not finite.
    """
    LocalDpSpec(clip=clip, noise_multiplier=noise_multiplier)  # checks both
    up = np.asarray(uploaded, dtype=np.float64)
    down = np.asarray(downloaded, dtype=np.float64)
    if up.shape != down.shape:
        raise LocalDpError(f"uploaded rows have shape {up.shape}, the downloaded rows {down.shape}")
    update = up - down
    norm = float(np.linalg.norm(update))
    if not math.isfinite(norm):
        raise LocalDpError("the update (uploaded - downloaded rows) is not finite: nothing can be released")
    clipped = norm > clip
    if clipped:
        update *= clip / norm
    if noise_multiplier > 0:
        generator = rng if rng is not None else new_noise_rng()
        update += generator.normal(0.0, noise_multiplier * clip, size=update.shape)
    return Release(rows=down + update, norm=norm, clipped=bool(clipped))


def release_weights(
    uploaded: Sequence[tuple[str, np.ndarray]],
    downloaded: Sequence[tuple[str, np.ndarray]],
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> tuple[list[tuple[str, np.ndarray]], Release]:
    """:func:`release_rows` on named weight arrays (the SimSkip encoder + head weights): the whole update,
    all arrays together (their concatenation), clipped to ``clip``, N(0, (z C)^2) added to every value.

    :param uploaded: the trained weights, ``[(name, array)]``.
    :param downloaded: exactly the weights the server sent this round, same names, order and shapes.
    :returns: the released weights (float64, same names and shapes) and the :class:`Release` of the
        flattened update (its ``rows``: the released values as one (1, total) array).
    :raises LocalDpError: names or shapes differ, a parameter is out of range, or the update is not finite.
    """
    up_names = [(name, np.shape(array)) for name, array in uploaded]
    down_names = [(name, np.shape(array)) for name, array in downloaded]
    if up_names != down_names:
        raise LocalDpError(f"uploaded weights {up_names} differ from the downloaded weights {down_names}")
    flat_up = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in uploaded])[None]
    flat_down = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in downloaded])[None]
    release = release_rows(flat_up, flat_down, clip, noise_multiplier, rng)
    out, start = [], 0
    for name, shape in up_names:
        size = int(np.prod(shape, dtype=np.int64))
        out.append((name, release.rows[0, start : start + size].reshape(shape)))
        start += size
    return out, release


def accountant_multiplier(noise_multiplier: float) -> float:
    """The accountant's noise multiplier for a release with noise ``z * C`` and sensitivity ``2C``: ``z / 2``."""
    return noise_multiplier / 2.0


def _rdp_accountant() -> Any:
    from dp_accounting.rdp import rdp_privacy_accountant  # heavy: about a second

    # ADD_OR_REMOVE_ONE with the multiplier halved is the bound for any two datasets (sensitivity 2C)
    return rdp_privacy_accountant.RdpAccountant()


def _events(compositions: Sequence[tuple[float, int]]) -> Any:
    import dp_accounting

    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(accountant_multiplier(z)), count)
            for z, count in compositions
        ]
    )


def epsilon_for(noise_multiplier: float, releases: int, delta: float = 1e-5) -> float:
    """Epsilon at ``delta`` after ``releases`` releases with noise multiplier ``z`` (``inf`` for z = 0)."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    accountant = _rdp_accountant()
    accountant.compose(_events([(noise_multiplier, releases)]))
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=64)
def calibrate_noise_multiplier(target_epsilon: float, releases: int, delta: float = 1e-5) -> float:
    """The smallest ``z`` (within 2e-6) whose ``releases`` releases cost at most ``target_epsilon`` at ``delta``.

    ``dp_accounting.calibrate_dp_mechanism`` over the accountant's multiplier ``z / 2``; it
    guarantees the returned value does not exceed the target.

    :raises LocalDpError: a parameter out of range, or no multiplier found.
    """
    import dp_accounting

    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise LocalDpError(f"dp-target-epsilon must be a finite number > 0, got {target_epsilon!r}")
    if releases < 1:
        raise LocalDpError(f"calibration needs at least one release, got {releases!r}")
    if not 0 < delta < 1:
        raise LocalDpError(f"dp-delta must be in (0, 1), got {delta!r}")
    try:
        multiplier = dp_accounting.calibrate_dp_mechanism(
            _rdp_accountant,
            lambda s: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s), releases),
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        )
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as err:
        raise LocalDpError(
            f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta} over {releases} releases: {err}"
        ) from None
    return 2.0 * float(multiplier)


#: Relative slack of the privacy filter: ``calibrate_noise_multiplier`` guarantees the target after the
#: planned releases; the accountant recomputing the same epsilon may differ in the last digits.
_BUDGET_SLACK = 1e-9


def check_budget(accountant: PartyAccountant, spec: LocalDpSpec, what: str, count: int = 1) -> None:
    """The privacy filter of ``dp-target-epsilon``: refuse a release that would take ``accountant`` past it.

    Without a target (``dp-noise-multiplier`` given) nothing is refused: the run's budget is its
    ``epsilon_for(z, planned releases)``, and the running value is reported.

    :param what: the release, named in the error (e.g. ``"round 51"``).
    :raises PrivacyBudgetExceeded: naming the release, the epsilon it would reach and the target.
    """
    if spec.target_epsilon is None:
        return
    after = accountant.epsilon_after(spec.noise_multiplier, count)
    if after > spec.target_epsilon * (1 + _BUDGET_SLACK):
        raise PrivacyBudgetExceeded(
            f"{what}: this release would take the party's epsilon to {after:.6g} at delta {accountant.delta:g} "
            f"after {accountant.releases + count} releases, past dp-target-epsilon {spec.target_epsilon:g}: refused "
            "(nothing was released; a resumed or longer run needs a new budget)"
        )


class PartyAccountant:
    """The RDP accountant of one party's releases (``dp_accounting.rdp.RdpAccountant``).

    Each :meth:`record_release` composes one Gaussian with multiplier ``z / 2`` (see the module
    docstring for why), without amplification. Its (epsilon, delta) covers the party's entire
    training data, for the released rows only (not the handshake's entity labels, the metrics,
    the best-round choice or timing).

    The state is a ledger of ``(z, count)`` pairs (:meth:`state_dict`, JSON), from which the RDP
    curve is rebuilt exactly, so a checkpoint and a resume keep it.

    :param delta: the delta epsilon is reported at.
    """

    def __init__(self, delta: float = 1e-5) -> None:
        if not 0 < delta < 1:
            raise LocalDpError(f"dp-delta must be in (0, 1), got {delta!r}")
        self.delta = float(delta)
        self._ledger: list[list[float | int]] = []  # [[z, count], ...], consecutive equal z merged
        self._epsilon: float | None = 0.0

    @property
    def releases(self) -> int:
        """How many releases were recorded."""
        return int(sum(count for _, count in self._ledger))

    @property
    def noise_multipliers(self) -> list[float]:
        """The distinct ``z`` of the recorded releases, in order."""
        return [float(z) for z, _ in self._ledger]

    def record_release(self, noise_multiplier: float, count: int = 1) -> None:
        """Count ``count`` releases with noise multiplier ``z`` (call once per upload actually sent)."""
        if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
            raise LocalDpError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier!r}")
        if count < 1:
            raise LocalDpError(f"count must be >= 1, got {count!r}")
        if self._ledger and self._ledger[-1][0] == float(noise_multiplier):
            self._ledger[-1][1] = int(self._ledger[-1][1]) + int(count)
        else:
            self._ledger.append([float(noise_multiplier), int(count)])
        self._epsilon = None

    @property
    def epsilon(self) -> float:
        """Epsilon at :attr:`delta` after the recorded releases (0 before any; ``inf`` if any had z = 0)."""
        if self._epsilon is None:
            if any(z <= 0 for z, _ in self._ledger):
                self._epsilon = math.inf
            else:
                accountant = _rdp_accountant()
                accountant.compose(_events([(float(z), int(n)) for z, n in self._ledger]))
                self._epsilon = float(accountant.get_epsilon(self.delta))
        return self._epsilon

    def epsilon_after(self, noise_multiplier: float, count: int = 1) -> float:
        """Epsilon at :attr:`delta` if ``count`` more releases with ``z`` were recorded (nothing recorded)."""
        if noise_multiplier <= 0 or any(z <= 0 for z, _ in self._ledger):
            return math.inf
        accountant = _rdp_accountant()
        accountant.compose(_events([*((float(z), int(n)) for z, n in self._ledger), (float(noise_multiplier), count)]))
        return float(accountant.get_epsilon(self.delta))

    def spent(self) -> dict[str, Any]:
        """JSON-ready: ``epsilon`` (``null`` when infinite, with ``epsilon_note``), ``delta``, ``releases``,
        ``noise_multiplier`` (the last ``z``), ``accountant``."""
        epsilon = json_epsilon(self.epsilon)
        return {
            "epsilon": epsilon,
            **({"epsilon_note": INFINITE_EPSILON_NOTE} if epsilon is None else {}),
            "delta": self.delta,
            "releases": self.releases,
            "noise_multiplier": self.noise_multipliers[-1] if self._ledger else None,
            "accountant": ACCOUNTANT_NAME,
        }

    def state_dict(self) -> dict[str, Any]:
        """The JSON-serialisable state (:meth:`load_state_dict` reads it back)."""
        return {
            "version": _STATE_VERSION,
            "accountant": ACCOUNTANT_NAME,
            "delta": self.delta,
            "ledger": [[float(z), int(n)] for z, n in self._ledger],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this accountant's state by :meth:`state_dict`'s output.

        :raises LocalDpError: another version, another accountant or another delta, or a bad ledger.
        """
        if state.get("version") != _STATE_VERSION or state.get("accountant") != ACCOUNTANT_NAME:
            raise LocalDpError(
                f"accountant state of version {state.get('version')!r} / {state.get('accountant')!r}, "
                f"expected {_STATE_VERSION} / {ACCOUNTANT_NAME!r}"
            )
        if float(state.get("delta", -1.0)) != self.delta:
            raise LocalDpError(
                f"accountant state is at delta {state.get('delta')!r}, this run's dp-delta is {self.delta}"
            )
        ledger = state.get("ledger")
        try:
            entries = [(float(z), int(n)) for z, n in ledger]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise LocalDpError(f"accountant state has a malformed ledger: {ledger!r}") from None
        self._ledger = []
        for z, n in entries:
            self.record_release(z, n)
        self._epsilon = None

    def to_json(self) -> str:
        """:meth:`state_dict` as one JSON string (e.g. a Flower ConfigRecord value)."""
        return json.dumps(self.state_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, delta: float) -> PartyAccountant:
        """An accountant at ``delta`` with :meth:`to_json`'s state.

        :raises LocalDpError: as :meth:`load_state_dict`, or the text is not JSON.
        """
        try:
            state = json.loads(text)
        except json.JSONDecodeError as err:
            raise LocalDpError(f"accountant state is not JSON: {err}") from None
        accountant = cls(delta)
        accountant.load_state_dict(state)
        return accountant
