"""The building blocks of the run-config registry: one :class:`Key` per run-config key, and the one
type rule every owner applies to a value.

Each key is declared once, on the field of the dataclass that owns it
(:class:`client.kge.settings.FederationSettings`, :class:`client.kge.config.KGEConfig`,
:class:`client.kge.refinement_config.RefinementConfig`), with :func:`key_field`: its default, help,
whether it is model-defining (a resume must keep it) or harmless (a resume may change it), and its
named choices. :func:`keys_of` reads those declarations back as :class:`Key` objects;
:mod:`client.kge.run_config` assembles them into the registry (``REGISTRY``) that the checkpoint's
key sets, ``pyproject.toml``'s ``[tool.flwr.app.config]`` (checked by a test) and the choice check
before start-up come from. :data:`OTHER_KEYS` are the keys no dataclass reads (Flower-template and
node-config names a run config may carry): accepted and ignored.

This module sits at the bottom of :mod:`client.kge`: it imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any

from simskip_core.errors import shown

__all__ = [
    "OTHER_KEYS",
    "OWNERS",
    "ConfigError",
    "Key",
    "coerce",
    "key_field",
    "keys_of",
    "type_ok",
]

#: Who reads a key: FederationSettings, KGEConfig, RefinementConfig, or nobody (``other``).
OWNERS = ("federation", "kge", "refinement", "other")

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


class ConfigError(ValueError):
    """A run-config key is unknown, or a value has the wrong type or is out of range."""


@dataclass(frozen=True)
class Key:
    """One run-config key.

    :param name: the kebab-case key (``local-epochs``).
    :param owner: one of :data:`OWNERS`.
    :param type: the type of its run-config value (``int``, ``float``, ``str``, ``bool``).
    :param default: its default, as ``pyproject.toml``'s ``[tool.flwr.app.config]`` writes it
        (``None`` for the :data:`OTHER_KEYS`, which have none).
    :param help: what it sets.
    :param model_defining: a change makes a checkpoint invalid (else the key is harmless: a resume may
        change it); see :mod:`server.checkpoint`.
    :param choices: the valid names where the value is a choice (``None``: not a fixed list).
    :param multiple: the value is a comma-separated list of ``choices``.
    """

    name: str
    owner: str
    type: type
    default: Any
    help: str
    model_defining: bool
    choices: tuple[str, ...] | None = None
    multiple: bool = False

    def check_choice(self, value: Any) -> None:
        """Raise :class:`ConfigError` (one line: key, value, choices) when a name is not one of :attr:`choices`."""
        if self.choices is None or not isinstance(value, str):
            return
        names = [item.strip() for item in value.split(",") if item.strip()] if self.multiple else [value]
        for name in names:
            if name not in self.choices:
                raise ConfigError(f"key {self.name!r}: {name!r} is not one of {', '.join(self.choices)}")


def key_field(
    default: Any = MISSING,
    *,
    help: str,
    model_defining: bool,
    choices: Iterable[str] | None = None,
    multiple: bool = False,
    default_factory: Any = MISSING,
    key: str | None = None,
    value_type: type | None = None,
) -> Any:
    """A dataclass field that declares a run-config key (read back by :func:`keys_of`).

    :param default: the field's default (or give ``default_factory``).
    :param help: what the key sets.
    :param model_defining: see :attr:`Key.model_defining`.
    :param choices: the valid names where the value is a choice.
    :param multiple: the value is a comma-separated list of ``choices``.
    :param key: the run-config key when it is not the field's name in kebab-case.
    :param value_type: the type of the run-config value when it is not the field's type.
    """
    metadata = {
        "help": help,
        "model_defining": model_defining,
        "choices": tuple(choices) if choices else None,
        "multiple": multiple,
        "key": key,
        "value_type": value_type,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def keys_of(cls: type, owner: str, defaults: Mapping[str, Any] | None = None) -> tuple[Key, ...]:
    """The keys declared with :func:`key_field` on dataclass ``cls``, in field order.

    :param owner: one of :data:`OWNERS`.
    :param defaults: key -> run-config default, where the field's default is not the run-config value
        (a tuple written as a comma-separated string); by default the fields' defaults.
    """
    keys = []
    for spec in dataclasses.fields(cls):
        if "help" not in spec.metadata:
            continue
        name = spec.metadata["key"] or spec.name.replace("_", "-")
        default = defaults[name] if defaults is not None else spec.default
        value_type = spec.metadata["value_type"] or (_TYPES[spec.type] if isinstance(spec.type, str) else spec.type)
        keys.append(
            Key(
                name,
                owner,
                value_type,
                default,
                spec.metadata["help"],
                spec.metadata["model_defining"],
                spec.metadata["choices"],
                spec.metadata["multiple"],
            )
        )
    return tuple(keys)


def type_ok(value: Any, expected: type) -> bool:
    """Whether ``value`` has type ``expected`` exactly as a run-config value must (a bool is no number)."""
    return isinstance(value, expected) and (expected is bool or not isinstance(value, bool))


def coerce(value: Any, expected: type) -> Any:
    """The one type rule of run-config values, shared by every owner.

    An ``int`` value may be an integral float (``3.0`` -> ``3``); a ``float`` value may be an int
    (converted); a bool is never a number and a number never a bool; a ``str`` must be a string.

    :returns: the value, converted where allowed.
    :raises TypeError: when ``value`` does not have the type.
    :raises OverflowError: for an int too large for a float (TOML reads ``0xfff...`` of any length as
        an int; found by ``tests/test_loader_fuzz.py``).
    """
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # OverflowError past 1.8e308
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not type_ok(value, expected):
        raise TypeError(f"expected {expected.__name__}, got {shown(value)}")
    return value


def _other(name: str, model_defining: bool, help: str) -> Key:
    return Key(name, "other", str, None, help, model_defining)


#: Keys a run config may carry that no dataclass reads (names of Flower's app templates and of node
#: config): accepted and ignored, and classified for the checkpoint like every other key.
OTHER_KEYS: tuple[Key, ...] = (
    _other("dataset", True, "the data set (simulation: simskip-sim --dataset; not read from the run config)"),
    _other("num-clients", True, "the number of clients of the partition (simskip-sim --clients)"),
    _other("partition", True, "the partition rule (simskip-sim --partition)"),
    _other("partition-seed", True, "the partition's seed (simskip-sim --partition-seed)"),
    _other("data-dir", True, "a deployed client's data folder (node config)"),
    _other("num-rounds", False, "Flower template's round budget (use num-server-rounds)"),
    _other("fraction-evaluate", False, "Flower template's evaluation fraction (unused)"),
    _other("min-available-nodes", False, "Flower template's minimum of nodes (use min-clients)"),
    _other("min-train-nodes", False, "Flower template's minimum of training nodes (use min-clients)"),
    _other("client-num-cpus", False, "CPUs per virtual client (simulation backend config)"),
    _other("client-num-gpus", False, "GPUs per virtual client (simulation backend config)"),
    _other("num-cpus", False, "CPUs of the simulation (backend config)"),
    _other("num-gpus", False, "GPUs of the simulation (backend config)"),
)
