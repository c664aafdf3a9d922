"""Each per-model recipe preset is what its committed searches chose on valid, recomputed from their JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

from client.kge.config import KGEConfig
from client.kge.presets import PRESET_EVIDENCE, PRESETS, preset, preset_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tune():
    return load_script("tune_kge")


def _trial(number: int, state: str, value: float | None) -> dict:
    return {"number": number, "state": state, "value": value, "setting": {"learning-rate": number}}


def test_the_rule_over_several_searches(tune) -> None:
    first = {"trials": [_trial(1, "COMPLETE", 0.2), _trial(0, "PRUNED", None), _trial(2, "COMPLETE", 0.3)]}
    second = {"trials": [_trial(0, "COMPLETE", 0.3), _trial(1, "FAIL", None)]}
    search, trial = tune.best_recorded_trial([first, second])
    assert search is first and trial["number"] == 2  # a tie goes to the earlier search
    search, trial = tune.best_recorded_trial([second, first])
    assert search is second and trial["number"] == 0
    assert tune.best_recorded_trial([{"trials": [_trial(0, "PRUNED", None)]}]) is None


@pytest.mark.parametrize("name", sorted(PRESET_EVIDENCE))
def test_preset_is_its_searches_best_valid_trial(tune, name: str) -> None:
    searches = [json.loads((PROJECT_ROOT / file).read_text(encoding="utf-8")) for file in PRESET_EVIDENCE[name]]
    for file, search in zip(PRESET_EVIDENCE[name], searches):
        assert search["mode"] == "optuna" and "valid MRR" in search["objective"], file  # never chosen on test
    search, trial = tune.best_recorded_trial(searches)
    assert dict(PRESETS[name]) == {**search["fixed"], **trial["setting"]}


@pytest.mark.parametrize("name", sorted(name for name in PRESETS if name.startswith("fb15k237-")))
def test_every_model_recipe_has_evidence_and_is_a_valid_config(name: str) -> None:
    assert name in PRESET_EVIDENCE, f"{name}: a recipe without the search it was chosen by"
    config = KGEConfig.from_run_config(preset(name))
    assert config.model.lower() == preset_model(name)
