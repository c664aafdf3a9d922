"""scripts/bench_epoch.py: the plain epoch timing, and ``--against-pykeen`` (this project's trainer against
PyKEEN's stock training loop on the same graph, same model, loss, negatives per positive and batch).

Everything runs on PyKEEN's Nations (14 entities, split over 2 parties) with tiny models: seconds.
No assertion depends on machine speed: the ratio is checked against the report's own seconds.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script

TINY = ["--set", "embedding-dim=8", "--set", "num-negs-per-pos=4", "--set", "batch-size=128"]
NATIONS = ["--data", "Nations", "--num-clients", "2", "--client", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_epoch")


def test_plain_mode_keeps_its_report(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "epoch.json"
    assert bench.main([*NATIONS, "--epochs", "2", *TINY, "--set", "model=DistMult", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("train_triples", "num_entities", "config", "torch_threads", "epoch_cpu_seconds", "peak_rss_mib"):
        assert key in report
    assert report["config"]["model"] == "DistMult" and report["config"]["embedding-dim"] == 8
    assert len(report["epoch_seconds"]) == len(report["losses"]) == 2
    assert report["seconds_per_epoch"] == pytest.approx(sum(report["epoch_seconds"]) / 2)


def test_against_pykeen_reports_both_loops_on_the_same_work(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    args = [
        *NATIONS,
        "--epochs",
        "1",
        "--seeds",
        "2",
        "--against-pykeen",
        *TINY,
        "--recipe",
        "shared=model=DistMult,loss=crossentropy,corruption-scheme=head,tail",
        "--recipe",
        "stock=model=TransE,training-loop=slcwa",
        "--out",
        str(out),
    ]
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert not report.get("partial")
    for key in ("command", "versions", "load_average_start", "load_average_end", "peak_rss_mib", "torch_threads"):
        assert key in report
    assert report["torch_threads"] == 1 and set(report["versions"]) >= {"torch", "pykeen", "python"}
    assert set(report["recipes"]) == {"shared", "stock"}
    assert report["recipes"]["shared"]["config"]["corruption-scheme"] == "head,tail"  # the comma was kept
    assert report["recipes"]["shared"]["regime"] == "sharednegatives"
    assert report["recipes"]["stock"]["regime"] == "slcwa"
    train_triples = report["train_triples"]
    # without --time-to-pykeen-valid: no time-to-target fields anywhere
    assert "time_to_pykeen_valid" not in report and "time_to_pykeen_valid_ratios" not in report
    for name, recipe in report["recipes"].items():
        assert set(recipe["seeds"]) == {"0", "1"}
        assert "time_to_pykeen_valid" not in recipe
        assert all(set(runs) == {"ours", "pykeen"} for runs in recipe["seeds"].values())
        assert recipe["differences"], "what differs unavoidably is stated"
        for runs in recipe["seeds"].values():
            ours, pykeen = runs["ours"], runs["pykeen"]
            # PyKEEN's stock sLCWA loop with its basic sampler and the recipe's negatives, batch given
            assert pykeen["loop"] == "pykeen.training.slcwa.SLCWATrainingLoop"
            assert pykeen["negative_sampler"] == "basic"
            assert pykeen["negative_sampler_kwargs"]["num_negs_per_pos"] == 4
            assert pykeen["negative_sampler_kwargs"]["filtered"] is True
            assert pykeen["train_kwargs"]["batch_size"] == 128 and pykeen["train_kwargs"]["use_tqdm"] is False
            assert ours["loss"] == pykeen["loss"] == ("CrossEntropyLoss" if name == "shared" else "NSSALoss")
            for side in (ours, pykeen):
                # counted at the loss: every train triple once per epoch, 4 negatives per positive
                assert side["positives_per_epoch"] == [train_triples]
                assert side["negatives_sampled_per_epoch"] == [4 * train_triples]
                assert 0 < side["negatives_kept_per_epoch"][0] <= 4 * train_triples
                assert len(side["epoch_seconds"]) == len(side["epoch_cpu_seconds"]) == len(side["losses"]) == 1
                assert 0.0 <= side["valid"]["mrr"] <= 1.0
        summary = recipe["summary"]
        for side in ("ours", "pykeen"):
            walls = [s for runs in recipe["seeds"].values() for s in runs[side]["epoch_seconds"]]
            assert summary[side]["seconds_per_epoch"] == pytest.approx(statistics.median(walls))
            mrrs = [runs[side]["valid"]["mrr"] for runs in recipe["seeds"].values()]
            assert summary[side]["valid_mrr"]["mean"] == pytest.approx(statistics.fmean(mrrs))
            assert summary[side]["valid_mrr"]["std"] == pytest.approx(statistics.stdev(mrrs))
        assert summary["ratio"] == pytest.approx(
            summary["pykeen"]["seconds_per_epoch"] / summary["ours"]["seconds_per_epoch"]
        )
        assert report["ratios"][name] == summary["ratio"]
        assert summary["at_least_2x"] == (summary["ratio"] >= 2.0)
        assert isinstance(summary["valid_mrr_within_seed_noise"], bool)  # judged with 2 seeds
    ours_loops = {name: r["seeds"]["0"]["ours"]["loop"] for name, r in report["recipes"].items()}
    assert ours_loops == {
        "shared": "client.kge.shared_negatives.SharedNegativesTrainingLoop",
        "stock": "pykeen.training.slcwa.SLCWATrainingLoop",
    }
    assert report["recipes"]["shared"]["seeds"]["0"]["ours"]["num_negatives"] == 2  # 4 split over 2 sides
    for recipe in report["recipes"].values():  # each seed: both sides from the same initial weights
        starts = {
            seed: {runs[s]["initial_weights_sha256"] for s in ("ours", "pykeen")}
            for seed, runs in recipe["seeds"].items()
        }
        assert all(len(start) == 1 for start in starts.values())
        assert starts["0"] != starts["1"], "another seed, another start"


def test_time_to_pykeen_valid_reports_the_run_to_pykeens_mrr(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "tta.json"
    args = [*NATIONS, "--epochs", "1", "--seeds", "2", "--against-pykeen", *TINY]
    args += ["--recipe", "d=model=DistMult,loss=crossentropy", "--time-to-pykeen-valid", "--max-epochs", "4"]
    assert bench.main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["time_to_pykeen_valid"]["max_epochs"] == 4 and report["time_to_pykeen_valid"]["rule"]
    recipe = report["recipes"]["d"]
    for runs in recipe["seeds"].values():
        ours, pykeen, run = runs["ours"], runs["pykeen"], runs["ours_to_pykeen_valid"]
        curve = run["valid_mrr_per_epoch"]
        assert run["target_valid_mrr"] == pykeen["valid"]["mrr"]  # the same seed's PyKEEN MRR
        assert run["same_start_as_pykeen"] and run["initial_weights_sha256"] == ours["initial_weights_sha256"]
        assert curve[0] == pytest.approx(ours["valid"]["mrr"], abs=1e-6)  # epoch 1 replays the fixed run
        assert run["epochs_run"] == len(curve) == len(run["epoch_seconds"]) == len(run["validation_seconds_per_epoch"])
        assert run["train_seconds"] == pytest.approx(sum(run["epoch_seconds"]))  # validation timed apart
        assert run["validation_seconds"] == pytest.approx(sum(run["validation_seconds_per_epoch"]))
        assert run["pykeen_epochs"] == 1 and run["pykeen_train_seconds"] == pytest.approx(sum(pykeen["epoch_seconds"]))
        assert run["best_valid_mrr"] == max(curve) == curve[run["best_epoch"] - 1]
        assert all(mrr < run["target_valid_mrr"] for mrr in curve[:-1]), "stopped at the first epoch reaching it"
        if run["reached"]:
            assert run["epochs"] == len(curve) and curve[-1] >= run["target_valid_mrr"]
            assert run["ratio"] == pytest.approx(run["pykeen_train_seconds"] / run["train_seconds"])
            assert run["outcome"].startswith(f"reached in {run['epochs']} epochs")
        else:
            assert run["epochs"] is None and run["ratio"] is None and len(curve) == 4
            assert run["outcome"].startswith("not reached within the cap of 4 epochs")
    summary = recipe["time_to_pykeen_valid"]
    runs = [seed_runs["ours_to_pykeen_valid"] for seed_runs in recipe["seeds"].values()]
    assert summary["seeds_reached"] == sum(run["reached"] for run in runs)
    assert summary["epochs_per_seed"] == {
        seed: r["ours_to_pykeen_valid"]["epochs"] for seed, r in recipe["seeds"].items()
    }
    if summary["all_reached"]:
        ours_seconds = sum(run["train_seconds"] for run in runs)
        assert summary["ratio"] == pytest.approx(sum(run["pykeen_train_seconds"] for run in runs) / ours_seconds)
    else:
        assert summary["ratio"] is None
    assert report["time_to_pykeen_valid_ratios"] == {"d": summary["ratio"]}
    assert report["ratios"]["d"] == recipe["summary"]["ratio"]  # the fixed-epoch comparison is still there
    # the default cap is 10x the PyKEEN epochs
    parsed = bench._parser().parse_args([*NATIONS, "--epochs", "3", "--against-pykeen", "--time-to-pykeen-valid"])
    assert bench._max_epochs(parsed) == 3 * bench.DEFAULT_MAX_EPOCHS_FACTOR


def test_train_to_valid_mrr_stops_at_the_known_epoch(bench: ModuleType, nations) -> None:
    from client.kge.config import KGEConfig

    config = KGEConfig(model="DistMult", embedding_dim=8, num_negs_per_pos=4, batch_size=128, loss="crossentropy")
    capped = bench.train_to_valid_mrr(nations, config, target=2.0, max_epochs=3, device="cpu")  # MRR <= 1
    curve = capped["valid_mrr_per_epoch"]
    assert not capped["reached"] and capped["epochs"] is None and capped["epochs_run"] == len(curve) == 3
    assert capped["best_valid_mrr"] == max(curve) and curve[capped["best_epoch"] - 1] == max(curve)
    assert len(capped["losses"]) == 3 and capped["valid"]["mrr"] == curve[-1]
    # a target the trainer exceeds after one epoch
    first = bench.train_to_valid_mrr(nations, config, target=0.0, max_epochs=3, device="cpu")
    assert first["reached"] and first["epochs"] == first["epochs_run"] == 1
    assert (
        first["valid_mrr_per_epoch"] == curve[:1]
        and first["initial_weights_sha256"] == capped["initial_weights_sha256"]
    )
    # the same seed replays the same curve: the best MRR of 3 epochs is reached at its first epoch reaching it
    target = max(curve)
    expected = next(epoch for epoch, mrr in enumerate(curve, 1) if mrr >= target)
    again = bench.train_to_valid_mrr(nations, config, target=target, max_epochs=3, device="cpu")
    assert again["reached"] and again["epochs"] == expected and again["valid_mrr_per_epoch"] == curve[:expected]
    with pytest.raises(ValueError, match="max_epochs must be >= 1"):
        bench.train_to_valid_mrr(nations, config, target=0.0, max_epochs=0, device="cpu")


def test_time_to_target_is_not_run_without_a_pykeen_mrr(bench: ModuleType) -> None:
    runs = {"ours": {"valid": {"mrr": 0.5}}, "pykeen": {"error": "RuntimeError: boom"}}
    skipped = bench._ours_to_pykeen_valid(None, None, runs, 3, "cpu")  # nothing trains: no client needed
    assert skipped == {"error": "not run: no PyKEEN valid MRR to reach"}
    reached = {"reached": True, "epochs": 2, "train_seconds": 1.0, "train_cpu_seconds": 1.0, "ratio": 3.0}
    reached |= {"pykeen_train_seconds": 3.0, "pykeen_train_cpu_seconds": 2.0, "best_valid_mrr": 0.4, "outcome": "x"}
    summary = bench._time_to_pykeen_valid_summary(
        {"0": {"ours_to_pykeen_valid": reached}, "1": {"ours_to_pykeen_valid": skipped}}
    )
    assert summary["seeds_reached"] == 1 and summary["all_reached"] is False and summary["ratio"] is None
    assert summary["outcome_per_seed"] == {"0": "x", "1": skipped["error"]}
    summary = bench._time_to_pykeen_valid_summary({"0": {"ours_to_pykeen_valid": reached}})
    assert summary["all_reached"] and summary["ratio"] == 3.0 and summary["cpu_ratio"] == 2.0


def test_recipes_parse_with_commas_and_presets(bench: ModuleType) -> None:
    name, values = bench.parse_recipe(
        "r=model=RotatE,corruption-scheme=head,tail,learning-rate=1.05e-3,preset=fede-paper"
    )
    assert name == "r"
    assert values == {
        "model": "RotatE",
        "corruption-scheme": "head,tail",
        "learning-rate": pytest.approx(1.05e-3),
        "preset": "fede-paper",
    }
    config = bench.recipe_run_config("small-graph", ["batch-size=64", "model=TransE"], values)
    # --preset, then --set, then the recipe's preset, then its own keys
    assert config["batch-size"] == 512 and config["training-loop"] == "slcwa"  # fede-paper's
    assert config["model"] == "RotatE" and "preset" not in config
    for bad in ("noequals", "=model=TransE", "r=", "r=model"):
        with pytest.raises(bench.RecipeError):
            bench.parse_recipe(bad)


@pytest.mark.parametrize(
    "extra",
    [
        ["--recipe", "a=model=TransE"],  # a recipe without --against-pykeen
        ["--against-pykeen", "--recipe", "a=model=TransE", "--recipe", "a=model=DistMult"],  # twice
        ["--against-pykeen", "--recipe", "a=no-such-key=1"],
        ["--against-pykeen", "--recipe", "a=training-loop=nosuchregime"],
        ["--against-pykeen", "--seeds", "0"],
        ["--time-to-pykeen-valid"],  # without --against-pykeen
        ["--against-pykeen", "--max-epochs", "3"],  # a cap without --time-to-pykeen-valid
        ["--against-pykeen", "--time-to-pykeen-valid", "--max-epochs", "0"],
    ],
)
def test_bad_arguments_end_before_any_work(bench: ModuleType, extra: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*NATIONS, *extra])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "Nations", "--client", "0"], "needs num_clients"),
        (["--data", "Nations", "--num-clients", "2", "--client", "2"], "--client 2: Nations has 2 parties (0 to 1)"),
    ],
)
def test_data_that_does_not_give_the_party_is_named(bench: ModuleType, args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*args, "--epochs", "1"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_unknown_regime_is_named(bench: ModuleType) -> None:
    from client.kge.config import ConfigError, KGEConfig

    with pytest.raises(ConfigError, match=r"training-loop 'nosuchregime' has no PyKEEN counterpart"):
        bench.check_counterpart(KGEConfig(training_loop="nosuchregime"))


def test_lcwa_counterpart_is_pykeens_lcwa_loop_and_counts_labels(bench: ModuleType, nations) -> None:
    from pykeen.training import LCWATrainingLoop

    from client.kge.config import KGEConfig
    from client.kge.models import build_model, seeded

    config = KGEConfig(model="DistMult", embedding_dim=8, loss="crossentropy", training_loop="lcwa")
    with seeded(0):
        model = build_model(config, nations.train)
        loop = bench.pykeen_loop(model, nations.train, config, "bloom")
        assert type(loop) is LCWATrainingLoop
        counter = bench.LossCounter(model.loss)
        loop.train(nations.train, num_epochs=1, batch_size=256, use_tqdm=False, pin_memory=False)
    # every (head, relation) pair's true tails are its positives: each train triple once
    assert counter.epochs[0]["positives"] == nations.train.num_triples
    pairs = nations.train.mapped_triples[:, :2].unique(dim=0).shape[0]
    assert counter.epochs[0]["negatives_sampled"] == pairs * nations.train.num_entities - nations.train.num_triples
