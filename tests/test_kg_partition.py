"""Partitioners, write/read round trips and client-graph invariants on PyKEEN's bundled graphs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kg_datasets import FederatedKG, KGDataError, load_client_folder, load_federated, load_source
from kg_datasets.partition import fede_relation_partition, heldout_split


def reference_fede_split(pooled: list[tuple[str, str, str]], num_clients: int, seed: int):
    """FedE's procedure on labelled triples, written plainly from FB15k-237-Fed3/README.md."""
    rng = np.random.RandomState(seed)
    relations = sorted({r for _, r, _ in pooled})
    relations = [relations[i] for i in rng.permutation(len(relations))]
    m = round(len(relations) / num_clients)
    owner = {}
    for k in range(num_clients):
        for r in relations[k * m : (k + 1) * m] if k < num_clients - 1 else relations[k * m :]:
            owner[r] = k
    out = []
    for k in range(num_clients):
        triples = [tr for tr in pooled if owner[tr[1]] == k]
        shuffled = [triples[i] for i in rng.permutation(len(triples))]
        cnt = Counter()
        for h, r, t in shuffled:
            cnt["e", h] += 1
            cnt["e", t] += 1
            cnt["r", r] += 1
        pool, moved = [], set()
        for i, (h, r, t) in enumerate(shuffled):
            if len(pool) > 0.2 * len(triples):
                break
            if cnt["e", h] > 2 and cnt["e", t] > 2 and cnt["r", r] > 2:
                cnt["e", h] -= 1
                cnt["e", t] -= 1
                cnt["r", r] -= 1
                pool.append((h, r, t))
                moved.add(i)
        train = [tr for i, tr in enumerate(shuffled) if i not in moved]
        out.append((train, pool[: len(pool) // 2], pool[len(pool) // 2 :]))
    return out


def labelled_rows(factory) -> list[tuple[str, str, str]]:
    return [tuple(row) for row in factory.label_triples(factory.mapped_triples).tolist()]


@pytest.fixture(scope="module")
def umls():
    return load_source("UMLS")


def pooled_labels(graph) -> list[tuple[str, str, str]]:
    ents = {i: e for e, i in graph.entity_to_id.items()}
    rels = {i: r for r, i in graph.relation_to_id.items()}
    return [(ents[h], rels[r], ents[t]) for h, r, t in graph.pooled().tolist()]


@pytest.mark.parametrize(("num_clients", "seed"), [(3, 0), (5, 7)])
def test_relation_partition_matches_reference(umls, num_clients, seed):
    kg = load_federated("UMLS", num_clients=num_clients, seed=seed)
    expected = reference_fede_split(pooled_labels(umls), num_clients, seed)
    for client, (train, valid, test) in zip(kg.clients, expected, strict=True):
        assert labelled_rows(client.train) == train
        assert labelled_rows(client.valid) == valid
        assert labelled_rows(client.test) == test


def check_federation(kg: FederatedKG, pooled: np.ndarray, *, disjoint_relations: bool) -> None:
    """Union == pool (as a multiset), local ids consistent, valid/test inside train."""
    rows = []
    relation_sets = []
    for k, client in enumerate(kg.clients):
        assert client.client_id == k
        assert client.entity_ids.tolist() == sorted(set(client.entity_ids.tolist()))
        train = client.train.mapped_triples.numpy()
        assert set(np.unique(train[:, [0, 2]]).tolist()) == set(range(client.num_entities))
        assert set(np.unique(train[:, 1]).tolist()) == set(range(client.num_relations))
        for factory in client.factories().values():
            assert (
                factory.entity_to_id is client.train.entity_to_id or factory.entity_to_id == client.train.entity_to_id
            )
            local = factory.mapped_triples.numpy()
            assert local[:, [0, 2]].max() < client.num_entities and local[:, 1].max() < client.num_relations
            rows.append(
                np.stack(
                    [client.entity_ids[local[:, 0]], client.relation_ids[local[:, 1]], client.entity_ids[local[:, 2]]],
                    axis=1,
                )
            )
        relation_sets.append(set(client.relation_ids.tolist()))
        # global labels agree with local labels
        global_labels = {i: e for e, i in kg.entity_to_id.items()}
        assert [global_labels[g] for g in client.entity_ids.tolist()] == client.entity_labels
    union = np.concatenate(rows)
    assert sorted(map(tuple, union.tolist())) == sorted(map(tuple, pooled.tolist()))
    if disjoint_relations:
        assert sum(len(s) for s in relation_sets) == len(set().union(*relation_sets))


@pytest.mark.parametrize("partition", ["relation", "triple"])
def test_partition_invariants(umls, partition):
    kg = load_federated("UMLS", num_clients=4, partition=partition, seed=3)
    check_federation(kg, umls.pooled(), disjoint_relations=partition == "relation")
    if partition == "triple":  # clients share relations in the FedR-style split
        assert sum(c.num_relations for c in kg.clients) > kg.num_relations


def test_heldout_split_keeps_valid_test_inside_train_and_stops_at_20_percent():
    rng = np.random.default_rng(0)
    triples = np.stack([rng.integers(0, 40, 2000), rng.integers(0, 5, 2000), rng.integers(0, 40, 2000)], axis=1)
    train, valid, test = heldout_split(triples, np.random.RandomState(1))
    assert len(train) + len(valid) + len(test) == 2000
    assert len(valid) + len(test) == 401  # stops as soon as the pool exceeds 0.2 * n
    assert len(test) - len(valid) == 1
    held = np.concatenate([valid, test])
    assert np.isin(held[:, [0, 2]], train[:, [0, 2]]).all()
    assert np.isin(held[:, 1], train[:, 1]).all()
    counts = np.bincount(train[:, [0, 2]].ravel())
    assert counts[np.unique(triples[:, [0, 2]])].min() >= 2


def test_same_seed_same_split_other_seed_differs(tmp_path):
    a = load_federated("Kinships", num_clients=3, seed=11).write(tmp_path / "a")
    b = load_federated("Kinships", num_clients=3, seed=11).write(tmp_path / "b")
    c = load_federated("Kinships", num_clients=3, seed=12).write(tmp_path / "c")
    files = sorted(p.relative_to(a) for p in a.rglob("*.txt"))
    assert len(files) == 9
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_write_then_load_round_trip(tmp_path):
    kg = load_federated("Nations", num_clients=2, partition="triple", seed=5)
    out = kg.write(tmp_path / "nations")
    back = load_federated(out)
    assert back.entity_to_id == kg.entity_to_id and back.relation_to_id == kg.relation_to_id
    for c, d in zip(kg.clients, back.clients, strict=True):
        assert np.array_equal(c.entity_ids, d.entity_ids) and np.array_equal(c.relation_ids, d.relation_ids)
        for name in ("train", "valid", "test"):
            assert np.array_equal(c.factories()[name].mapped_triples, d.factories()[name].mapped_triples)
    alone = load_client_folder(out / "1", client_id=1)
    assert alone.entity_ids is None and alone.relation_ids is None
    assert alone.entity_labels == sorted(alone.entity_labels)
    assert set(alone.entity_labels) == set(kg.clients[1].entity_labels)
    assert sorted(labelled_rows(alone.test)) == sorted(labelled_rows(kg.clients[1].test))


def test_write_refuses_non_empty_folder_unless_overwrite(tmp_path):
    kg = load_federated("Nations", num_clients=2, seed=0)
    out = kg.write(tmp_path / "x")
    (out / "0" / "train.txt").write_text("garbage\n")
    with pytest.raises(KGDataError, match="not empty"):
        kg.write(out)
    kg.write(out, overwrite=True)
    assert load_client_folder(out / "0").train.num_triples == kg.clients[0].train.num_triples
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_too_many_clients_for_relations():
    graph = load_source("Nations")
    with pytest.raises(KGDataError, match="cannot partition 55 relations over 60 clients"):
        fede_relation_partition(graph.pooled(), ["r"] * graph.num_relations, 60, 0)


def write_openke(folder, graph, rng) -> None:
    """Write ``graph`` as OpenKE id files with shuffled (not sorted-label) ids."""
    folder.mkdir()
    ent_perm = rng.permutation(graph.num_entities)
    rel_perm = rng.permutation(graph.num_relations)
    for fname, mapping, perm in (
        ("entity2id.txt", graph.entity_to_id, ent_perm),
        ("relation2id.txt", graph.relation_to_id, rel_perm),
    ):
        lines = [f"{label}\t{perm[i]}" for label, i in mapping.items()]
        (folder / fname).write_text(f"{len(lines)}\r\n" + "".join(f"{x}\r\n" for x in lines))
    for name in ("train", "valid", "test"):
        ids = getattr(graph, name).ids
        lines = [f"{ent_perm[h]} {ent_perm[t]} {rel_perm[r]}" for h, r, t in ids.tolist()]
        (folder / f"{name}2id.txt").write_text(f"{len(lines)}\n" + "".join(f"{x}\n" for x in lines))


def test_lone_client_numbers_entities_as_the_server(umls, tmp_path):
    write_openke(tmp_path / "openke", umls, np.random.default_rng(0))
    kg = load_federated(tmp_path / "openke", num_clients=3, seed=2)
    assert sorted(kg.entity_to_id) == sorted(umls.entity_to_id) and kg.entity_to_id != umls.entity_to_id
    out = kg.write(tmp_path / "fed")
    for server_view in kg.clients:
        alone = load_client_folder(out / str(server_view.client_id))
        assert alone.entity_labels == server_view.entity_labels != sorted(server_view.entity_labels)
        assert alone.relation_labels == server_view.relation_labels
        for name in ("train", "valid", "test"):
            assert np.array_equal(alone.factories()[name].mapped_triples, server_view.factories()[name].mapped_triples)
    # a local vocabulary that does not match train is refused, naming the file
    vocab = out / "0" / "entity_to_id.tsv"
    vocab.write_text("".join(vocab.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(KGDataError, match=r"0/entity_to_id\.tsv: lists \d+ entity labels but train\.txt holds"):
        load_client_folder(out / "0")
