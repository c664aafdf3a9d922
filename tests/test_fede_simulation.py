"""simskip-sim end to end: UMLS (KGE phase only) and Kinships (both phases), 3 clients, tiny budgets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from client.kge.config import parse_set_options
from server.sim_resources import auto_gpus_per_client, ray_num_cpus
from server.simulation import main as sim_main

TINY = ["embedding-dim=8", "local-epochs=1", "num-negs-per-pos=4", "eval-every=1", "batch-size=256"]


def test_parse_set_options_reads_toml_values():
    assert parse_set_options(["a=1", "b=0.5", "c=true", "d=RotatE", 'e="x y"']) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "RotatE",
        "e": "x y",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_set_options(["novalue"])


def test_ray_gets_room_for_every_client_by_default():
    # 3 clients: 3 actors whatever the machine's cores (Flower makes one actor per client CPUs)
    assert ray_num_cpus(3) == 3
    assert ray_num_cpus(3, num_cpus_per_client=2) == 6
    assert ray_num_cpus(10, concurrent_clients=4) == 4
    assert ray_num_cpus(3, concurrent_clients=8) == 3  # never more actors than clients
    with pytest.raises(ValueError, match="must be >= 1"):
        ray_num_cpus(3, concurrent_clients=0)


def test_a_visible_gpu_is_shared_by_the_clients_that_train_at_once():
    assert auto_gpus_per_client(3, gpu_visible=False) == 0.0
    assert auto_gpus_per_client(3, gpu_visible=True) == pytest.approx(1 / 3)
    assert auto_gpus_per_client(10, concurrent_clients=4, gpu_visible=True) == 0.25
    assert auto_gpus_per_client(2, concurrent_clients=8, gpu_visible=True) == 0.5


def test_no_gpu_is_seen_where_cuda_is_hidden(monkeypatch):
    from server.sim_resources import cuda_gpu_visible

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_gpu_visible() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert cuda_gpu_visible() is False


def test_concurrent_clients_below_one_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sim_main(["--dataset", "UMLS", "--run-dir", str(tmp_path / "r"), "--concurrent-clients", "0"])
    assert exit_info.value.code == 2 and "--concurrent-clients must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_unknown_key_fails_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # refused while the options are checked
        sim_main(["--dataset", "UMLS", "--run-dir", str(tmp_path / "r"), "--set", "no-such-key=1"])
    assert exit_info.value.code == 2 and "no-such-key" in capsys.readouterr().err
    assert not (tmp_path / "r" / ".flwr").exists(), "no SuperLink was started"


@pytest.mark.slow  # ~45-80 s on 2 cores: Ray and SuperLink start-up dominate
@pytest.mark.timeout(300)
def test_simulation_writes_a_complete_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--dataset", "UMLS", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir)]
    for item in TINY + ["simskip-rounds=0"]:  # the KGE phase only (the refinement phase: test below)
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
    args = [
        "--dataset",
        "Nations",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--setting",
        "collection",
        "--run-dir",
        str(run_dir),
    ]
    for item in TINY + REFINE_TINY:
        args += ["--set", item]
    assert sim_main(args) == 0
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert final["setting"] == "collection" and set(final["test"]) == {"0", "1"}
    # the refinement phase runs in-process after centralized training, with the same table
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["protocols"]) == ["as-trained", "relation-refit:trained", "adapter", "finetune"]
    for entry in results["protocols"].values():
        assert list(entry["rows"]) == ["unrefined", "refined", "perturbed", "refined-no-skip"]
    assert results["clients"] == ["0", "1", "overall"]
    assert final["test_overall"]["num_triples"] == sum(m["num_triples"] for m in final["test"].values())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and "valid_overall" in rows[1]
    assert (run_dir / "config.json").is_file() and (run_dir / "entity_embeddings.npy").is_file()
    assert not (run_dir / ".flwr").exists(), "collection trains without Flower"


REFINE_TINY = [
    "simskip-rounds=2",
    "simskip-local-epochs=1",
    "simskip-batch-size=64",
    "simskip-hidden-dim=16",
    "simskip-no-skip-ablation=true",
    "refit-epochs=1",
]
RESULT_COLUMNS = [
    "standard.mrr",
    "standard.hits@1",
    "standard.hits@3",
    "standard.hits@10",
    "fede.mrr",
    "fede.hits@1",
    "fede.hits@5",
    "fede.hits@10",
]


@pytest.mark.slow  # ~1-2 min on 2 cores: Ray start-up, 2 KGE rounds, 2 SimSkip rounds, 3 re-fits per client
@pytest.mark.timeout(600)
def test_kinships_runs_both_phases_end_to_end_and_writes_the_table(tmp_path):
    run_dir = tmp_path / "kinships"
    args = ["--dataset", "Kinships", "--clients", "3", "--rounds", "2", "--run-dir", str(run_dir)]
    for item in TINY + REFINE_TINY:
        args += ["--set", item]
    assert sim_main(args) == 0

    results = json.loads((run_dir / "results.json").read_text())
    labels = ["as-trained", "relation-refit:trained", "adapter", "finetune"]
    assert list(results["protocols"]) == labels
    assert results["clients"] == ["0", "1", "2", "overall"] and results["columns"] == RESULT_COLUMNS
    for entry in results["protocols"].values():
        assert list(entry["rows"]) == ["unrefined", "refined", "perturbed", "refined-no-skip"]
        for row in entry["rows"].values():
            for client in results["clients"]:
                assert set(row[client]) == set(RESULT_COLUMNS)
                assert all(0.0 <= cell["mean"] <= 1.0 for cell in row[client].values())
        assert set(entry["gain_points"]) == {"refined", "perturbed", "refined-no-skip"}
        assert set(entry["selection"]) == {"0", "1", "2"}, "every client chose its refined setting on valid"
    # the as-trained protocol's unrefined row is the KGE phase's own final test (standard protocol)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    for client, metrics in final["test"].items():
        # the same rows: the downstream phase rounds the server's table to transfer-dtype, as the KGE phase sent it
        cell = results["protocols"]["as-trained"]["rows"]["unrefined"][client]["standard.mrr"]
        assert cell["mean"] == pytest.approx(metrics["mrr"], rel=1e-12)
    simskip = [json.loads(line) for line in (run_dir / "simskip_metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in simskip] == [1, 2] and set(simskip[0]["simskip_loss"]) == {"0", "1", "2"}
    with open(run_dir / "results.csv") as handle:  # protocols x clients x (4 rows + 3 gains) x (mean, std)
        assert len(list(csv.DictReader(handle))) == 4 * 4 * 7 * 2
    for name in ("results.md", "valid_mrr.png", "simskip_loss.png", "refined_vs_unrefined.png", "downstream.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "clients" / "0" / "refined" / "refined.npy").is_file()
