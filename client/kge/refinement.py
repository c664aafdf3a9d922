"""The client side of the SimSkip refinement phase, and its configuration.

After federated KGE training each client refines the entity rows it holds with
:mod:`simskip_core` (contrastive training of a skip-connected encoder, Liu et al. ESWC 2024).
With ``simskip-federate = true`` the server averages the encoder and projection-head weights
over the clients (FedAvg weighted by the number of rows, :func:`client.kge.weights.fedavg_named`)
after every round of ``simskip-local-epochs`` epochs; with ``false`` each client keeps its own
weights (the local-only ablation). The refined rows are ``f(rows)`` of the final encoder.

A client round is stateless (:func:`fit_round`): it builds a fresh :class:`SimSkipTrainer`,
loads the round's starting weights and fits. This is what a Flower client needs (each message
may run in a fresh process), and it is FedAvg's usual client: a fresh optimizer every round.
The augmentation/shuffle seed is derived from (``simskip-seed``, client, round), so a replayed
round is identical and clients/rounds draw different views.

Variants: ``refined`` uses the configured encoder; every further search setting ``k``
(``simskip-search``) and seed ``j`` (``downstream-seeds``) trains its own encoder
``refined@k.j`` (:meth:`RefinementConfig.variant_name`; SimSkip seed ``simskip-seed + j``), and with
``simskip-no-skip-ablation = true`` ``refined-no-skip`` (the paper's ablation ``f(x) = g(x)``) per
seed, all side by side in the same rounds, so one run reports them all. Weights travel as one flat
named list with ``<variant>/`` prefixes (:func:`pack_variants`).

Run-config keys (kebab-case; :data:`REFINEMENT_KEYS` lists the phase's own ones):

``simskip-rounds`` (int, 10; 0 skips the phase), ``simskip-local-epochs`` (int, 5),
``simskip-federate`` (bool, true), ``simskip-no-skip-ablation`` (bool, false),
``downstream-protocols`` (comma-separated names of :data:`client.kge.protocols.DOWNSTREAM_PROTOCOLS`,
all four by default), ``refit-init`` (``trained`` and/or ``fresh``), ``refit-epochs`` (int, 5: the
epoch cap of the trained protocols), ``downstream-patience`` (int, 1), ``downstream-seeds`` (int, 1),
``simskip-gate-grid`` (comma-separated skip strengths in [0, 1], ``"0,0.25,1"``: the values > 0
are candidates), ``simskip-search`` (``"none"`` or ``;``-separated SimSkip overrides), and
``simskip-<field>`` for every :class:`simskip_core.SimSkipConfig` field except ``epochs``
(e.g. ``simskip-lr``, ``simskip-standardize``, ``simskip-augmentations`` as a comma-separated
string, ``simskip-hidden-dim = "none"``). Unknown ``simskip-*`` / ``refit-*`` / ``downstream-*``
keys fail, naming them; so do unknown protocol names and search fields, when the config is read
(before any process starts).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.kge.config import ConfigError
from client.kge.settings import KNOWN_NON_KGE_KEYS, FederationSettings
from client.kge.weights import fedavg_named
from simskip_core import SimSkipConfig, SimSkipTrainer
from simskip_core.errors import ConfigError as SimSkipConfigError

__all__ = [
    "DEFAULT_GATE_GRID",
    "NO_SKIP_VARIANT",
    "REFINED_VARIANT",
    "REFINEMENT_KEYS",
    "RefinementConfig",
    "RefinementConfigError",
    "RefinementInputError",
    "RefinementResult",
    "RoundUpdate",
    "client_seed_key",
    "fit_round",
    "initial_weights",
    "load_run_configs",
    "pack_variants",
    "parse_gate_grid",
    "round_record",
    "run_refinement",
    "transform_rows",
    "unpack_variants",
]

REFINED_VARIANT = "refined"
NO_SKIP_VARIANT = "refined-no-skip"
SIMSKIP_PREFIX = "simskip-"
REFIT_PREFIX = "refit-"
DOWNSTREAM_PREFIX = "downstream-"
#: Every protocol of client.kge.protocols.DOWNSTREAM_PROTOCOLS, in table order.
DEFAULT_DOWNSTREAM_PROTOCOLS: tuple[str, ...] = ("as-trained", "relation-refit", "adapter", "finetune")

NamedArrays = list[tuple[str, np.ndarray]]


class RefinementConfigError(ConfigError):
    """A refinement run-config key is unknown or its value is bad."""


class RefinementInputError(ValueError):
    """A client's entity rows cannot be refined (shape, dtype, non-finite, too few rows)."""


# ----------------------------------------------------------------------------- config
#: SimSkipConfig fields not settable through the run config: the epochs are rounds x local epochs.
_NOT_PASSED_THROUGH = frozenset({"epochs"})

#: Skip strengths alpha of the candidates x + alpha (f(x) - x) (1 = the raw SimSkip rows; 0, the
#: unrefined rows themselves, is accepted and ignored: the table always holds them).
DEFAULT_GATE_GRID: tuple[float, ...] = (0.0, 0.25, 1.0)
_GATE_GRID_KEY = "simskip-gate-grid"


def parse_gate_grid(value: Any) -> tuple[float, ...]:
    """A ``simskip-gate-grid`` value -> the sorted, distinct skip strengths.

    :param value: ``"0,0.25,0.5,1"``, a single number, or a sequence of numbers (a TOML array);
        ``""`` / ``"none"`` / ``None`` give ``()``, which :class:`RefinementConfig` refuses (it
        needs a strength > 0).
    :raises RefinementConfigError: for a value that is not a number, not finite, or outside [0, 1].
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        items: list[Any] = [] if text.lower() in ("", "none") else [item.strip() for item in text.split(",")]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise RefinementConfigError(f"{_GATE_GRID_KEY} must be a comma-separated string of numbers, got {value!r}")
    alphas = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise TypeError  # float(True) is 1.0: a bool is not a number here
            alpha = float(item)
        except (TypeError, ValueError):
            raise RefinementConfigError(f"{_GATE_GRID_KEY}: {item!r} is not a number (in {value!r})") from None
        if not 0.0 <= alpha <= 1.0:  # NaN fails too
            raise RefinementConfigError(f"{_GATE_GRID_KEY}: skip strength {item!r} is outside [0, 1] (in {value!r})")
        alphas.append(alpha)
    return tuple(sorted(set(alphas)))


@dataclass(frozen=True)
class RefinementConfig:
    """The SimSkip phase and the downstream re-fit budget.

    :param rounds: federated SimSkip rounds (``0``: no refinement phase).
    :param local_epochs: SimSkip epochs each client trains per round.
    :param federate: FedAvg the encoder + head weights each round; ``False`` is local-only.
    :param no_skip_ablation: also train the no-skip encoder (reported as ``refined-no-skip``).
    :param refit_epochs: the epoch cap of every trained downstream protocol (:mod:`client.kge.protocols`).
    :param gate_grid: skip strengths ``alpha`` of the SimSkip candidates ``x + alpha (f(x) - x)``
        (``simskip-gate-grid``); the values > 0 are candidates, chosen on valid with the search
        settings (:mod:`client.kge.comparison`). Any form :func:`parse_gate_grid` accepts.
    :param search: SimSkip settings to choose from on valid (``simskip-search``: alternatives
        separated by ``;``, each a comma-separated list of ``field=value`` overrides of the
        SimSkip config, e.g. ``"lr=1e-3;lr=1e-4,temperature=0.1"``); empty: the config alone.
        Each setting trains its own encoder, side by side, in the same rounds.
    :param downstream_protocols: the protocols of :data:`client.kge.protocols.DOWNSTREAM_PROTOCOLS`
        every row goes through (``downstream-protocols``, comma-separated).
    :param refit_init: where ``relation-refit`` starts its relations: ``trained`` and/or ``fresh``.
    :param downstream_seeds: seeds ``j``: SimSkip (``simskip-seed + j``), the perturbation and
        the trained protocols (``seed + j``) are repeated for each; rows are reported as mean +- std.
    :param downstream_patience: checks (one per epoch) without a better valid score before a
        trained protocol stops; ``refit_epochs`` caps its epochs.
    :param simskip: the SimSkip hyperparameters (``epochs`` is ignored: see ``local_epochs``).
    """

    rounds: int = 10
    local_epochs: int = 5
    federate: bool = True
    no_skip_ablation: bool = False
    refit_epochs: int = 5
    gate_grid: tuple[float, ...] = DEFAULT_GATE_GRID
    search: tuple[tuple[tuple[str, str], ...], ...] = ()
    downstream_protocols: tuple[str, ...] = DEFAULT_DOWNSTREAM_PROTOCOLS
    refit_init: tuple[str, ...] = ("trained",)
    downstream_seeds: int = 1
    downstream_patience: int = 1
    simskip: SimSkipConfig = field(default_factory=SimSkipConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gate_grid", parse_gate_grid(self.gate_grid))  # frozen: normalize in place
        object.__setattr__(self, "search", parse_search(self.search, self.simskip))
        object.__setattr__(self, "downstream_protocols", _names(self.downstream_protocols, "downstream-protocols"))
        object.__setattr__(self, "refit_init", _names(self.refit_init, "refit-init"))
        from client.kge.protocols import UnknownDownstreamProtocolError, protocol_labels

        try:  # named choices fail here, before any process starts
            protocol_labels(self.downstream_protocols, self.refit_init)
        except UnknownDownstreamProtocolError as error:
            raise RefinementConfigError(str(error)) from None
        if not any(alpha > 0 for alpha in self.gate_grid):
            raise RefinementConfigError(f"{_GATE_GRID_KEY} needs a skip strength > 0 (the refined candidates), got {self.gate_grid}")
        for name in ("downstream_seeds", "downstream_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RefinementConfigError(f"{_key(name)} must be an int >= 1, got {value!r}")
        for name in ("rounds", "local_epochs", "refit_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RefinementConfigError(f"{_key(name)} must be an int >= 0, got {value!r}")
        if self.local_epochs < 1:
            raise RefinementConfigError(f"simskip-local-epochs must be >= 1, got {self.local_epochs}")
        for name in ("federate", "no_skip_ablation"):
            if not isinstance(getattr(self, name), bool):
                raise RefinementConfigError(f"{_key(name)} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RefinementConfig:
        """Read the phase's keys from a kebab-case run config; other keys are ignored.

        :raises RefinementConfigError: naming unknown ``simskip-*`` / ``refit-*`` keys or bad values.
        """
        own = {_key(f.name): f.name for f in dataclasses.fields(cls) if f.name != "simskip"}
        passthrough = {
            SIMSKIP_PREFIX + f.name.replace("_", "-"): f.name
            for f in dataclasses.fields(SimSkipConfig)
            if f.name not in _NOT_PASSED_THROUGH
        }
        unknown = sorted(
            key for key in run_config
            if key.startswith((SIMSKIP_PREFIX, REFIT_PREFIX, DOWNSTREAM_PREFIX)) and key not in own and key not in passthrough
        )
        if unknown:
            raise RefinementConfigError(
                f"unknown refinement key(s) {unknown}; known: {sorted(own) + sorted(passthrough)}"
            )
        values: dict[str, Any] = {}
        for key, name in own.items():
            if key in run_config:
                value = run_config[key]
                if isinstance(value, float) and value.is_integer() and name in _INT_FIELDS:
                    value = int(value)
                values[name] = value
        overrides = [f"{passthrough[key]}={_as_text(value)}" for key, value in run_config.items() if key in passthrough]
        try:
            values["simskip"] = SimSkipConfig().with_overrides(overrides)
        except SimSkipConfigError as error:
            raise RefinementConfigError(f"simskip run config: {error}") from None
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The config as kebab-case run-config entries (``augmentations`` comma-joined, ``None`` as ``"none"``)."""
        entries: dict[str, Any] = {_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "simskip"}
        entries[_GATE_GRID_KEY] = ",".join(_alpha_text(alpha) for alpha in self.gate_grid)
        entries["simskip-search"] = search_text(self.search)
        entries["downstream-protocols"] = ",".join(self.downstream_protocols)
        entries["refit-init"] = ",".join(self.refit_init)
        for name, value in self.simskip.to_dict().items():
            if name in _NOT_PASSED_THROUGH:
                continue
            entries[SIMSKIP_PREFIX + name.replace("_", "-")] = _as_text(value) if value is None or isinstance(value, list) else value
        return entries

    @property
    def main_variant(self) -> str:
        """The variant the configured encoder trains (``refined``, or ``refined-no-skip`` when ``simskip-skip = false``)."""
        return next(iter(self.variants()))

    @property
    def enabled(self) -> bool:
        """Whether the SimSkip phase runs (``rounds > 0``)."""
        return self.rounds > 0

    def search_settings(self) -> list[dict[str, Any]]:
        """The search settings as override dicts (``[{}]``: the config alone)."""
        return [dict(setting) for setting in self.search] or [{}]

    def candidates(self) -> list[tuple[int, float]]:
        """The SimSkip candidates chosen from on valid: (search setting index, skip strength > 0)."""
        return [(k, alpha) for k in range(len(self.search_settings())) for alpha in self.gate_grid if alpha > 0]

    @staticmethod
    def variant_name(base: str, setting: int, seed: int) -> str:
        """Name of the encoder of search setting ``setting`` and seed index ``seed``; ``base`` for (0, 0)."""
        return base if (setting, seed) == (0, 0) else f"{base}@{setting}.{seed}"

    def variants(self) -> dict[str, SimSkipConfig]:
        """Variant name -> its SimSkip config, in report order: every search setting x seed
        (:meth:`variant_name`), then the no-skip ablation per seed."""
        main = REFINED_VARIANT if self.simskip.skip else NO_SKIP_VARIANT
        variants = {}
        for setting, overrides in enumerate(self.search_settings()):
            for seed in range(self.downstream_seeds):
                variants[self.variant_name(main, setting, seed)] = self.simskip.with_overrides(
                    [f"{key}={value}" for key, value in overrides.items()]).replace(seed=self.simskip.seed + seed)
        if self.no_skip_ablation and self.simskip.skip:
            for seed in range(self.downstream_seeds):
                variants[self.variant_name(NO_SKIP_VARIANT, 0, seed)] = self.simskip.replace(
                    skip=False, seed=self.simskip.seed + seed)
        return variants


def _key(name: str) -> str:
    """Run-config key of a :class:`RefinementConfig` field."""
    return ("" if name.startswith(("refit", "downstream")) else SIMSKIP_PREFIX) + name.replace("_", "-")


_INT_FIELDS = frozenset({"rounds", "local_epochs", "refit_epochs", "downstream_seeds", "downstream_patience"})


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A comma-separated string (or a list) of names -> a tuple of distinct names, in order."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        raise RefinementConfigError(f"{key} must be a comma-separated string of names, got {value!r}")
    return tuple(dict.fromkeys(item for item in items if item))


def parse_search(value: Any, base: SimSkipConfig | None = None) -> tuple[tuple[tuple[str, str], ...], ...]:
    """A ``simskip-search`` value -> the settings as tuples of ``(field, value text)`` overrides.

    ``"lr=1e-3;lr=1e-4,temperature=0.1"``: two settings. ``""`` / ``"none"``: the config alone.
    Each override is checked against :class:`SimSkipConfig` now (unknown field, bad value,
    ``epochs`` / ``seed`` which the phase sets itself), so a typo fails before anything starts.

    :raises RefinementConfigError: naming the setting and the problem.
    """
    if isinstance(value, tuple) and all(isinstance(s, tuple) for s in value):
        settings = [tuple((str(k), str(v)) for k, v in setting) for setting in value]
    elif isinstance(value, str):
        text = value.strip()
        settings = []
        if text.lower() not in ("", "none"):
            for part in text.split(";"):
                pairs = []
                for item in (i.strip() for i in part.split(",")):
                    key, sep, val = item.partition("=")
                    if not sep or not key.strip():
                        raise RefinementConfigError(f"simskip-search: {item!r} in {part!r} is not field=value")
                    pairs.append((key.strip().replace("-", "_"), val.strip()))
                settings.append(tuple(pairs))
    else:
        raise RefinementConfigError(f"simskip-search must be a string like 'lr=1e-3;lr=1e-4', got {value!r}")
    base = base or SimSkipConfig()
    for setting in settings:
        for key, _ in setting:
            if key in ("epochs", "seed"):
                raise RefinementConfigError(f"simskip-search: {key!r} is set by the phase (rounds x local epochs; seeds), not searchable")
        try:
            base.with_overrides([f"{k}={v}" for k, v in setting])
        except SimSkipConfigError as error:
            raise RefinementConfigError(f"simskip-search setting {search_text((setting,))!r}: {error}") from None
    return tuple(settings)


def search_text(search: Sequence[Sequence[tuple[str, str]]]) -> str:
    """Inverse of :func:`parse_search` (``"none"`` for no search)."""
    return ";".join(",".join(f"{k}={v}" for k, v in setting) for setting in search) or "none"


def _alpha_text(alpha: float) -> str:
    """Shortest text that reads back as the same float (``0``, ``0.25``, ``1``)."""
    return repr(float(alpha)).removesuffix(".0")


def _as_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


#: The phase's own keys with their defaults (what ``pyproject.toml``'s run config must list).
REFINEMENT_KEYS: dict[str, Any] = RefinementConfig().to_run_config()


# ----------------------------------------------------------------------------- weights
def pack_variants(weights: Mapping[str, Sequence[tuple[str, np.ndarray]]]) -> NamedArrays:
    """``{variant: [(name, array)]}`` -> one flat list of ``("<variant>/<name>", array)``."""
    return [(f"{variant}/{name}", array) for variant, named in weights.items() for name, array in named]


def unpack_variants(flat: Sequence[tuple[str, np.ndarray]], variants: Sequence[str]) -> dict[str, NamedArrays]:
    """Inverse of :func:`pack_variants`; every expected variant must be present.

    :raises RefinementInputError: for an entry without a known ``<variant>/`` prefix or a missing variant.
    """
    out: dict[str, NamedArrays] = {variant: [] for variant in variants}
    for name, array in flat:
        variant, sep, rest = name.partition("/")
        if not sep or variant not in out:
            raise RefinementInputError(f"weight entry {name!r} has no known variant prefix (expected one of {list(variants)})")
        out[variant].append((rest, array))
    missing = [variant for variant, named in out.items() if not named]
    if missing:
        raise RefinementInputError(f"no weights for variant(s) {missing}")
    return out


def initial_weights(entity_dim: int, config: RefinementConfig) -> dict[str, NamedArrays]:
    """The starting encoder + head weights of every variant, from ``simskip-seed``.

    :param entity_dim: width of the rows to refine (``2 * embedding_dim`` for complex models).
    """
    return {
        variant: SimSkipTrainer(entity_dim, cfg.replace(device="cpu")).get_weights()
        for variant, cfg in config.variants().items()
    }


# ----------------------------------------------------------------------------- client round
def client_seed_key(client_id: str | int) -> int:
    """A stable non-negative int for a client name (for seeding)."""
    text = str(client_id)
    return int(text) if text.isdigit() else zlib.crc32(text.encode("utf-8"))


def _round_seed(base_seed: int, client_id: str | int, server_round: int) -> int:
    sequence = np.random.SeedSequence([int(base_seed), client_seed_key(client_id), int(server_round)])
    return int(sequence.generate_state(1)[0] % (2**31))


def _check_rows(rows: Any, client_id: str | int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] < 2 or rows.shape[1] < 1:
        raise RefinementInputError(f"client {client_id}: entity rows must be (n >= 2, dim), got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.floating):
        raise RefinementInputError(f"client {client_id}: entity rows dtype {rows.dtype} is not a real float type")
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise RefinementInputError(f"client {client_id}: entity row(s) {np.flatnonzero(bad)[:10].tolist()} hold NaN or inf")
    return np.ascontiguousarray(rows, dtype=np.float32)


@dataclass
class RoundUpdate:
    """One client's result of one SimSkip round.

    :param weights: variant -> trained encoder + head weights.
    :param num_rows: the number of entity rows refined (the FedAvg weight).
    :param losses: variant -> mean NT-Xent loss of each local epoch.
    :param seconds: wall time of the round's fitting.
    """

    weights: dict[str, NamedArrays]
    num_rows: int
    losses: dict[str, list[float]]
    seconds: float = 0.0


def fit_round(
    rows: np.ndarray,
    start_weights: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    config: RefinementConfig,
    *,
    client_id: str | int,
    server_round: int,
) -> RoundUpdate:
    """Train every variant ``config.local_epochs`` epochs on ``rows``, from ``start_weights``.

    :param rows: float (n, entity_dim) entity rows of this client (local-id order); complex
        models' rows are real pairs already, refined as real columns.
    :param start_weights: variant -> the round's starting weights (server average, or the
        client's own previous weights in the local-only ablation).
    :param config: the phase config.
    :param client_id: seeds the views together with ``server_round``.
    :param server_round: 1-based round number.
    :raises RefinementInputError: for bad rows or missing variants.
    """
    rows = _check_rows(rows, client_id)
    started = time.perf_counter()
    weights, losses = {}, {}
    for variant, cfg in config.variants().items():
        if variant not in start_weights:
            raise RefinementInputError(f"client {client_id}: no starting weights for variant {variant!r}")
        trainer = SimSkipTrainer(rows.shape[1], cfg.replace(seed=_round_seed(cfg.seed, client_id, server_round)))
        trainer.set_weights(list(start_weights[variant]))
        losses[variant] = trainer.fit(rows, epochs=config.local_epochs)
        weights[variant] = trainer.get_weights()
    return RoundUpdate(weights, int(rows.shape[0]), losses, time.perf_counter() - started)


def transform_rows(
    rows: np.ndarray, weights: Mapping[str, Sequence[tuple[str, np.ndarray]]], config: RefinementConfig, *, client_id: str | int = 0
) -> dict[str, np.ndarray]:
    """The refined rows ``f(rows)`` of every variant's final encoder: float32, shape of ``rows``."""
    rows = _check_rows(rows, client_id)
    refined = {}
    for variant, cfg in config.variants().items():
        trainer = SimSkipTrainer(rows.shape[1], cfg)
        trainer.set_weights(list(weights[variant]))
        refined[variant] = np.ascontiguousarray(trainer.transform(rows), dtype=np.float32)
    return refined


# ----------------------------------------------------------------------------- in-process driver
@dataclass
class RefinementResult:
    """Outcome of :func:`run_refinement`.

    :param refined: client -> variant -> refined rows (float32, shape of the client's rows).
    :param weights: client -> variant -> the final weights the client transformed with.
    :param history: one dict per round: ``{"round", "simskip_loss": {client: {variant: last epoch loss}},
        "simskip_loss_overall": {variant: row-weighted mean}, "seconds"}``.
    """

    refined: dict[str, dict[str, np.ndarray]]
    weights: dict[str, dict[str, NamedArrays]]
    history: list[dict[str, Any]]


def run_refinement(
    rows_by_client: Mapping[str, np.ndarray],
    config: RefinementConfig,
    *,
    on_round_end: Callable[[dict[str, Any]], None] | None = None,
    aggregation: str = "mean",
    aggregation_trim: float = 0.25,
) -> RefinementResult:
    """Run the whole SimSkip phase in this process (the same rounds Flower runs, without transport).

    Used by the "refine only" command on a finished run folder and by the tests; the Flower
    strategy performs exactly these steps with messages.

    :param rows_by_client: client name -> its entity rows (all of the same width).
    :param config: the phase config (``rounds >= 1``).
    :param on_round_end: receives each round's history dict.
    :param aggregation: the rule of the encoder weights' average (``aggregation``,
        :func:`client.kge.weights.fedavg_named`), clients in name order as the strategy has them.
    :param aggregation_trim: the fraction cut from each end by ``trimmed-mean``.
    """
    if not rows_by_client:
        raise RefinementInputError("no client rows to refine")
    widths = {name: np.shape(rows)[1] if np.ndim(rows) == 2 else None for name, rows in rows_by_client.items()}
    if len(set(widths.values())) != 1 or None in widths.values():
        raise RefinementInputError(f"clients' entity rows differ in width or are not 2-D: {widths}")
    dim = next(iter(widths.values()))
    start = initial_weights(int(dim), config)
    current = dict.fromkeys(rows_by_client, start)
    history = []
    for server_round in range(1, config.rounds + 1):
        started = time.perf_counter()
        updates = {
            name: fit_round(rows, current[name], config, client_id=name, server_round=server_round)
            for name, rows in rows_by_client.items()
        }
        if config.federate:
            averaged = {
                variant: fedavg_named([(u.weights[variant], u.num_rows) for u in updates.values()],
                                      aggregation, aggregation_trim)
                for variant in config.variants()
            }
            current = dict.fromkeys(rows_by_client, averaged)
        else:
            current = {name: update.weights for name, update in updates.items()}
        record = round_record(server_round, updates, time.perf_counter() - started)
        history.append(record)
        if on_round_end is not None:
            on_round_end(record)
    refined = {name: transform_rows(rows, current[name], config, client_id=name) for name, rows in rows_by_client.items()}
    return RefinementResult(refined=refined, weights=current, history=history)


def round_record(server_round: int, updates: Mapping[str, RoundUpdate], seconds: float) -> dict[str, Any]:
    """The history row of one SimSkip round (shared by the in-process driver and the strategy)."""
    per_client = {name: {variant: float(losses[-1]) for variant, losses in u.losses.items()} for name, u in updates.items()}
    total = sum(u.num_rows for u in updates.values())
    variants = sorted({v for losses in per_client.values() for v in losses})
    overall = {
        variant: sum(per_client[name][variant] * u.num_rows for name, u in updates.items()) / total for variant in variants
    }
    return {
        "phase": "simskip",
        "round": int(server_round),
        "simskip_loss": per_client,
        "simskip_loss_overall": overall,
        "num_rows": {name: u.num_rows for name, u in updates.items()},
        "seconds": round(float(seconds), 4),
    }


# ----------------------------------------------------------------------------- whole run config
def load_run_configs(run_config: Mapping[str, Any]) -> tuple[Any, Any, RefinementConfig]:
    """Split a Flower run config into federation settings, KGE config and refinement config.

    Every key has exactly one owner (:class:`client.kge.settings.FederationSettings`,
    :class:`client.kge.config.KGEConfig`, :data:`REFINEMENT_KEYS`), so a misspelt one fails.

    :returns: ``(FederationSettings, KGEConfig, RefinementConfig)``.
    :raises client.kge.config.ConfigError: naming an unknown key or a bad value.
    """
    from client.kge.config import KGEConfig

    settings = FederationSettings.from_run_config(run_config)
    kge = KGEConfig.from_run_config(run_config, extra_known_keys=KNOWN_NON_KGE_KEYS | set(REFINEMENT_KEYS))
    return settings, kge, RefinementConfig.from_run_config(run_config)
