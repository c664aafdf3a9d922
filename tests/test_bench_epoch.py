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
    for name, recipe in report["recipes"].items():
        assert set(recipe["seeds"]) == {"0", "1"}
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
    ],
)
def test_bad_arguments_end_before_any_work(bench: ModuleType, extra: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*NATIONS, *extra])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


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
