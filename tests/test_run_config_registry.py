"""The run-config registry (client/kge/run_config.py): every key declared once, with its owner,
type, default, help, model-defining flag and choices; the checkpoint's key sets and pyproject's
``[tool.flwr.app.config]`` come from it, and named choices fail before any process starts."""

from __future__ import annotations

import tomllib

import pytest

from client.kge.config import KNOWN_NON_KGE_KEYS, ConfigError
from client.kge.protocols import DOWNSTREAM_PROTOCOLS, REFIT_INITS
from client.kge.refinement_config import DOWNSTREAM_PROTOCOL_NAMES
from client.kge.refinement_config import REFIT_INITS as CONFIG_REFIT_INITS
from client.kge.registry import OWNERS, coerce
from client.kge.run_config import HARMLESS_KEYS, MODEL_DEFINING_KEYS, REGISTRY, app_config_defaults, check_choices
from server import checkpoint
from server.run_options import check_run_config
from tests.conftest import PROJECT_ROOT

#: The sets server/checkpoint.py listed literally before the registry (less "log-level", which no
#: loader ever accepted: it was classified but never a valid run-config key).
LITERAL_MODEL_DEFINING = {
    "setting",
    "client-data-root",
    "dataset",
    "num-clients",
    "partition",
    "partition-seed",
    "data-dir",
    "fraction-train",
    "transfer-dtype",
    "aggregation",
    "aggregation-trim",
    "model",
    "regularizer-weight",
    "regularizer-p",
    "regularize-entities",
    "entity-dropout",
    "relation-dropout",
    "reciprocal-relations",
    "embedding-dim",
    "local-epochs",
    "batch-size",
    "learning-rate",
    "lr-decay",
    "optimizer",
    "keep-optimizer-state",
    "num-negs-per-pos",
    "negative-sampler",
    "corruption-scheme",
    "filtered-negatives",
    "filterer",
    "loss",
    "adversarial-temperature",
    "margin",
    "entity-constrainer",
    "regularizer",
    "training-loop",
    "seed",
    "eval-every",
    "eval-protocol",
    "simskip-local-epochs",
    "simskip-federate",
    "simskip-no-skip-ablation",
    "refit-epochs",
    "simskip-hidden-dim",
    "simskip-num-layers",
    "simskip-activation",
    "simskip-normalization",
    "simskip-skip",
    "simskip-projection-dim",
    "simskip-projection-hidden-dim",
    "simskip-augmentations",
    "simskip-mask-prob",
    "simskip-noise-std",
    "simskip-temperature",
    "simskip-lr",
    "simskip-weight-decay",
    "simskip-batch-size",
    "simskip-seed",
    "simskip-gate-grid",
    "simskip-standardize",
    "simskip-search",
    "downstream-protocols",
    "refit-init",
    "downstream-seeds",
    "downstream-patience",
    "downstream-top-candidates",
    "simskip-structure-mix",  # added with the structure view (client/kge/structure_view.py)
    "stopping",  # added with the per-party stopping rule (client/kge/early_stopping.py)
    "dp",  # added with local differential privacy (client/kge/local_dp.py)
    "dp-clip",
    "dp-clip-encoder",  # added with the SimSkip phase's encoder release (client/party_dp.py)
    "dp-noise-multiplier",
    "dp-target-epsilon",
    "dp-delta",
    "secure-aggregation",  # added with secure aggregation (server/secure_aggregation.py): the mean within 2c/R
    "secagg-clipping-range",
}
LITERAL_HARMLESS = {
    "num-server-rounds",
    "num-rounds",
    "patience",
    "simskip-rounds",
    "min-clients",
    "min-available-nodes",
    "min-train-nodes",
    "fraction-evaluate",
    "round-timeout",
    "min-clients-timeout",
    "run-dir",
    "client-output-root",
    "resume",
    "eval-batch-size",
    "simskip-transform-batch-size",
    "simskip-device",
    "simskip-progress",
    "track-test",
    "client-num-cpus",
    "client-num-gpus",
    "num-cpus",
    "num-gpus",
    "secagg-num-shares",  # who shares secrets with whom: the dropouts tolerated, not the mean
    "secagg-reconstruction-threshold",
}
#: config.py's former literal KNOWN_NON_KGE_KEYS: every one is still skipped by KGEConfig.
LITERAL_KGE_SKIPPED = {
    "setting",
    "num-server-rounds",
    "num-rounds",
    "fraction-train",
    "fraction-evaluate",
    "min-available-nodes",
    "min-train-nodes",
    "dataset",
    "num-clients",
    "partition",
    "partition-seed",
    "data-dir",
    "run-dir",
    "round-timeout",
    "client-num-cpus",
    "client-num-gpus",
    "num-cpus",
    "num-gpus",
    "simskip-rounds",
    "simskip-local-epochs",
}


def test_checkpoint_key_sets_are_the_registry_ones_and_unchanged():
    assert MODEL_DEFINING_KEYS == LITERAL_MODEL_DEFINING
    assert HARMLESS_KEYS == LITERAL_HARMLESS
    assert checkpoint.MODEL_DEFINING_KEYS is MODEL_DEFINING_KEYS and checkpoint.HARMLESS_KEYS is HARMLESS_KEYS
    assert LITERAL_KGE_SKIPPED <= KNOWN_NON_KGE_KEYS
    assert {name for name, key in REGISTRY.items() if key.owner != "kge"} == KNOWN_NON_KGE_KEYS


def test_pyproject_app_config_is_the_registry():
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as handle:
        app_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    assert app_config == app_config_defaults()


def test_every_key_is_declared_completely():
    for name, key in REGISTRY.items():
        assert key.name == name and key.owner in OWNERS and key.help, name
        assert key.type in (int, float, str, bool), name
        if key.owner != "other":
            assert type(key.default) is key.type, name
        if key.choices is not None and isinstance(key.default, str):
            key.check_choice(key.default)  # the default is one of the choices


def test_protocol_names_agree_with_the_protocols():
    assert tuple(DOWNSTREAM_PROTOCOLS) == DOWNSTREAM_PROTOCOL_NAMES
    assert CONFIG_REFIT_INITS == REFIT_INITS


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("model", "TransEE", "TransE"),
        ("aggregation", "krum", "mean, median, trimmed-mean"),
        ("eval-protocol", "both", "standard, fede"),
        ("training-loop", "lcwa2", "sharednegatives"),
        ("optimizer", "adamw2", "adam"),
        ("entity-constrainer", "unit", "none, model-default"),
        ("downstream-protocols", "as-trained,adapterr", "as-trained, relation-refit"),
        ("simskip-activation", "sigmoidd", "relu"),
    ],
)
def test_a_bad_choice_fails_in_one_line_naming_key_value_and_choices(key, value, shown):
    with pytest.raises(ConfigError) as error:
        check_choices({key: value})
    message = str(error.value)
    assert "\n" not in message and repr(key) in message and shown in message
    assert repr(value.split(",")[-1]) in message


def test_resolver_spellings_and_defaults_pass():
    check_choices(
        {
            "model": "transe",
            "optimizer": "Adam",
            "training-loop": "slcwa",
            "regularizer": "model-default",
            "filterer": "bloom",
            "negative-sampler": "basic",
        }
    )
    check_choices(app_config_defaults())


def test_check_run_config_checks_choices_before_start(tmp_path):
    with pytest.raises(ConfigError, match="key 'model': 'TransEE' is not one of"):
        check_run_config({"model": "TransEE"})
    from server.simulation import run_simulation

    # simskip-sim's entry: the error comes before the data is read, Ray starts or a folder is made
    with pytest.raises(ConfigError, match="key 'optimizer': 'adamm' is not one of"):
        run_simulation("Kinships", run_dir=tmp_path / "run", overrides={"optimizer": "adamm"})
    assert not (tmp_path / "run").exists()


def test_one_type_rule():
    assert coerce(3.0, int) == 3 and type(coerce(3, float)) is float
    for value, expected in [(True, int), (1, bool), (1.5, int), ("1", int), (2, str)]:
        with pytest.raises(TypeError):
            coerce(value, expected)
    with pytest.raises(OverflowError):
        coerce(int("f" * 5000, 16), float)
