"""simskip-sim end to end on UMLS (3 clients, 2 rounds, tiny model): the run folder's contents."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from server.simulation import main as sim_main
from server.simulation import parse_set_options

TINY = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "eval-every=1", "batch-size=256"]


def test_parse_set_options_reads_toml_values():
    assert parse_set_options(["a=1", "b=0.5", "c=true", "d=RotatE", 'e="x y"']) == {
        "a": 1, "b": 0.5, "c": True, "d": "RotatE", "e": "x y"}
    with pytest.raises(ValueError, match="key=value"):
        parse_set_options(["novalue"])


def test_unknown_key_fails_before_anything_starts(tmp_path, capsys):
    assert sim_main(["--dataset", "UMLS", "--run-dir", str(tmp_path / "r"), "--set", "no-such-key=1"]) == 1
    assert "no-such-key" in capsys.readouterr().err
    assert not (tmp_path / "r" / ".flwr").exists(), "no SuperLink was started"


@pytest.mark.slow  # ~45-80 s on 2 cores: Ray and SuperLink start-up dominate
@pytest.mark.timeout(300)
def test_simulation_writes_a_complete_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", "UMLS", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir)]
    for item in TINY:
        args += ["--set", item]
    assert sim_main(args) == 0

    config = json.loads((run_dir / "config.json").read_text())
    assert config["kge"]["embedding-dim"] == 8 and config["federation"]["num_server_rounds"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(set(r["train"]) == {"0", "1", "2"} and set(r["valid"]) == {"0", "1", "2"} for r in rows)
    with open(run_dir / "metrics.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 2 and "valid_overall.mrr" in table[0] and "train.0.train-loss" in table[0]

    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(final["test"]) == {"0", "1", "2"} and final["missing_clients"] == []
    assert final["best_round"] in (1, 2) and 0.0 < final["test_overall"]["mrr"] <= 1.0
    total_test = sum(m["num_triples"] for m in final["test"].values())
    assert final["test_overall"]["num_triples"] == total_test

    embeddings = np.load(run_dir / "entity_embeddings.npy")
    labels = (run_dir / "entities.tsv").read_text().splitlines()
    assert embeddings.shape == (135, 8) and len(labels) == 135  # UMLS: all 135 entities are held
    assert [line.split("\t")[0] for line in labels] == [str(i) for i in range(135)]
    # labels are the key between the partition's global ids and the server's vocabulary
    from kg_datasets import load_federated

    kg = load_federated("UMLS", num_clients=3, partition="relation", seed=0)
    assert [line.split("\t")[1] for line in labels] == sorted(kg.entity_to_id)
    for k in range(3):
        private = np.load(run_dir / "clients" / str(k) / "relation_embeddings.npz")
        assert private.files, f"client {k} wrote no relation embeddings"
    # nothing of Flower's state outside the run folder: FLWR_HOME was under it
    assert (run_dir / ".flwr" / "config.toml").is_file()


def test_collection_setting_writes_the_same_run_folder_files(tmp_path):
    run_dir = tmp_path / "collection"
    args = ["--dataset", "Nations", "--clients", "2", "--rounds", "2", "--setting", "collection",
            "--run-dir", str(run_dir)]
    for item in TINY:
        args += ["--set", item]
    assert sim_main(args) == 0
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["setting"] == "collection" and set(final["test"]) == {"0", "1"}
    assert final["test_overall"]["num_triples"] == sum(m["num_triples"] for m in final["test"].values())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and "valid_overall" in rows[1]
    assert (run_dir / "config.json").is_file() and (run_dir / "entity_embeddings.npy").is_file()
    assert not (run_dir / ".flwr").exists(), "collection trains without Flower"
