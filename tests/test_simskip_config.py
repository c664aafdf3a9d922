"""SimSkipConfig: documented defaults, unknown keys, types, ranges, --set parsing, files."""

from __future__ import annotations

import json

import pytest

from simskip_core import ConfigError, SimSkipConfig, load_config_file


def test_from_dict_names_every_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epoch', 'lr_rate'\]"):
        SimSkipConfig.from_dict({"epoch": 3, "lr_rate": 0.1, "seed": 1})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": 2.5}, "'epochs': expected int"),
        ({"epochs": True}, "'epochs': expected int"),
        ({"skip": 1}, "'skip': expected bool"),
        ({"lr": "fast"}, "'lr': expected float"),
        ({"hidden_dim": 1.0}, "'hidden_dim': expected int or None"),
        ({"augmentations": "feature_mask"}, "'augmentations': expected a list of strings"),
        ({"mask_prob": 1.0}, "'mask_prob' must be in \\[0, 1\\)"),
        ({"temperature": 0.0}, "'temperature' must be > 0"),
        ({"batch_size": 1}, "'batch_size' must be >= 2"),
        ({"activation": "swish"}, "'activation' must be one of"),
        ({"normalization": "batch_norm"}, "'normalization' must be one of"),
        ({"augmentations": ["feature_mask", "rotate"]}, "'augmentations' must be names from"),
        ({"device": "tpu"}, "'device'"),
    ],
)
def test_from_dict_checks_types_and_ranges(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SimSkipConfig.from_dict(values)


def test_ints_are_accepted_for_floats_and_lists_for_augmentations() -> None:
    config = SimSkipConfig.from_dict({"lr": 1, "augmentations": ["feature_mask"]})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.augmentations == ("feature_mask",)


def test_to_dict_round_trips_through_json() -> None:
    config = SimSkipConfig(epochs=7, hidden_dim=None, augmentations=("feature_mask",))
    assert SimSkipConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_overrides_parse_by_field_type() -> None:
    config = SimSkipConfig().with_overrides(
        [
            "epochs=12",
            "lr=3e-4",
            "skip=false",
            "hidden_dim=none",
            "projection_hidden_dim=64",
            "augmentations=feature_mask, gaussian_noise",
            "device=cpu",
        ]
    )
    assert (config.epochs, config.lr, config.skip, config.hidden_dim, config.projection_hidden_dim) == (
        12,
        3e-4,
        False,
        None,
        64,
    )
    assert config.augmentations == ("feature_mask", "gaussian_noise")
    assert config.device == "cpu"
    assert SimSkipConfig().with_overrides(["augmentations="]).augmentations == ()


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epochs=ten", "cannot parse 'ten' as int"),
        ("skip=maybe", "as bool"),
        ("epochs", "key=value"),
        ("nope=1", "unknown config key 'nope'"),
    ],
)
def test_bad_overrides(assignment, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SimSkipConfig().with_overrides([assignment])


def test_config_files_json_and_toml(tmp_path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 4, "augmentations": ["feature_mask"]}))
    (tmp_path / "c.toml").write_text("epochs = 5\ntemperature = 0.2\n")
    (tmp_path / "bad.json").write_text('{"epochs": 4, "colour": 1}')
    (tmp_path / "broken.json").write_text('{"epochs": ')
    assert load_config_file(tmp_path / "c.json").epochs == 4
    assert load_config_file(tmp_path / "c.toml").temperature == 0.2
    with pytest.raises(ConfigError, match=r"bad.json: unknown config key\(s\) \['colour'\]"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="broken.json: cannot read config"):
        load_config_file(tmp_path / "broken.json")


def test_an_integer_too_large_for_a_float_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'temperature': expected float, got an integer too large"):
        SimSkipConfig.from_dict({"temperature": 16**300})
