"""The centralized check (issue 32, deliverable 2): a graph's original split as one party with every
entity kept (``load_federated(..., resplit=False, on_unseen="keep")``), and ``scripts/run_central.py``
which trains it and tests the best-valid round under the standard protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script

from client.kge.config import KGEConfig
from client.kge.evaluation import evaluate_client_protocols
from client.kge.models import initial_entity_table
from client.kge.training import LocalTrainer
from kg_datasets import KGDataError, load_client_folder, load_federated

#: The tiny graph's entity that only a test triple holds.
UNSEEN = "new"
UNSEEN_TRIPLE = ("e1", "r0", UNSEEN)
#: Small and fast: the script's tests train this for 2 rounds.
TINY_SETS = ["embedding-dim=16", "batch-size=8", "num-negs-per-pos=4"]


def _write(folder: Path, name: str, rows) -> None:
    (folder / f"{name}.txt").write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")


def _tiny_splits() -> dict[str, list[tuple[str, str, str]]]:
    triples = [(f"e{i}", f"r{(i * j) % 3}", f"e{j}") for i in range(6) for j in range(6) if i != j]
    valid, test = triples[::7], triples[3::7]
    train = [t for t in triples if t not in valid and t not in test]
    return {"train": train, "valid": valid, "test": [*test, UNSEEN_TRIPLE]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A labelled folder whose test split holds one triple with an entity absent from train."""
    folder = tmp_path_factory.mktemp("tiny") / "graph"
    folder.mkdir()
    for name, rows in _tiny_splits().items():
        _write(folder, name, rows)
    return folder


# --- the loader -----------------------------------------------------------------------------------


def test_original_split_keeps_the_unseen_entity_in_the_vocabulary(tiny):
    splits = _tiny_splits()
    kg = load_federated(tiny, resplit=False, on_unseen="keep")
    assert kg.num_clients == 1 and kg.records["split"] == "original"
    client = kg.clients[0]
    assert UNSEEN in client.train.entity_to_id  # one vocabulary for all three factories
    assert client.num_entities == kg.num_entities == 7
    assert np.array_equal(client.entity_ids, np.arange(7))  # the party's ids are the graph's ids
    assert (client.train.num_triples, client.valid.num_triples, client.test.num_triples) == tuple(
        len(splits[name]) for name in ("train", "valid", "test")
    )
    assert dict(client.kept_unseen) == {"test": 1} and dict(kg.records["kept_unseen"]) == {"0": {"test": 1}}
    # the original rows, in file order (not a re-split of the pooled triples)
    labels = {i: e for e, i in client.train.entity_to_id.items()}
    relations = {i: r for r, i in client.train.relation_to_id.items()}
    test_rows = [(labels[h], relations[r], labels[t]) for h, r, t in client.test.mapped_triples.tolist()]
    assert test_rows == splits["test"]


def test_the_unseen_triple_is_ranked_with_the_untrained_initial_row(tiny):
    kg = load_federated(tiny, resplit=False, on_unseen="keep")
    client = kg.clients[0]
    # negatives corrupt relations only: an entity row moves only through the triples that hold it
    config = KGEConfig(
        model="DistMult", embedding_dim=8, training_loop="slcwa", corruption_scheme="relation", num_negs_per_pos=2
    )
    table = initial_entity_table(config, kg.num_entities, seed=config.seed)
    trainer = LocalTrainer(client, config)
    trainer.set_entity_embeddings(table[client.entity_ids])
    trainer.train(3)
    rows = trainer.get_entity_embeddings()
    unseen = client.train.entity_to_id[UNSEEN]
    assert np.array_equal(rows[unseen], table[unseen]), "the kept entity's row is the untrained initial row"
    assert not np.allclose(np.delete(rows, unseen, axis=0), np.delete(table, unseen, axis=0)), "training ran"

    reciprocal: dict[str, np.ndarray] = {}
    metrics = evaluate_client_protocols(
        trainer.model, client, split="test", protocols=("standard",), reciprocal_ranks=reciprocal
    )["standard"]
    assert metrics["num_triples"] == client.test.num_triples  # the unseen triple is not dropped
    index = len(_tiny_splits()["test"]) - 1  # the last test row
    h, r, t = client.test.mapped_triples[index].tolist()
    assert t == unseen
    # its rank by hand: every entity a candidate, the other known answers (train/valid/test) filtered out
    known = torch.cat([f.mapped_triples for f in client.factories().values()])
    model = trainer.model.eval()
    with torch.no_grad():
        tails = model.score_t(torch.tensor([[h, r]]))[0]
        heads = model.score_h(torch.tensor([[r, t]]))[0]

    def realistic_rank(scores: torch.Tensor, true: int, others: set[int]) -> float:
        keep = torch.tensor([e == true or e not in others for e in range(scores.numel())])
        kept = scores[keep]
        return (1 + int((kept > scores[true]).sum()) + int((kept >= scores[true]).sum())) / 2

    other_tails = {int(x[2]) for x in known.tolist() if x[0] == h and x[1] == r} - {t}
    other_heads = {int(x[0]) for x in known.tolist() if x[1] == r and x[2] == t} - {h}
    by_hand = (1 / realistic_rank(tails, t, other_tails) + 1 / realistic_rank(heads, h, other_heads)) / 2
    assert reciprocal["standard"][index] == pytest.approx(by_hand, rel=1e-6)
    assert tails.numel() == heads.numel() == kg.num_entities


def test_keep_is_for_one_party_and_the_original_split_for_one_client(tiny, tmp_path):
    with pytest.raises(KGDataError, match="num_clients must be 1, got 3"):
        load_federated(tiny, resplit=False, num_clients=3, on_unseen="keep")
    root = tmp_path / "fed"
    for k in range(2):
        (root / str(k)).mkdir(parents=True)
        for name, rows in _tiny_splits().items():
            _write(root / str(k), name, rows)
    with pytest.raises(KGDataError, match="on_unseen='keep' is for one party"):
        load_federated(root, on_unseen="keep")
    with pytest.raises(KGDataError, match="unseen in its train"):  # the default still refuses it, naming it
        load_federated(tiny, resplit=False)
    dropped = load_federated(tiny, resplit=False, on_unseen="drop").clients[0]
    assert UNSEEN not in dropped.train.entity_to_id and dict(dropped.dropped_unseen) == {"test": 1}
    # one party's own folder: the kept label gets the id after the train labels
    party = load_client_folder(tiny, on_unseen="keep")
    assert party.train.entity_to_id[UNSEEN] == 6 and dict(party.kept_unseen) == {"test": 1}


def test_simskip_data_offers_keep_to_no_federation(capsys):
    from kg_datasets.cli import parse_and_validate

    with pytest.raises(SystemExit) as info:
        parse_and_validate(["stats", "UMLS", "--clients", "3", "--on-unseen", "keep"])
    assert info.value.code == 2
    assert "--on-unseen" in capsys.readouterr().err


@pytest.mark.shared_data
def test_fb15k237_original_split_is_the_standard_protocol(shared_data, monkeypatch):
    """All 14,541 entities, 237 relations and 272,115 / 17,535 / 20,466 triples (the counts of
    ../shared/data/FB15k-237/SOURCE.md, checked there with line and label counts); the evaluator
    ranks every test triple against every entity, filtered with all three splits."""
    source = shared_data / "FB15k-237"
    if not (source / "train.txt").is_file():
        pytest.skip(f"FB15k-237 not found at {source}")
    kg = load_federated(source, resplit=False, on_unseen="keep")
    client = kg.clients[0]
    assert (kg.num_entities, kg.num_relations) == (14_541, 237)
    assert (client.num_entities, client.num_relations) == (14_541, 237)
    assert (client.train.num_triples, client.valid.num_triples, client.test.num_triples) == (272_115, 17_535, 20_466)
    assert dict(client.kept_unseen) == {"valid": 9, "test": 28}
    assert np.array_equal(client.entity_ids, np.arange(14_541))

    import client.kge.evaluation as evaluation

    seen: dict[str, list] = {"candidates": [], "filters": []}
    original_protocols, original_process = evaluation.evaluate_protocols, evaluation.FusedRankEvaluator.process_scores_

    def spy_protocols(model, mapped_triples, *, filter_triples=(), **kwargs):
        seen["filters"].append(sum(len(t) for t in filter_triples) + len(mapped_triples))
        return original_protocols(model, mapped_triples, filter_triples=filter_triples, **kwargs)

    def spy_process(self, hrt_batch, target, scores, true_scores=None, dense_positive_mask=None):
        seen["candidates"].append(scores.shape[1])
        return original_process(self, hrt_batch, target, scores, true_scores, dense_positive_mask)

    monkeypatch.setattr(evaluation, "evaluate_protocols", spy_protocols)
    monkeypatch.setattr(evaluation.FusedRankEvaluator, "process_scores_", spy_process)
    trainer = LocalTrainer(client, KGEConfig(model="DistMult", embedding_dim=4, eval_batch_size=1024))
    metrics = trainer.evaluate("test", protocol="standard")
    assert metrics["num_triples"] == 20_466
    assert set(seen["candidates"]) == {14_541}
    assert seen["filters"] == [272_115 + 17_535 + 20_466]


# --- the command ----------------------------------------------------------------------------------


def _run(tmp: Path, data: Path, out: str, *extra: str, script=None) -> tuple[int, Path]:
    module = script or load_script("run_central")
    folder = tmp / out
    code = module.main(["--data", str(data), "--out", str(folder), "--rounds", "2", "--threads", "1", *extra])
    return code, folder


def _sets() -> list[str]:
    return [arg for item in TINY_SETS for arg in ("--set", item)]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> Path:
    code, folder = _run(tmp_path_factory.mktemp("central"), tiny, "run", *_sets())
    assert code == 0
    return folder


def test_the_command_writes_the_run_folder(finished, tiny):
    final = json.loads((finished / "final_metrics.json").read_text())
    for key in (
        "test",
        "preset",
        "config",
        "set",
        "rounds_trained",
        "best_round",
        "stop_reason",
        "wall_seconds",
        "peak_rss_mib",
        "load_average_before",
        "load_average_after",
        "torch_threads",
        "command",
        "data",
        "protocol",
    ):
        assert key in final, key
    assert set(final["test"]) == {"mrr", "hits@1", "hits@3", "hits@10", "num_triples"}
    splits = _tiny_splits()
    assert final["test"]["num_triples"] == len(splits["test"])  # the unseen triple too
    assert final["data"]["entities"] == final["protocol"]["candidates"] == 7
    assert final["data"]["kept_unseen"] == {"test": 1} and final["data"]["split"] == "original"
    assert final["rounds_trained"] == 2 and final["stop_reason"] == "round budget: --rounds 2"
    assert final["torch_threads"] == 1 and final["peak_rss_mib"] > 0 and final["preset"] is None
    assert final["config"]["embedding-dim"] == 16 and final["set"]["embedding-dim"] == 16
    assert final["command"].startswith("python scripts/run_central.py --data ")
    rows = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2]
    assert all(0 < row["valid_mrr"] <= 1 and row["seconds"] > 0 for row in rows)
    best = max(rows, key=lambda row: row["valid_mrr"])
    assert final["best_round"] == best["round"] and final["best_valid_mrr"] == best["valid_mrr"]
    assert not (finished / "checkpoint").exists()
    assert json.loads((finished / "config.json").read_text())["writer"] == "scripts/run_central.py"


def test_the_test_metrics_equal_a_direct_evaluation(finished, tiny):
    final = json.loads((finished / "final_metrics.json").read_text())
    client = load_federated(tiny, resplit=False, on_unseen="keep").clients[0]
    trainer = LocalTrainer(client, KGEConfig.from_run_config(final["config"]))
    trainer.set_entity_embeddings(np.load(finished / "clients" / "0" / "entity_embeddings.npy"))
    with np.load(finished / "clients" / "0" / "relation_embeddings.npz") as npz:
        state = {name: torch.from_numpy(npz[name]) for name in npz.files}
    trainer.model.load_state_dict(state, strict=False)
    direct = trainer.evaluate("test", protocol="standard")
    assert direct == pytest.approx(final["test"], abs=1e-12)


def test_an_interrupted_run_resumes_after_its_last_round(finished, tiny, tmp_path):
    script = load_script("run_central")
    save = script.RecordingCheckpoint.save

    def save_then_stop(self, round_number, arrays, state):
        save(self, round_number, arrays, state)
        if round_number == 1:
            raise KeyboardInterrupt  # killed just after round 1's checkpoint

    script.RecordingCheckpoint.save = save_then_stop
    code, folder = _run(tmp_path, tiny, "run", *_sets(), script=script)
    assert code == 130
    assert (folder / "checkpoint").is_dir() and not (folder / "final_metrics.json").exists()
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1

    code, folder = _run(tmp_path, tiny, "run", *_sets())
    assert code == 0
    final = json.loads((folder / "final_metrics.json").read_text())
    assert final["resumed_after_round"] == 1 and final["rounds_trained"] == 2
    assert [json.loads(line)["round"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    uninterrupted = json.loads((finished / "final_metrics.json").read_text())
    assert final["test"] == pytest.approx(uninterrupted["test"], abs=1e-6)


def test_a_finished_run_is_reported_and_not_trained_again(finished, tiny, capsys):
    before = (finished / "final_metrics.json").read_bytes()
    code, _ = _run(finished.parent, tiny, finished.name, *_sets())
    assert code == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (finished / "final_metrics.json").read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "eval-protocol=fede"], "eval-protocol must be 'standard'"),
        (["--set", "no-such-key=1"], "no-such-key"),
        (["--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--device", "tpu"], "--device must be"),
        # a privacy key this Flower-free run would ignore is refused (client.kge.settings.in_process_local_dp)
        (["--set", "dp=local", "--set", "dp-clip=1", "--set", "dp-noise-multiplier=1"], "dp = local"),
        (["--set", "secure-aggregation=true"], "secure-aggregation = true"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tiny, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        load_script("run_central").main(["--data", str(tiny), "--out", str(tmp_path / "out"), *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run_central.py: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_outputs_are_checked_before_any_work(finished, tiny, tmp_path, capsys):
    script = load_script("run_central")
    cases = [
        (tiny / "out", "lies inside the input"),
        (finished, "another configuration ("),
    ]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases.append((foreign, "did not write (notes.txt)"))
    for out, message in cases:
        with pytest.raises(SystemExit) as info:
            script.main(["--data", str(tiny), "--out", str(out), "--rounds", "2", "--set", "embedding-dim=32"])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tiny / "out").exists() and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_a_federation_is_refused(tmp_path, capsys):
    root = tmp_path / "fed"
    for k in range(2):
        (root / str(k)).mkdir(parents=True)
        for name, rows in _tiny_splits().items():
            _write(root / str(k), name, rows)
    code = load_script("run_central").main(["--data", str(root), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "a federation of 2 clients" in capsys.readouterr().err


def test_export_copies_the_small_files_and_keeps_another_runs(finished, tiny, tmp_path, capsys):
    exported = tmp_path / "results" / "central" / "tiny"
    code, _ = _run(finished.parent, tiny, finished.name, *_sets(), "--export", str(exported))
    assert code == 0
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "final_metrics.json", "metrics.jsonl"]
    for name in ("config.json", "final_metrics.json", "metrics.jsonl"):
        assert (exported / name).read_bytes() == (finished / name).read_bytes()
    # another run's export is refused before any work, and left as it was
    before = (exported / "final_metrics.json").read_bytes()
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, tiny, "other", *_sets(), "--export", str(exported))
    assert info.value.code == 2
    assert "holds another run's final_metrics.json" in capsys.readouterr().err
    assert (exported / "final_metrics.json").read_bytes() == before and not (tmp_path / "other").exists()


def test_a_run_recorded_before_a_key_was_added_is_still_its_own(finished, tiny, tmp_path, capsys):
    """A key added after a run began (server.checkpoint.ADDED_KEYS) counts with the value the run used: the
    finished run is reported and exported, not refused as another configuration; another value still is."""
    import shutil

    from server.checkpoint import ADDED_KEYS

    older = tmp_path / "older"
    shutil.copytree(finished, older)
    config = json.loads((older / "config.json").read_text(encoding="utf-8"))
    for key in ("downstream-top-candidates", "lr-decay"):
        assert key in ADDED_KEYS
        del config["model_defining"][key]  # as a run begun before these keys existed recorded it
    (older / "config.json").write_text(json.dumps(config), encoding="utf-8")
    code, _ = _run(tmp_path, tiny, "older", *_sets(), "--export", str(tmp_path / "exported"))
    assert code == 0 and "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "exported" / "final_metrics.json").is_file()
    with pytest.raises(SystemExit) as info:
        _run(tmp_path, tiny, "older", *_sets(), "--set", "lr-decay=0.5")
    assert info.value.code == 2 and "lr-decay: the run used 1.0, now 0.5" in capsys.readouterr().err
