"""No leak between splits (issue 31, item 2).

Partitioning pools train, valid and test and re-splits them: repeated triples are dropped first
(and counted), so none lands in a client's train and its valid or test. A client folder whose
valid or test holds a train triple is an error (which client, how many, an example) unless
``--allow-split-leaks`` / ``allow_split_leaks=True`` accepts it, and then the count is kept in the
manifest, the federation's records and the stats JSON. ``stats`` counts repeats within and across
the splits of any source.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from kg_datasets import KGDataWarning, load_client_folder, load_federated, load_source
from kg_datasets.cli import main as data_main
from kg_datasets.errors import SplitLeakError
from kg_datasets.triples import encode_triples, labels_in_id_order
from simskip_core.outputs import MARKER_FILE


def write_labelled(folder: Path, splits: dict[str, list[tuple[str, str, str]]]) -> Path:
    folder.mkdir(parents=True)
    for name, rows in splits.items():
        (folder / f"{name}.txt").write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return folder


def nations_rows() -> dict[str, list[tuple[str, str, str]]]:
    graph = load_source("Nations")
    entities, relations = labels_in_id_order(graph.entity_to_id), labels_in_id_order(graph.relation_to_id)
    return {
        name: [(entities[h], relations[r], entities[t]) for h, r, t in getattr(graph, name).ids.tolist()]
        for name in ("train", "valid", "test")
    }


def leaked_rows(kg) -> list[int]:
    """Per client, its valid and test rows also in its train (what must be 0 after a partition)."""
    counts = []
    for client in kg.clients:
        keys = {
            name: encode_triples(f.mapped_triples.numpy(), client.num_entities, client.num_relations)
            for name, f in client.factories().items()
        }
        counts.append(int(np.isin(keys["valid"], keys["train"]).sum() + np.isin(keys["test"], keys["train"]).sum()))
    return counts


@pytest.fixture
def duplicated_source(tmp_path: Path) -> Path:
    """Nations with every train triple written twice, and 5 valid triples repeated in train."""
    rows = nations_rows()
    rows["train"] = rows["train"] + rows["train"] + rows["valid"][:5]
    return write_labelled(tmp_path / "dup", rows)


@pytest.mark.parametrize("partition", ["relation", "triple"])
def test_partition_drops_repeated_triples_before_splitting(duplicated_source, partition):
    n_train = len(nations_rows()["train"])
    with pytest.warns(KGDataWarning, match=rf"dropped {n_train + 5} repeated triple"):
        kg = load_federated(duplicated_source, num_clients=2, partition=partition, seed=0)
    assert kg.records["duplicates_dropped"] == n_train + 5
    assert leaked_rows(kg) == [0, 0]
    total = sum(c.train.num_triples + c.valid.num_triples + c.test.num_triples for c in kg.clients)
    assert total == sum(len(v) for v in nations_rows().values())  # every distinct triple, once


def test_partition_cli_records_the_dropped_repeats_and_writes_a_clean_federation(duplicated_source, tmp_path, capsys):
    out = tmp_path / "fed"
    assert data_main(["partition", str(duplicated_source), str(out), "--clients", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    n_dropped = len(nations_rows()["train"]) + 5
    assert result["records"]["duplicates_dropped"] == n_dropped
    manifest = json.loads((out / MARKER_FILE).read_text())
    assert manifest["records"]["duplicates_dropped"] == n_dropped
    assert all(
        c["overlaps"] == {"valid_in_train": 0, "test_in_train": 0, "test_in_valid": 0} for c in result["clients"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicate, no leak left to warn about
        assert leaked_rows(load_federated(out)) == [0, 0]


def test_stats_counts_repeats_within_and_across_the_splits_of_a_graph(duplicated_source, capsys):
    assert data_main(["stats", str(duplicated_source), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["duplicates"] == {"train": len(nations_rows()["train"]), "valid": 0, "test": 0}
    assert stats["overlaps"] == {"valid_in_train": 5, "test_in_train": 0, "test_in_valid": 0}
    assert data_main(["stats", str(duplicated_source)]) == 0
    assert "valid in train 5, test in train 0, test in valid 0" in capsys.readouterr().out


@pytest.fixture
def leaked_federation(tmp_path: Path) -> Path:
    """Nations over 2 clients, with client 1's first two train triples copied into its test."""
    root = tmp_path / "fed"
    load_federated("Nations", num_clients=2, seed=0).write(root)
    train = (root / "1" / "train.txt").read_text().splitlines(keepends=True)
    with (root / "1" / "test.txt").open("a") as handle:
        handle.writelines(train[:2])
    return root


def test_a_train_triple_in_a_clients_test_is_an_error_naming_client_count_and_example(leaked_federation):
    first = (leaked_federation / "1" / "train.txt").read_text().splitlines()[0].split("\t")
    with pytest.raises(SplitLeakError) as error:
        load_federated(leaked_federation)
    message = str(error.value)
    assert "client 1 has 2 test row(s)" in message and "in its train split" in message
    assert repr(first[0]) in message and "--allow-split-leaks" in message
    assert "1/test.txt:" in message  # file and line
    with pytest.raises(SplitLeakError, match="client 0 has 2 test row"):  # the party's own loader too
        load_client_folder(leaked_federation / "1")


def test_the_partition_command_refuses_a_leaked_source(leaked_federation, tmp_path, capsys):
    out = tmp_path / "copy"
    assert data_main(["partition", str(leaked_federation), str(out)]) == 2
    err = capsys.readouterr().err
    assert "client 1 has 2 test row(s)" in err and "--allow-split-leaks" in err
    assert not out.exists()


def test_allow_split_leaks_accepts_and_counts_them(leaked_federation, tmp_path, capsys):
    with pytest.warns(KGDataWarning, match="accepted by --allow-split-leaks"):
        kg = load_federated(leaked_federation, allow_split_leaks=True)
    assert kg.records["split_leaks"] == {"1": {"test": 2}}
    assert kg.clients[1].split_leaks == {"test": 2} and kg.clients[0].split_leaks == {}
    with pytest.warns(KGDataWarning, match="accepted by --allow-split-leaks"):
        client = load_client_folder(leaked_federation / "1", allow_split_leaks=True)
    assert client.split_leaks == {"test": 2}

    out = tmp_path / "copy"
    assert data_main(["partition", str(leaked_federation), str(out), "--allow-split-leaks", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["records"]["split_leaks"] == {"1": {"test": 2}}
    assert json.loads((out / MARKER_FILE).read_text())["records"]["split_leaks"] == {"1": {"test": 2}}


def test_stats_reports_a_leak_in_the_table_and_the_json(leaked_federation, capsys):
    assert data_main(["stats", str(leaked_federation), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["clients"][1]["overlaps"]["test_in_train"] == 2
    assert stats["overlaps"] == {"valid_in_train": 0, "test_in_train": 2, "test_in_valid": 0}
    assert stats["records"]["split_leaks"] == {"1": {"test": 2}}
    assert data_main(["stats", str(leaked_federation)]) == 0
    assert "LEAK: 0 valid and 2 test rows are also in their client's train" in capsys.readouterr().out


def test_unique_pooled_is_pooled_when_nothing_repeats():
    graph = load_source("Nations")
    pooled, dropped = graph.unique_pooled()
    assert dropped == 0 and np.array_equal(pooled, graph.pooled())
