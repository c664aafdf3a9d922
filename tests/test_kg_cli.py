"""The ``simskip-data`` command (called in-process through ``kg_datasets.cli.main``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kg_datasets import load_client_folder, load_federated
from kg_datasets.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "kg"


def test_stats_json_matches_the_loaded_federation(capsys):
    assert main(["stats", "UMLS", "--clients", "3", "--seed", "4", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    kg = load_federated("UMLS", num_clients=3, seed=4)
    assert stats["num_clients"] == 3 and stats["num_entities"] == kg.num_entities
    for row, client in zip(stats["clients"], kg.clients, strict=True):
        assert (row["train"], row["valid"], row["test"]) == (
            client.train.num_triples,
            client.valid.num_triples,
            client.test.num_triples,
        )
        assert row["entities"] == client.num_entities and row["relations"] == client.num_relations
    # sharing histogram: entities held by exactly k clients, computed independently here
    holders = {}
    for client in kg.clients:
        for label in client.entity_labels:
            holders[label] = holders.get(label, 0) + 1
    expected = {str(k): sum(1 for v in holders.values() if v == k) for k in range(1, 4)}
    assert stats["entity_sharing"] == expected
    assert stats["relation_sharing"]["1"] == kg.num_relations  # relation partition: disjoint


def test_stats_table_of_a_single_graph(capsys):
    assert main(["stats", "Nations"]) == 0
    out = capsys.readouterr().out
    assert "Nations: 14 entities (14 in train), 55 relations" in out
    assert "unseen in train: 0 / 0" in out


def test_partition_writes_folders_and_reports_hashes(tmp_path, capsys):
    out = tmp_path / "kin"
    assert main(["partition", "Kinships", str(out), "--clients", "4", "--partition", "triple", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = ("train.txt", "valid.txt", "test.txt", "entity_to_id.tsv", "relation_to_id.tsv")
    expected = [f"{k}/{name}" for k in range(4) for name in names] + ["entity_to_id.tsv", "relation_to_id.tsv"]
    assert sorted(result["files"]) == sorted(expected)
    digest = hashlib.sha256((out / "3" / "test.txt").read_bytes()).hexdigest()
    assert result["files"]["3/test.txt"] == {"bytes": (out / "3" / "test.txt").stat().st_size, "sha256": digest}
    client = load_client_folder(out / "2", client_id=2)
    assert client.train.num_triples == result["clients"][2]["train"]
    # a second run into the same folder is refused unless --overwrite
    assert main(["partition", "Kinships", str(out), "--clients", "4"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["partition", "Kinships", str(out), "--clients", "4", "--overwrite"]) == 0


def test_data_error_exits_2_naming_file_and_line(capsys):
    assert main(["stats", str(FIXTURES / "clients_gap")]) == 2
    assert "client folder 1/ is missing" in capsys.readouterr().err
    # as one unpartitioned graph, unseen valid/test triples are counted rather than fatal
    assert main(["stats", str(FIXTURES / "unseen")]) == 0
    assert "unseen in train: 0 / 2" in capsys.readouterr().out


def test_unknown_option_fails():
    with pytest.raises(SystemExit):
        main(["stats", "UMLS", "--partition", "community"])
