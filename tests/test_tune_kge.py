"""scripts/tune_kge.py's Optuna mode: the search space parser, the trials JSON (states, curves, the
chosen trial and its test), seeded sampling, pruning and resuming. Nations, a few rounds, a few
trials: each run takes seconds."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import load_script

from client.kge.config import ConfigError

#: A tiny, fast setting: every trial is a 3-party FedE run on Nations with 16-dim DistMult rows.
FAST = ["--dataset", "Nations", "--threads", "1", "--set", "embedding-dim=16", "--set", "patience=2"]
SPACE = ["--space", "learning-rate=loguniform:1e-3:1e-1", "batch-size=choice:64,128", "local-epochs=int:1:2"]


@pytest.fixture(scope="module")
def tune():
    return load_script("tune_kge")


def run(tune, tmp_path, *extra: str, name: str = "search.json") -> dict:
    out = tmp_path / name
    argv = [*FAST, "--rounds", "3", *SPACE, "--tpe-startup", "2", *extra, "--out", str(out)]
    assert tune.main(argv) == 0
    return json.loads(out.read_text())


# --- the space -------------------------------------------------------------------------------------


def test_the_space_parser_reads_every_kind_and_types_values_as_set_does(tune) -> None:
    space = tune.parse_space(
        [
            "learning-rate=loguniform:1e-4:1e-1",
            "margin=uniform:0:2",
            "embedding-dim=logint:16:256",
            "local-epochs=int:1:3",
            "batch-size=choice:128,256,512",
            "regularizer=choice:none,lp",
        ]
    )
    described = {dimension.key: dimension.describe() for dimension in space}
    assert described["learning-rate"] == {"key": "learning-rate", "kind": "loguniform", "low": 1e-4, "high": 0.1}
    assert described["local-epochs"] == {"key": "local-epochs", "kind": "int", "low": 1, "high": 3}
    assert described["batch-size"]["choices"] == [128, 256, 512]  # ints, as --set batch-size=128 gives
    assert described["regularizer"]["choices"] == ["none", "lp"]
    assert [dimension.kind for dimension in space] == ["loguniform", "uniform", "logint", "int", "choice", "choice"]


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ("no-such-key=choice:1,2", "'no-such-key'"),  # unknown key
        ("num-server-rounds=int:1:5", "'num-server-rounds' is a federation key"),  # not read by the run
        ("learning-rate=gaussian:0:1", "unknown kind 'gaussian'"),
        ("learning-rate", "expected KEY=KIND:ARGS"),
        ("learning-rate=loguniform:1e-4", "expected loguniform:LOW:HIGH"),
        ("learning-rate=loguniform:0.1:0.01", "LOW must be below HIGH"),
        ("learning-rate=loguniform:0:0.1", "log scale needs LOW > 0"),
        ("learning-rate=uniform:0:0.1", "learning-rate must be > 0"),  # the config's range check
        ("embedding-dim=loguniform:8:64", "embedding-dim must be int"),  # a float range on an int key
        ("local-epochs=int:1:2.5", "2.5 is not an integer"),
        ("batch-size=choice:128,abc", "batch-size must be int"),
        ("model=choice:DistMult,NoSuchModel", "key 'model': 'NoSuchModel' is not one of"),
        ("batch-size=choice:128,128", "distinct values"),
    ],
)
def test_a_bad_space_fails_naming_the_key_or_item(tune, item, named) -> None:
    with pytest.raises(ConfigError, match="--space") as error:
        tune.parse_space([item])
    assert named in str(error.value)


def test_a_key_given_twice_or_also_fixed_is_refused(tune) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        tune.parse_space(["batch-size=choice:64,128", "batch-size=int:64:128"])
    with pytest.raises(ConfigError, match="also fixed by --set"):
        tune.parse_space(["batch-size=choice:64,128"], {"batch-size": 64})


def test_a_bad_space_ends_the_script_before_any_trial(tune, tmp_path, capsys) -> None:
    out = tmp_path / "search.json"
    with pytest.raises(SystemExit) as stop:
        tune.main([*FAST, "--optuna", "3", "--space", "batch-size=loguniform:8:64", "--out", str(out)])
    assert stop.value.code == 2
    assert "batch-size must be int" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        tune.main([*FAST, "--optuna", "3", "--grid", "batch-size=64,128"])
    assert "two modes" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [["--optuna", "2", *SPACE], ["--grid", "batch-size=64"]])
def test_a_dataset_that_cannot_be_read_ends_the_script_naming_it(tune, tmp_path, capsys, mode) -> None:
    """Both modes end with exit 2 and the loader's message naming the path, not a traceback."""
    missing, out = tmp_path / "no-such-graph", tmp_path / "search.json"
    with pytest.raises(SystemExit) as stop:
        tune.main(["--dataset", str(missing), "--threads", "1", "--rounds", "1", *mode, "--out", str(out)])
    assert stop.value.code == 2
    assert f"--dataset {missing}: " in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (["dp=local", "dp-clip=1.0", "dp-noise-multiplier=1.0"], "dp = local"),
        (["secure-aggregation=true"], "secure-aggregation = true"),
    ],
)
@pytest.mark.parametrize("mode", [["--optuna", "2", *SPACE], ["--grid", "batch-size=64"]])
def test_a_privacy_key_in_set_is_refused_not_ignored(tune, tmp_path, capsys, sets, named, mode) -> None:
    """A search runs plain in-process FedE: dp = local or secure-aggregation = true would be silently
    ignored by its trials, so both modes refuse them before any trial (exit 2, the key named)."""
    out = tmp_path / "search.json"
    extra = [item for value in sets for item in ("--set", value)]
    with pytest.raises(SystemExit) as stop:
        tune.main([*FAST, "--rounds", "1", *extra, *mode, "--out", str(out)])
    assert stop.value.code == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


# --- the search ------------------------------------------------------------------------------------


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report, no other trial (a forced pruning)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


def test_a_search_writes_every_trial_and_tests_only_the_best_valid_one(tune, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(tune.PRUNERS, "trial-one", lambda args: (PruneTrialOne(), {"name": "trial-one"}))
    report = run(tune, tmp_path, "--optuna", "3", "--pruner", "trial-one")
    trials = report["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    pruned = trials[1]
    assert pruned["rounds_trained"] == 1 and len(pruned["valid_curve"]) == 1 and pruned["value"] is None
    assert pruned["stop_reason"].startswith("pruned after round 1")
    for trial in (trials[0], trials[2]):
        assert [r for r, _ in trial["valid_curve"]] == list(range(1, trial["rounds_trained"] + 1))
        assert trial["value"] == max(mrr for _, mrr in trial["valid_curve"])
        assert trial["train_seconds"] > 0 and trial["stop_reason"]
        assert set(trial["setting"]) == {"learning-rate", "batch-size", "local-epochs"}
    best = max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    assert report["chosen"]["trial"] == best["number"] and report["chosen"]["setting"] == best["setting"]
    assert report["chosen_test"]["overall"]["num_triples"] > 0
    assert json.dumps(report).count('"hits@10"') == 1  # the chosen trial's test, and no other
    assert report["states"] == {"COMPLETE": 2, "PRUNED": 1}
    assert report["sampler"] == {"name": "TPESampler", "seed": 0, "n_startup_trials": 2}
    assert report["pruner"] == {"name": "trial-one"}
    assert "--optuna 3" in report["command"] and report["machine"]["cpu_count"] >= 1
    assert len(report["load_average_before"]) == len(report["load_average_after"]) == 3


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tune, tmp_path, monkeypatch) -> None:
    import client.kge.centralized as centralized

    real, calls = centralized.run_fede_in_process, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("diverged")
        return real(*args, **kwargs)

    monkeypatch.setattr(centralized, "run_fede_in_process", second_fails)
    report = run(tune, tmp_path, "--optuna", "3", "--pruner", "none", "--rounds", "2")
    assert [t["state"] for t in report["trials"]] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert report["trials"][1]["stop_reason"] == "failed: RuntimeError: diverged"
    assert report["chosen"]["trial"] in (0, 2)


def test_an_interrupted_search_writes_its_choice_among_the_finished_trials(tune, tmp_path, monkeypatch) -> None:
    """Ctrl-C (or ``timeout -s INT``) in trial 2: exit 130, the JSON says interrupted, trial 2 is a FAIL
    marked as interrupted, and the choice and its test come from the trials that completed; a resumed
    search runs the interrupted trial again."""
    import client.kge.centralized as centralized

    real, calls = centralized.run_fede_in_process, []

    def third_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(centralized, "run_fede_in_process", third_interrupted)
    out, storage = tmp_path / "search.json", tmp_path / "study.db"
    argv = [*FAST, "--rounds", "2", *SPACE, "--tpe-startup", "2", "--optuna", "4", "--pruner", "none"]
    assert tune.main([*argv, "--storage", str(storage), "--out", str(out)]) == 130
    report = json.loads(out.read_text())
    assert report["interrupted"] is True
    assert [t["state"] for t in report["trials"]] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert report["trials"][2]["stop_reason"] == tune.INTERRUPTED_BY_OPERATOR
    assert report["chosen"]["trial"] in (0, 1)
    assert report["chosen_test"]["overall"]["num_triples"] > 0
    monkeypatch.setattr(centralized, "run_fede_in_process", real)
    assert tune.main([*argv, "--storage", str(storage), "--out", str(out)]) == 0
    resumed = json.loads(out.read_text())
    assert resumed["interrupted"] is False
    assert [t["state"] for t in resumed["trials"]].count("COMPLETE") == 4


def test_the_same_sampler_seed_samples_the_same_settings(tune, tmp_path) -> None:
    first = run(tune, tmp_path, "--optuna", "4", "--pruner", "none", name="a.json")
    again = run(tune, tmp_path, "--optuna", "4", "--pruner", "none", name="b.json")
    assert [t["setting"] for t in first["trials"]] == [t["setting"] for t in again["trials"]]
    assert [t["valid_curve"] for t in first["trials"]] == [t["valid_curve"] for t in again["trials"]]


def test_another_sampler_seed_samples_other_settings(tune) -> None:
    space = tune.parse_space(["learning-rate=loguniform:1e-4:1e-1", "batch-size=choice:128,256,512"])

    def settings(seed: int) -> list[dict]:
        study = tune.make_study(sampler_seed=seed, tpe_startup=2, pruner=optuna.pruners.NopPruner())
        study.optimize(lambda trial: sum(d.suggest(trial) for d in space), n_trials=5)  # TPE after 2
        return [dict(t.params) for t in study.trials]

    assert settings(0) == settings(0)
    assert settings(0) != settings(1)


def test_a_search_with_storage_resumes_and_refuses_another_search(tune, tmp_path, capsys) -> None:
    storage = ["--storage", str(tmp_path / "study.sqlite3"), "--pruner", "none"]
    killed = tune.make_study(
        sampler_seed=0,
        tpe_startup=2,
        pruner=optuna.pruners.NopPruner(),
        storage=tmp_path / "study.sqlite3",
        study_name="search",
    )
    killed.ask()  # a trial left running by a process that was stopped
    first = run(tune, tmp_path, "--optuna", "2", *storage)
    assert [t["state"] for t in first["trials"]] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert first["trials"][0]["stop_reason"] == "interrupted (its process ended)"  # and not counted
    resumed = run(tune, tmp_path, "--optuna", "3", *storage)
    assert [t["setting"] for t in resumed["trials"][:3]] == [t["setting"] for t in first["trials"]]
    assert [t["state"] for t in resumed["trials"]] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert resumed["chosen_test"]["overall"]["num_triples"] > 0
    with pytest.raises(SystemExit) as stop:
        run(tune, tmp_path, "--optuna", "3", *storage, "--sampler-seed", "7")
    assert stop.value.code == 2
    assert "of another search" in capsys.readouterr().err


def test_a_resumed_search_does_not_redraw_the_first_process_trials(tune, tmp_path) -> None:
    storage = ["--storage", str(tmp_path / "study.sqlite3"), "--pruner", "none"]
    first = run(tune, tmp_path, "--optuna", "1", *storage)
    resumed = run(tune, tmp_path, "--optuna", "2", *storage)  # its sampler's random start is not trial 0's
    assert resumed["trials"][0]["setting"] == first["trials"][0]["setting"]
    assert resumed["trials"][1]["setting"] != resumed["trials"][0]["setting"]
    assert resumed["sampler"]["seed"] == 0  # the search's identity; the resumed process drew with seed 0 + 1


def test_an_enqueued_setting_runs_first_once_and_a_bad_one_is_refused(tune, tmp_path, capsys) -> None:
    storage = ["--storage", str(tmp_path / "study.sqlite3"), "--pruner", "none"]
    recipe = ["--enqueue", "learning-rate=0.02", "batch-size=128", "local-epochs=2"]
    first = run(tune, tmp_path, "--optuna", "2", *storage, *recipe)
    assert first["trials"][0]["setting"] == {"learning-rate": 0.02, "batch-size": 128, "local-epochs": 2}
    assert [t["enqueued"] for t in first["trials"]] == [True, False]
    assert first["enqueued"] == [{"learning-rate": 0.02, "batch-size": "128", "local-epochs": 2}]
    resumed = run(tune, tmp_path, "--optuna", "3", *storage, *recipe)  # resumed: not run again
    assert [t["enqueued"] for t in resumed["trials"]] == [True, False, False]
    for bad, named in (
        (["learning-rate=0.5", "batch-size=128", "local-epochs=2"], "outside the range"),
        (["learning-rate=0.02", "batch-size=100", "local-epochs=2"], "not one of the choices"),
        (["learning-rate=0.02", "batch-size=128"], "missing ['local-epochs']"),
        (["learning-rate=0.02", "batch-size=128", "local-epochs=2", "margin=1"], "KEY one of the space's"),
    ):
        with pytest.raises(SystemExit):
            run(tune, tmp_path, "--optuna", "1", "--enqueue", *bad, name="bad.json")
        assert named in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_the_in_process_run_reports_every_round_and_an_exception_in_the_callback_ends_it() -> None:
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig
    from kg_datasets import load_federated

    kg = load_federated("Nations", num_clients=3, seed=0)
    config = KGEConfig(model="DistMult", embedding_dim=16, local_epochs=1, batch_size=128, eval_every=2)
    seen: list[dict] = []
    result = run_fede_in_process(kg, config, 3, progress=lambda line: None, on_round=seen.append)
    assert [info["round"] for info in seen] == [1, 2, 3]
    assert [info["valid_mrr"] is None for info in seen] == [True, False, False]  # every 2nd round, and the last
    for info, entry in zip(seen[1:], result["history"][1:]):
        assert info["valid_mrr"] == entry["valid"]["overall"]["mrr"]
    assert 0 < seen[0]["train_seconds"] <= seen[1]["train_seconds"] <= seen[2]["train_seconds"]

    class Stop(Exception):
        pass

    def stop_after_round_two(info) -> None:
        seen.append(info)
        if info["round"] == 2:
            raise Stop

    seen.clear()
    with pytest.raises(Stop):
        run_fede_in_process(kg, config, 3, progress=lambda line: None, on_round=stop_after_round_two)
    assert [info["round"] for info in seen] == [1, 2]


def test_the_median_pruner_takes_its_settings_from_the_command_line(tune) -> None:
    import argparse

    args = argparse.Namespace(prune_startup=4, prune_warmup=2, prune_min_trials=3, rounds=40)
    pruner, settings = tune.PRUNERS["median"](args)
    assert settings == {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 2, "n_min_trials": 3}
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps, pruner._n_min_trials) == (4, 2, 3)
    assert tune.PRUNERS["hyperband"](args)[1]["max_resource"] == 40
