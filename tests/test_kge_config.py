"""KGEConfig: FedE defaults, run-config parsing, and refusal of unknown or ill-typed keys."""

from __future__ import annotations

import pytest

from client.kge.config import KNOWN_NON_KGE_KEYS, ConfigError, KGEConfig


def test_defaults_keep_fedes_schedule_and_the_presets_change_it() -> None:
    from client.kge.config import ConfigError
    from client.kge.presets import preset

    config = KGEConfig()
    assert (config.model, config.embedding_dim, config.local_epochs, config.batch_size) == ("TransE", 128, 3, 512)
    assert config.learning_rate == pytest.approx(1e-3)
    assert (config.num_negs_per_pos, config.adversarial_temperature, config.margin) == (256, 1.0, 10.0)
    assert config.filtered_negatives and config.keep_optimizer_state
    assert (config.training_loop, config.eval_every, config.patience) == ("sharednegatives", 1, 3)
    small = KGEConfig.from_run_config(preset("small-graph"))  # chosen on UMLS valid (results/tune/)
    assert (small.local_epochs, small.batch_size, small.learning_rate) == (1, 128, pytest.approx(1e-2))
    fede = KGEConfig.from_run_config(preset("fede-paper"))
    assert (fede.local_epochs, fede.batch_size, fede.training_loop) == (3, 512, "slcwa")
    assert fede.learning_rate == pytest.approx(1e-3) and (fede.eval_every, fede.patience) == (5, 15)
    assert preset(None) == {}
    with pytest.raises(ConfigError, match="unknown preset 'fedee'"):
        preset("fedee")


def test_from_run_config_maps_kebab_keys_and_skips_federation_keys() -> None:
    config = KGEConfig.from_run_config(
        {"model": "RotatE", "local-epochs": 2, "learning-rate": 1, "num-server-rounds": 7, "seed": 3.0}
    )
    assert config.model == "RotatE" and config.local_epochs == 2 and config.seed == 3
    assert isinstance(config.learning_rate, float) and config.learning_rate == 1.0
    assert "num-server-rounds" in KNOWN_NON_KGE_KEYS


def test_run_config_round_trip() -> None:
    config = KGEConfig(model="ComplEx", embedding_dim=16, eval_protocol="fede")
    assert KGEConfig.from_run_config(config.to_run_config()) == config


def test_unknown_key_fails_naming_it() -> None:
    with pytest.raises(ConfigError, match="learning-rat'"):
        KGEConfig.from_run_config({"learning-rat": 0.1, "model": "TransE"})
    # a caller may declare further non-KGE keys
    KGEConfig.from_run_config({"my-flag": 1}, extra_known_keys={"my-flag"})


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("local-epochs", 1.5, "local-epochs must be int"),
        ("local-epochs", True, "local-epochs must be int"),
        ("filtered-negatives", 1, "filtered-negatives must be bool"),
        ("batch-size", 0, "batch-size must be >= 1"),
        ("learning-rate", -1.0, "learning-rate must be > 0"),
        ("eval-protocol", "both", "eval-protocol"),
        ("corruption-scheme", "tail,tail", "corruption-scheme"),
        ("corruption-scheme", "object", "corruption-scheme"),
    ],
)
def test_bad_values_fail_naming_the_key(key: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        KGEConfig.from_run_config({key: value})


def test_command_line_overrides_parse_to_run_config_values() -> None:
    from client.kge.config import parse_set_options

    parsed = parse_set_options(["model=RotatE", "local-epochs=2", "learning-rate=1e-2", "filtered-negatives=false"])
    assert parsed == {"model": "RotatE", "local-epochs": 2, "learning-rate": 0.01, "filtered-negatives": False}
    assert KGEConfig.from_run_config(parsed).learning_rate == 0.01
    with pytest.raises(ConfigError, match="'epochs'"):
        parse_set_options(["epochs"])


def test_track_test_is_an_off_by_default_bool_key() -> None:
    assert KGEConfig().track_test is False
    assert KGEConfig.from_run_config({"track-test": True}).track_test is True
    with pytest.raises(ConfigError, match="track-test must be bool"):
        KGEConfig.from_run_config({"track-test": "yes"})


def test_project_run_config_parses_with_its_documented_defaults() -> None:
    """Every KGE key in pyproject.toml's ``[tool.flwr.app.config]`` is known and equals the default."""
    import tomllib
    from pathlib import Path

    from client.kge.config import to_kebab

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    run_config = pyproject["tool"]["flwr"]["app"]["config"]
    kge_keys = {to_kebab(name) for name in KGEConfig.__dataclass_fields__}
    config = KGEConfig.from_run_config({k: v for k, v in run_config.items() if k in kge_keys})
    assert config == KGEConfig()
    assert "track-test" in run_config


def test_an_integer_too_large_for_a_float_is_a_config_error() -> None:
    """TOML reads ``0xfff...`` as an int of any size; a float key named it a crash (OverflowError)
    before, found by the CI run of tests/test_loader_fuzz.py."""
    from client.kge.config import parse_set_options
    from client.kge.settings import FederationSettings, SettingsError

    huge = parse_set_options(["adversarial-temperature=0x" + "f" * 300, "aggregation-trim=" + "9" * 400])
    with pytest.raises(ConfigError, match="adversarial-temperature must be float, got an integer too large"):
        KGEConfig.from_run_config({"adversarial-temperature": huge["adversarial-temperature"]})
    with pytest.raises(SettingsError, match="'aggregation-trim': expected float"):
        FederationSettings.from_run_config({"aggregation-trim": huge["aggregation-trim"]})


def test_an_integer_too_long_to_print_is_named_by_its_size() -> None:
    """``repr`` of an int of over 4,300 digits raises ValueError: every config error names such a
    value by its size instead (found by tests/test_loader_fuzz.py, ``aggregation=0xfff...``)."""
    from client.kge.refinement import load_run_configs
    from client.kge.settings import SettingsError

    huge = 16**4000  # 16,001 bits, 4,817 decimal digits
    cases = {
        "aggregation": (huge, -huge),
        "model": (huge,),
        "simskip-activation": (huge,),
        "num-server-rounds": (-huge,),
        "local-epochs": (-huge,),
        "refit-epochs": (-huge,),
    }
    for key, values in cases.items():
        for value in values:
            with pytest.raises((ConfigError, SettingsError)) as caught:
                load_run_configs({key: value})
            assert "16001 bits" in str(caught.value), (key, str(caught.value)[:200])
