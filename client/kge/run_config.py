"""The run-config registry: every key of a run config, declared once, and the whole run config's loader.

Each key is declared on the field of the dataclass that owns it (:func:`client.kge.registry.key_field`):
:class:`client.kge.settings.FederationSettings`, :class:`client.kge.config.KGEConfig`,
:class:`client.kge.refinement_config.RefinementConfig` (plus the ``simskip-<field>`` keys of
:class:`simskip_core.SimSkipConfig`), and :data:`client.kge.registry.OTHER_KEYS` (accepted, read by no
dataclass). :data:`REGISTRY` gathers them; from it come the checkpoint's key sets
(:data:`MODEL_DEFINING_KEYS`, :data:`HARMLESS_KEYS`, used by :mod:`server.checkpoint`),
``pyproject.toml``'s ``[tool.flwr.app.config]`` (:func:`app_config_defaults`, checked by
``tests/test_run_config_registry.py``) and the named-choice check before any process starts
(:func:`check_choices`, called by :func:`server.run_options.check_run_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from class_resolver.contrib.torch import optimizer_resolver
from pykeen.models import model_resolver
from pykeen.nn.representation import constrainer_resolver
from pykeen.regularizers import regularizer_resolver
from pykeen.sampling import negative_sampler_resolver
from pykeen.sampling.filtering import filterer_resolver

from client.kge.config import KGE_KEYS, KGEConfig
from client.kge.models import MODEL_DEFAULT, NONE
from client.kge.refinement_config import REFINEMENT_REGISTRY_KEYS, RefinementConfig
from client.kge.regimes import training_regime_resolver
from client.kge.registry import OTHER_KEYS, ConfigError, Key
from client.kge.settings import FEDERATION_KEYS, FederationSettings, SettingsError
from simskip_core.errors import shown

__all__ = [
    "HARMLESS_KEYS",
    "MODEL_DEFINING_KEYS",
    "REGISTRY",
    "app_config_defaults",
    "check_choices",
    "load_run_configs",
    "simskip_releases",
]

#: Every run-config key by name, in ``pyproject.toml``'s order (federation, KGE, refinement), then the others.
REGISTRY: Mapping[str, Key] = {
    key.name: key for key in (*FEDERATION_KEYS, *KGE_KEYS, *REFINEMENT_REGISTRY_KEYS, *OTHER_KEYS)
}

#: Keys whose change makes a checkpoint invalid: they define the model, its data, its training or the
#: validation that picks the best round (:mod:`server.checkpoint`).
MODEL_DEFINING_KEYS: frozenset[str] = frozenset(name for name, key in REGISTRY.items() if key.model_defining)
#: Keys a resume may change: budgets, output paths, waiting times, progress output, extra reporting,
#: devices and batch sizes of pure inference.
HARMLESS_KEYS: frozenset[str] = frozenset(name for name, key in REGISTRY.items() if not key.model_defining)

#: Choices named by a PyKEEN / class_resolver resolver, which also accepts their normalized spellings
#: (``transe``, ``TransE``): key -> (resolver, names accepted besides the resolver's).
_RESOLVED_CHOICES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "model": (model_resolver, ()),
    "optimizer": (optimizer_resolver, ()),
    "negative-sampler": (negative_sampler_resolver, ()),
    "filterer": (filterer_resolver, ()),
    "training-loop": (training_regime_resolver, ()),
    "entity-constrainer": (constrainer_resolver, (NONE, MODEL_DEFAULT)),
    "regularizer": (regularizer_resolver, (NONE, MODEL_DEFAULT)),
}


def app_config_defaults() -> dict[str, Any]:
    """What ``pyproject.toml``'s ``[tool.flwr.app.config]`` holds: every owned key with its default."""
    return {name: key.default for name, key in REGISTRY.items() if key.owner != "other"}


def check_choices(run_config: Mapping[str, Any]) -> None:
    """Check every named choice of ``run_config`` (static ones and those of PyKEEN's resolvers).

    :raises client.kge.config.ConfigError: in one line, naming the key, the value and the choices.
    """
    for name, value in run_config.items():
        key = REGISTRY.get(name)
        if key is None or not isinstance(value, str):
            continue  # unknown keys and wrong types are the loaders' errors
        key.check_choice(value)
        if name in _RESOLVED_CHOICES:
            resolver, extra = _RESOLVED_CHOICES[name]
            if value in extra:
                continue
            try:
                resolver.lookup(value)
            except (KeyError, ValueError):
                choices = ", ".join([*extra, *sorted(resolver.lookup_dict)])
                raise ConfigError(f"key {name!r}: {shown(value)} is not one of {choices}") from None


def load_run_configs(run_config: Mapping[str, Any]) -> tuple[FederationSettings, KGEConfig, RefinementConfig]:
    """Split a Flower run config into federation settings, KGE config and refinement config.

    Every key has exactly one owner (:data:`REGISTRY`), so a misspelt one fails.

    :returns: ``(FederationSettings, KGEConfig, RefinementConfig)``.
    :raises client.kge.config.ConfigError: naming an unknown key or a bad value.
    :raises client.kge.settings.SettingsError: ``dp = local`` with a federated SimSkip phase and no
        ``dp-clip-encoder`` (its encoder weights are released with their own clip).
    """
    settings = FederationSettings.from_run_config(run_config)
    kge = KGEConfig.from_run_config(run_config, extra_known_keys=REGISTRY)
    refinement = RefinementConfig.from_run_config(run_config)
    if settings.dp == "local" and refinement.enabled and refinement.federate and settings.dp_clip_encoder == 0:
        raise SettingsError(
            "dp = local with a federated SimSkip phase needs dp-clip-encoder > 0, the norm each party's encoder "
            "weights' whole update is clipped to (docs/how-to/differential-privacy.md); or set simskip-rounds = 0, "
            "or simskip-federate = false"
        )
    return settings, kge, refinement


def simskip_releases(settings: FederationSettings, refinement: RefinementConfig) -> int:
    """The uploads a party releases under ``dp = local`` in the SimSkip phase: one per round when it is
    federated (its encoder weights), none otherwise (the weights stay with the party)."""
    return refinement.rounds if settings.dp == "local" and refinement.enabled and refinement.federate else 0
