"""The one documented configuration of SimSkip refinement.

:class:`SimSkipConfig` holds every hyperparameter with its default. ``from_dict`` rejects unknown
keys (naming them) and values of the wrong type; ``with_overrides`` parses ``key=value`` strings
by the field's declared type (as ``simskip-refine --set`` does).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .augment import AUGMENTATIONS, ROW_VIEW
from .encoder import ACTIVATIONS, NORMALIZATIONS
from .errors import ConfigError, shown

__all__ = ["SimSkipConfig", "load_config_file", "read_config_mapping"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class SimSkipConfig:
    """Hyperparameters of SimSkip refinement.

    The defaults were chosen by measurement on validation splits carved from the TRAIN part of
    scikit-learn's digits data (``scripts/bench_simskip.py digits-sweep``: logistic-regression
    probe accuracy, 3 validation splits x 3 seeds), never on its test split. There, stronger
    training (lr 1e-3, mask_prob 0.2, more epochs, a wider ``g``) drifted further from the input
    and probed slightly worse; ``lr=3e-4, mask_prob=0.1`` stayed within 0.1 point of the input
    while still moving the embeddings. Other users should tune ``epochs``/``lr`` to their data:
    an epoch is ``ceil(n / batch_size)`` steps, so larger matrices move more per epoch.
    That sweep predates ``standardize``; the digits there are standardized per feature, so their
    scale ``s`` is 0.97 and the defaults carry over (``tests/test_simskip_digits.py`` still holds).

    Encoder ``f(x) = x + g(x)``:

    :param hidden_dim: width of ``g``'s hidden layers; ``None`` means the input width ``d``.
    :param num_layers: number of Linear layers of ``g`` (``2``: Linear, norm, activation, Linear).
    :param activation: activation of ``g`` and of the head (``relu``, ``gelu``, ``silu``, ``tanh``,
        ``leaky_relu``).
    :param normalization: ``layer_norm`` or ``none``. BatchNorm is deliberately not offered: its
        output for a row depends on the batch, and its running statistics would be extra state
        to federate; LayerNorm is per row and has only parameters.
    :param skip: keep the skip connection; ``False`` is the paper's ablation ``f(x) = g(x)``.
    :param standardize: work in standardized units. The trainer divides the matrix by one scalar
        scale ``s = sqrt(mean(X**2))`` (the root mean square of all entries, fixed per trainer at
        its first ``fit``/``transform``, see ``SimSkipTrainer.scale``), so ``g``, the head and the
        augmentations see ``z = x / s``, and the refined rows are ``s * f(z) = x + s * g(x / s)``.
        Then ``refine(c * X) == c * refine(X)`` for any ``c > 0`` (up to float rounding).
        ``False`` is the former behaviour, ``f(x) = x + g(x)`` on the raw values: the LayerNorm in
        ``g`` fixes the size of ``g(x)`` in absolute units, so on a 2,000 x 64 Gaussian matrix
        ten epochs moved rows by a mean ``||f(x) - x|| / ||x||`` of 15.5 at scale 0.01, 0.20 at 1
        and 0.0026 at 100 -- and KGE rows of norm 0.5-0.9 moved 1.5-2.7 times their own length.

    Projection head (loss only, dropped at inference):

    :param projection_dim: output width ``k`` of the head.
    :param projection_hidden_dim: hidden width of the head; ``None`` means ``hidden_dim``'s value.

    Views and loss:

    :param augmentations: names of the augmentations, applied in this order to make each view;
        an empty tuple disables augmentation (and makes the views identical). ``row_view`` (the
        caller's view of each row, :class:`simskip_core.augment.RowView`) may appear only once and
        first, and needs a provider passed to ``SimSkipTrainer.fit(X, row_view=...)``.
    :param mask_prob: probability of zeroing each coordinate (``feature_mask``), ``0 <= p < 1``.
    :param noise_std: noise std relative to the per-feature std of the fitted matrix
        (``gaussian_noise``); that std is computed once per ``fit`` on the full matrix (in
        standardized units when ``standardize``, which gives the same relative level).
    :param temperature: NT-Xent temperature ``tau > 0``.

    Optimization:

    :param lr: Adam learning rate.
    :param weight_decay: Adam (L2) weight decay.
    :param epochs: epochs of ``refine`` and the default of ``SimSkipTrainer.fit``.
    :param batch_size: rows per step; an epoch splits a random permutation into
        ``ceil(n / batch_size)`` near-equal batches (no tiny last batch).
    :param seed: seeds model init, augmentations and shuffling.
    :param device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
    :param transform_batch_size: rows per forward pass of ``transform``.
    :param progress: show a tqdm progress bar over epochs.
    """

    hidden_dim: int | None = None
    num_layers: int = 2
    activation: str = "relu"
    normalization: str = "layer_norm"
    skip: bool = True
    standardize: bool = True
    projection_dim: int = 32
    projection_hidden_dim: int | None = None
    augmentations: tuple[str, ...] = ("gaussian_noise", "feature_mask")
    mask_prob: float = 0.1
    noise_std: float = 0.1
    temperature: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 1e-6
    epochs: int = 50
    batch_size: int = 512
    seed: int = 0
    device: str = "auto"
    transform_batch_size: int = 8192
    progress: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "augmentations" and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            if isinstance(value, int) and not isinstance(value, bool) and _base_type(hints[f.name]) is float:
                try:
                    value = float(value)
                except OverflowError:  # an int past 1.8e308 (TOML reads 0xfff... as one)
                    raise ConfigError(
                        f"config key {f.name!r}: expected float, got an integer too large for a float"
                    ) from None
                object.__setattr__(self, f.name, value)
            if not _matches(value, hints[f.name]):
                raise ConfigError(
                    f"config key {f.name!r}: expected {_type_name(hints[f.name])}, got {shown(value)} ({type(value).__name__})"
                )
        self._check_ranges()

    def _check_ranges(self) -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"config key {key!r} must be {rule}, got {shown(getattr(self, key))}")

        need(self.hidden_dim is None or self.hidden_dim >= 1, "hidden_dim", ">= 1 or None")
        need(self.num_layers >= 1, "num_layers", ">= 1")
        need(self.activation in ACTIVATIONS, "activation", f"one of {sorted(ACTIVATIONS)}")
        need(self.normalization in NORMALIZATIONS, "normalization", f"one of {sorted(NORMALIZATIONS)}")
        need(self.projection_dim >= 1, "projection_dim", ">= 1")
        need(
            self.projection_hidden_dim is None or self.projection_hidden_dim >= 1,
            "projection_hidden_dim",
            ">= 1 or None",
        )
        need(
            all(a in AUGMENTATIONS for a in self.augmentations), "augmentations", f"names from {sorted(AUGMENTATIONS)}"
        )
        need(
            ROW_VIEW not in self.augmentations[1:],
            "augmentations",
            f"a list with {ROW_VIEW!r} at most once and first (it replaces the batch by the caller's view)",
        )
        need(0.0 <= self.mask_prob < 1.0, "mask_prob", "in [0, 1)")
        need(self.noise_std >= 0.0, "noise_std", ">= 0")
        need(self.temperature > 0.0, "temperature", "> 0")
        need(self.lr > 0.0, "lr", "> 0")
        need(self.weight_decay >= 0.0, "weight_decay", ">= 0")
        need(self.epochs >= 0, "epochs", ">= 0")
        need(self.batch_size >= 2, "batch_size", ">= 2 (a contrastive batch needs negatives)")
        need(self.transform_batch_size >= 1, "transform_batch_size", ">= 1")
        need(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            "auto, cpu, cuda or cuda:N",
        )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SimSkipConfig:
        """Build a config from a mapping; missing keys take their defaults.

        :raises ConfigError: naming every unknown key, or the first value of the wrong type/range.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"config must be a mapping of keys to values, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serializable dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> SimSkipConfig:
        """A copy with ``changes`` applied (validated like ``from_dict``)."""
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str]) -> SimSkipConfig:
        """Apply ``key=value`` strings, each parsed by the field's type.

        ``bool``: true/false/1/0/yes/no/on/off; ``int``/``float``: Python literals; optional
        fields accept ``none``; ``augmentations``: comma-separated names (empty for none).

        :raises ConfigError: for a malformed assignment, unknown key or unparsable value.
        """
        hints = typing.get_type_hints(type(self))
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"override {assignment!r} is not of the form key=value")
            if key not in hints:
                raise ConfigError(f"unknown config key {key!r} in override {assignment!r}; known keys: {sorted(hints)}")
            changes[key] = _parse_value(key, text.strip(), hints[key])
        return self.replace(**changes)


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """Read the flat table of config keys of a ``.json`` or ``.toml`` file (not yet validated).

    :raises ConfigError: naming the file, when it is unreadable, malformed, or not a table.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: config must be a table of keys to values, got {type(values).__name__}")
    return values


def load_config_file(path: str | Path, base: dict[str, Any] | None = None) -> SimSkipConfig:
    """Read a config from a ``.json`` or ``.toml`` file (a flat table of keys).

    :param path: the file.
    :param base: values used for keys the file does not set (before the class defaults).
    :raises ConfigError: naming the file, for unreadable/malformed files or bad keys.
    """
    values = read_config_mapping(path)
    try:
        return SimSkipConfig.from_dict({**(base or {}), **values})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------- type helpers
def _optional_inner(hint: Any) -> Any | None:
    """``X`` for ``X | None``, else ``None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return None


def _base_type(hint: Any) -> Any:
    return _optional_inner(hint) or hint


def _type_name(hint: Any) -> str:
    inner = _optional_inner(hint)
    if inner is not None:
        return f"{_type_name(inner)} or None"
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return hint.__name__


def _matches(value: Any, hint: Any) -> bool:
    inner = _optional_inner(hint)
    if inner is not None:
        return value is None or _matches(value, inner)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float)
    return isinstance(value, hint)


def _parse_value(key: str, text: str, hint: Any) -> Any:
    inner = _optional_inner(hint)
    if inner is not None:
        return None if text.lower() in {"none", "null"} else _parse_value(key, text, inner)
    if typing.get_origin(hint) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        if hint is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("not a boolean")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"config key {key!r}: cannot parse {text!r} as {_type_name(hint)}") from None
