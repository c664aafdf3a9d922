"""The configuration of the SimSkip refinement phase and of the downstream evaluation:
:class:`RefinementConfig`, its run-config keys (declared on its fields, :func:`client.kge.registry.key_field`,
plus ``simskip-<field>`` for the :class:`simskip_core.SimSkipConfig` fields) and their parsers.

Run-config keys (kebab-case; :data:`REFINEMENT_KEYS` lists the phase's own ones):

``simskip-rounds`` (int, 10; 0 skips the phase), ``simskip-local-epochs`` (int, 5),
``simskip-federate`` (bool, true), ``simskip-no-skip-ablation`` (bool, false),
``downstream-protocols`` (comma-separated names of :data:`client.kge.protocols.DOWNSTREAM_PROTOCOLS`,
all four by default), ``refit-init`` (``trained`` and/or ``fresh``), ``refit-epochs`` (int, 5: the
epoch cap of the trained protocols), ``downstream-patience`` (int, 1), ``downstream-seeds`` (int, 1),
``simskip-gate-grid`` (comma-separated skip strengths in [0, 1], ``"0,0.25,1"``: the values > 0
are candidates), ``simskip-search`` (``"none"`` or ``;``-separated SimSkip overrides),
``simskip-structure-mix`` (float in [0, 1], 0.5: ``beta`` of the structure view
``x + beta (evidence - x)`` that ``simskip-augmentations = "row_view,..."`` uses,
:mod:`client.kge.structure_view`), and
``simskip-<field>`` for every :class:`simskip_core.SimSkipConfig` field except ``epochs``
(e.g. ``simskip-lr``, ``simskip-standardize``, ``simskip-augmentations`` as a comma-separated
string, ``simskip-hidden-dim = "none"``). Unknown ``simskip-*`` / ``refit-*`` / ``downstream-*``
keys fail, naming them; so do unknown protocol names and search fields, when the config is read
(before any process starts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client.kge.registry import ConfigError, Key, coerce, key_field, keys_of
from simskip_core import SimSkipConfig
from simskip_core.augment import AUGMENTATIONS, ROW_VIEW
from simskip_core.encoder import ACTIVATIONS, NORMALIZATIONS
from simskip_core.errors import ConfigError as SimSkipConfigError
from simskip_core.errors import shown

__all__ = [
    "DEFAULT_DOWNSTREAM_PROTOCOLS",
    "DEFAULT_GATE_GRID",
    "DOWNSTREAM_PROTOCOL_NAMES",
    "NO_SKIP_VARIANT",
    "REFINED_VARIANT",
    "REFINEMENT_KEYS",
    "REFINEMENT_REGISTRY_KEYS",
    "REFIT_INITS",
    "RefinementConfig",
    "RefinementConfigError",
    "check_protocol_names",
    "parse_gate_grid",
    "parse_search",
    "search_text",
]

REFINED_VARIANT = "refined"
NO_SKIP_VARIANT = "refined-no-skip"
SIMSKIP_PREFIX = "simskip-"
REFIT_PREFIX = "refit-"
DOWNSTREAM_PREFIX = "downstream-"
#: Every protocol of client.kge.protocols.DOWNSTREAM_PROTOCOLS, in table order.
DEFAULT_DOWNSTREAM_PROTOCOLS: tuple[str, ...] = ("as-trained", "relation-refit", "adapter", "finetune")
#: The names of :data:`client.kge.protocols.DOWNSTREAM_PROTOCOLS` (``downstream-protocols`` choices; a
#: test checks that the two agree). The protocols themselves need torch and PyKEEN; the names do not.
DOWNSTREAM_PROTOCOL_NAMES: tuple[str, ...] = DEFAULT_DOWNSTREAM_PROTOCOLS
#: Where ``relation-refit`` starts its relations (``refit-init`` choices; :data:`client.kge.protocols.REFIT_INITS`).
REFIT_INITS: tuple[str, ...] = ("trained", "fresh")


class RefinementConfigError(ConfigError):
    """A refinement run-config key is unknown or its value is bad."""


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
        raise RefinementConfigError(f"{_GATE_GRID_KEY} must be a comma-separated string of numbers, got {shown(value)}")
    alphas = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise TypeError  # float(True) is 1.0: a bool is not a number here
            alpha = float(item)
        except (TypeError, ValueError):
            raise RefinementConfigError(
                f"{_GATE_GRID_KEY}: {shown(item)} is not a number (in {shown(value)})"
            ) from None
        if not 0.0 <= alpha <= 1.0:  # NaN fails too
            raise RefinementConfigError(
                f"{_GATE_GRID_KEY}: skip strength {shown(item)} is outside [0, 1] (in {shown(value)})"
            )
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
    :param downstream_top_candidates: how many SimSkip candidates each *trained* protocol trains: the
        ``K`` with the best valid score at their start (the candidate rows with the trained relations:
        what ``as-trained`` scores), mean over seeds, ties as the final choice breaks them; ``0`` (the
        default): every candidate. Chosen on valid only, before any training; the pruned candidates
        are recorded with their start scores (:mod:`client.kge.comparison`). A client without trained
        relations that fit its model trains every candidate (its record says so).
    :param structure_mix: ``beta`` of the structure view ``x + beta (evidence - x)``
        (``simskip-structure-mix``, in ``[0, 1]``), used only where a SimSkip config names the
        ``row_view`` augmentation (:attr:`uses_row_view`; :mod:`client.kge.structure_view`).
    :param simskip: the SimSkip hyperparameters (``epochs`` is ignored: see ``local_epochs``).
    """

    rounds: int = key_field(
        10,
        help="federated SimSkip rounds (0: no refinement phase; a budget)",
        key="simskip-rounds",
        model_defining=False,
    )
    local_epochs: int = key_field(
        5, help="SimSkip epochs each client trains per round", key="simskip-local-epochs", model_defining=True
    )
    federate: bool = key_field(
        True,
        help="FedAvg the encoder + head weights each round (false: local only)",
        key="simskip-federate",
        model_defining=True,
    )
    no_skip_ablation: bool = key_field(
        False,
        help="also train the no-skip encoder (refined-no-skip)",
        key="simskip-no-skip-ablation",
        model_defining=True,
    )
    refit_epochs: int = key_field(5, help="the epoch cap of every trained downstream protocol", model_defining=True)
    gate_grid: tuple[float, ...] = key_field(
        DEFAULT_GATE_GRID,
        help="skip strengths of the SimSkip candidates",
        key="simskip-gate-grid",
        model_defining=True,
        value_type=str,
    )
    search: tuple[tuple[tuple[str, str], ...], ...] = key_field(
        (),
        help="SimSkip settings chosen from on valid (';'-separated field=value lists)",
        key="simskip-search",
        model_defining=True,
        value_type=str,
    )
    downstream_protocols: tuple[str, ...] = key_field(
        DEFAULT_DOWNSTREAM_PROTOCOLS,
        help="the downstream protocols every row goes through",
        model_defining=True,
        choices=DOWNSTREAM_PROTOCOL_NAMES,
        multiple=True,
        value_type=str,
    )
    refit_init: tuple[str, ...] = key_field(
        ("trained",),
        help="where relation-refit starts its relations",
        model_defining=True,
        choices=REFIT_INITS,
        multiple=True,
        value_type=str,
    )
    downstream_seeds: int = key_field(
        1, help="seeds of SimSkip, the perturbation and the trained protocols", model_defining=True
    )
    downstream_patience: int = key_field(
        1, help="checks without a better valid score before a protocol stops", model_defining=True
    )
    downstream_top_candidates: int = key_field(
        0,
        help="candidates each trained protocol trains: the K best by valid score at their start (0: all)",
        model_defining=True,
    )
    structure_mix: float = key_field(
        0.5,
        help="beta of the structure view x + beta (evidence - x) of simskip-augmentations row_view",
        key="simskip-structure-mix",
        model_defining=True,
    )
    simskip: SimSkipConfig = dataclasses.field(default_factory=SimSkipConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gate_grid", parse_gate_grid(self.gate_grid))  # frozen: normalize in place
        object.__setattr__(self, "search", parse_search(self.search, self.simskip))
        object.__setattr__(self, "downstream_protocols", _names(self.downstream_protocols, "downstream-protocols"))
        object.__setattr__(self, "refit_init", _names(self.refit_init, "refit-init"))
        check_protocol_names(
            self.downstream_protocols, self.refit_init
        )  # named choices fail here, before any process starts
        if not any(alpha > 0 for alpha in self.gate_grid):
            raise RefinementConfigError(
                f"{_GATE_GRID_KEY} needs a skip strength > 0 (the refined candidates), got {shown(self.gate_grid)}"
            )
        for name in ("downstream_seeds", "downstream_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RefinementConfigError(f"{_key(name)} must be an int >= 1, got {shown(value)}")
        for name in ("rounds", "local_epochs", "refit_epochs", "downstream_top_candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RefinementConfigError(f"{_key(name)} must be an int >= 0, got {shown(value)}")
        if self.local_epochs < 1:
            raise RefinementConfigError(f"simskip-local-epochs must be >= 1, got {shown(self.local_epochs)}")
        for name in ("federate", "no_skip_ablation"):
            if not isinstance(getattr(self, name), bool):
                raise RefinementConfigError(f"{_key(name)} must be a bool, got {shown(getattr(self, name))}")
        mix = self.structure_mix
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1:  # NaN fails too
            raise RefinementConfigError(f"{_key('structure_mix')} must be a number in [0, 1], got {shown(mix)}")
        object.__setattr__(self, "structure_mix", float(mix))  # frozen: normalize in place (an int 0 / 1)

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
            key
            for key in run_config
            if key.startswith((SIMSKIP_PREFIX, REFIT_PREFIX, DOWNSTREAM_PREFIX))
            and key not in own
            and key not in passthrough
        )
        if unknown:
            raise RefinementConfigError(
                f"unknown refinement key(s) {unknown}; known: {sorted(own) + sorted(passthrough)}"
            )
        values: dict[str, Any] = {}
        for key, name in own.items():
            if key in run_config:
                value = run_config[key]
                if name in _TYPED_FIELDS:  # the registry's one type rule; a mismatch is reported by __post_init__
                    try:
                        value = coerce(value, _TYPED_FIELDS[name])
                    except (TypeError, OverflowError):  # an int past 1.8e308 for a float key
                        pass
                values[name] = value
        overrides = [
            f"{passthrough[key]}={_as_text(key, value)}" for key, value in run_config.items() if key in passthrough
        ]
        try:
            values["simskip"] = SimSkipConfig().with_overrides(overrides)
        except SimSkipConfigError as error:
            raise RefinementConfigError(f"simskip run config: {error}") from None
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The config as kebab-case run-config entries (``augmentations`` comma-joined, ``None`` as ``"none"``)."""
        entries: dict[str, Any] = {
            _key(f.name): getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "simskip"
        }
        entries[_GATE_GRID_KEY] = ",".join(_alpha_text(alpha) for alpha in self.gate_grid)
        entries["simskip-search"] = search_text(self.search)
        entries["downstream-protocols"] = ",".join(self.downstream_protocols)
        entries["refit-init"] = ",".join(self.refit_init)
        for name, value in self.simskip.to_dict().items():
            if name in _NOT_PASSED_THROUGH:
                continue
            entries[SIMSKIP_PREFIX + name.replace("_", "-")] = (
                _as_text(name, value) if value is None or isinstance(value, list) else value
            )
        return entries

    @property
    def main_variant(self) -> str:
        """The variant the configured encoder trains (``refined``, or ``refined-no-skip`` when ``simskip-skip = false``)."""
        return next(iter(self.variants()))

    @property
    def uses_row_view(self) -> bool:
        """Whether some variant's SimSkip config names the ``row_view`` augmentation, so the caller
        must pass each client's structure view (:mod:`client.kge.structure_view`)."""
        return any(ROW_VIEW in cfg.augmentations for cfg in self.variants().values())

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
                    [f"{key}={value}" for key, value in overrides.items()]
                ).replace(seed=self.simskip.seed + seed)
        if self.no_skip_ablation and self.simskip.skip:
            for seed in range(self.downstream_seeds):
                variants[self.variant_name(NO_SKIP_VARIANT, 0, seed)] = self.simskip.replace(
                    skip=False, seed=self.simskip.seed + seed
                )
        return variants


#: Field name -> its run-config key (declared with the field).
_FIELD_KEYS: dict[str, str] = {
    spec.name: spec.metadata["key"] or spec.name.replace("_", "-")
    for spec in dataclasses.fields(RefinementConfig)
    if "help" in spec.metadata
}


def _key(name: str) -> str:
    """Run-config key of a :class:`RefinementConfig` field."""
    return _FIELD_KEYS[name]


#: The fields whose run-config value has one scalar type (the others are parsed from text or lists).
_TYPED_FIELDS: dict[str, type] = {
    **dict.fromkeys(
        (
            "rounds",
            "local_epochs",
            "refit_epochs",
            "downstream_seeds",
            "downstream_patience",
            "downstream_top_candidates",
        ),
        int,
    ),
    **dict.fromkeys(("federate", "no_skip_ablation"), bool),
    "structure_mix": float,
}


def check_protocol_names(
    names: Sequence[str], refit_inits: Sequence[str], error: type[ValueError] = RefinementConfigError
) -> None:
    """The one check of ``downstream-protocols`` / ``refit-init`` names (also used by
    :func:`client.kge.protocols.protocol_labels`, with its own error class).

    :raises error: for an unknown protocol, an unknown ``refit-init`` of ``relation-refit``, or no
        protocol, naming the choices.
    """
    for name in names:
        if name not in DOWNSTREAM_PROTOCOL_NAMES:
            raise error(
                f"downstream-protocols: unknown protocol {name!r}; choose from {sorted(DOWNSTREAM_PROTOCOL_NAMES)}"
            )
        if name == "relation-refit":
            for init in refit_inits:
                if init not in REFIT_INITS:
                    raise error(f"refit-init: unknown init {init!r}; choose from {list(REFIT_INITS)}")
    if not names:
        raise error("downstream-protocols is empty; choose from " + str(sorted(DOWNSTREAM_PROTOCOL_NAMES)))


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A comma-separated string (or a list) of names -> a tuple of distinct names, in order."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        raise RefinementConfigError(f"{key} must be a comma-separated string of names, got {shown(value)}")
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
        raise RefinementConfigError(f"simskip-search must be a string like 'lr=1e-3;lr=1e-4', got {shown(value)}")
    base = base or SimSkipConfig()
    for setting in settings:
        for key, _ in setting:
            if key in ("epochs", "seed"):
                raise RefinementConfigError(
                    f"simskip-search: {key!r} is set by the phase (rounds x local epochs; seeds), not searchable"
                )
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


def _as_text(key: str, value: Any) -> str:
    """A pass-through value as the text SimSkipConfig.with_overrides parses by field type."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1024:
        # str() of an int of over 4,300 digits raises ValueError; no SimSkip setting is that large
        raise RefinementConfigError(f"{key}: {shown(value)} is out of range")
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


#: The phase's own keys with their defaults (what ``pyproject.toml``'s run config must list).
REFINEMENT_KEYS: dict[str, Any] = RefinementConfig().to_run_config()

#: SimSkipConfig fields a resume may change: devices, batch sizes of pure inference, progress output.
_HARMLESS_SIMSKIP_FIELDS = frozenset({"device", "progress", "transform_batch_size"})
#: Named choices of SimSkipConfig fields.
_SIMSKIP_CHOICES: dict[str, tuple[tuple[str, ...], bool]] = {
    "activation": (tuple(sorted(ACTIVATIONS)), False),
    "normalization": (tuple(sorted(NORMALIZATIONS)), False),
    "augmentations": (tuple(sorted(AUGMENTATIONS)), True),
}


def _simskip_keys() -> tuple[Key, ...]:
    """The ``simskip-<field>`` keys passed through to :class:`SimSkipConfig` (defaults as run-config values)."""
    keys = []
    for spec in dataclasses.fields(SimSkipConfig):
        if spec.name in _NOT_PASSED_THROUGH:
            continue
        name = SIMSKIP_PREFIX + spec.name.replace("_", "-")
        default = REFINEMENT_KEYS[name]
        choices, multiple = _SIMSKIP_CHOICES.get(spec.name, (None, False))
        keys.append(
            Key(
                name,
                "refinement",
                type(default),
                default,
                f"SimSkipConfig.{spec.name} (simskip_core/config.py)",
                spec.name not in _HARMLESS_SIMSKIP_FIELDS,
                choices,
                multiple,
            )
        )
    return tuple(keys)


#: The refinement phase's keys of the registry: :class:`RefinementConfig`'s fields, then the SimSkip ones.
REFINEMENT_REGISTRY_KEYS: tuple[Key, ...] = (
    *keys_of(RefinementConfig, "refinement", REFINEMENT_KEYS),
    *_simskip_keys(),
)
