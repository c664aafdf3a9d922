"""kg_datasets on the real data of ../shared/data (skipped with a reason when it is absent)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from kg_datasets import KGDataError, KGDataWarning, UnseenTripleError, load_federated, load_source
from kg_datasets.errors import SplitLeakError
from kg_datasets.sources import federate

pytestmark = pytest.mark.shared_data

FB_COUNTS = (272_115, 17_535, 20_466)
FB_POOL = sum(FB_COUNTS)  # 310,116


@pytest.fixture(scope="module")
def fb15k237(shared_data):
    return load_source(shared_data / "FB15k-237")


def labelled_set(graph, split):
    ents = np.array(list(graph.entity_to_id), dtype=object)[np.argsort(list(graph.entity_to_id.values()))]
    rels = np.array(list(graph.relation_to_id), dtype=object)[np.argsort(list(graph.relation_to_id.values()))]
    ids = getattr(graph, split).ids
    return set(zip(ents[ids[:, 0]].tolist(), rels[ids[:, 1]].tolist(), ents[ids[:, 2]].tolist()))


def test_fb15k237_tsv_and_openke_agree(shared_data, fb15k237):
    openke = load_source(shared_data / "FB15k-237" / "openke")
    for graph in (fb15k237, openke):
        assert (graph.num_entities, graph.num_relations) == (14_541, 237)
        assert (len(graph.train), len(graph.valid), len(graph.test)) == FB_COUNTS
    assert set(fb15k237.entity_to_id) == set(openke.entity_to_id)
    assert set(fb15k237.relation_to_id) == set(openke.relation_to_id)
    for split in ("train", "valid", "test"):
        assert labelled_set(fb15k237, split) == labelled_set(openke, split)
    # OpenKE ids are the file's ids (FedE's edge_index_ori); first data line of entity2id.txt
    assert openke.entity_to_id["/m/027rn"] == 0


def global_rows(client) -> np.ndarray:
    """All of a client's triples (train, valid, test) as global ids (n, 3)."""
    local = np.concatenate([f.mapped_triples.numpy() for f in client.factories().values()])
    return np.stack(
        [client.entity_ids[local[:, 0]], client.relation_ids[local[:, 1]], client.entity_ids[local[:, 2]]], 1
    )


def triple_keys(rows: np.ndarray) -> np.ndarray:
    return np.sort((rows[:, 0] * 237 + rows[:, 1]) * 14_541 + rows[:, 2])


def test_fed3_clients_cover_fb15k237_exactly(shared_data, fb15k237):
    kg = load_federated(shared_data / "FB15k-237-Fed3")
    assert kg.num_clients == 3 and kg.num_entities == 14_541 and kg.num_relations == 237
    # both vocabularies are sorted labels over the same labels, so global ids agree
    assert kg.entity_to_id == fb15k237.entity_to_id and kg.relation_to_id == fb15k237.relation_to_id
    union = np.concatenate([global_rows(c) for c in kg.clients])
    assert len(union) == FB_POOL
    assert np.array_equal(triple_keys(union), triple_keys(fb15k237.pooled()))


def test_fede_partition_reproduces_fed3_byte_for_byte(shared_data, fb15k237, tmp_path):
    out = federate(fb15k237, num_clients=3, seed=12345).write(tmp_path / "fed3")
    for k in range(3):
        for split in ("train", "valid", "test"):
            ours = (out / str(k) / f"{split}.txt").read_bytes()
            assert ours == (shared_data / "FB15k-237-Fed3" / str(k) / f"{split}.txt").read_bytes(), f"{k}/{split}"


@pytest.mark.parametrize("num_clients", [3, 5, 10])
def test_fede_partition_of_fb15k237(fb15k237, num_clients):
    kg = federate(fb15k237, num_clients=num_clients, seed=0)
    relation_sets = [set(c.relation_ids.tolist()) for c in kg.clients]
    assert sum(map(len, relation_sets)) == 237 and set().union(*relation_sets) == set(range(237))
    m = round(237 / num_clients)
    assert [len(s) for s in relation_sets] == [m] * (num_clients - 1) + [237 - m * (num_clients - 1)]
    for c in kg.clients:
        train = c.train.mapped_triples.numpy()
        for f in (c.valid, c.test):  # every valid/test entity and relation is in the client's train
            local = f.mapped_triples.numpy()
            assert np.isin(local[:, [0, 2]], train[:, [0, 2]]).all() and np.isin(local[:, 1], train[:, 1]).all()
        held = c.valid.num_triples + c.test.num_triples
        assert held == int(0.2 * (held + c.train.num_triples)) + 1  # the walk stopped at the 20% rule
    union = np.concatenate([global_rows(c) for c in kg.clients])
    assert len(union) == FB_POOL
    assert np.array_equal(triple_keys(union), triple_keys(fb15k237.pooled()))


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".simskip-output.json"  # the manifest records when it was written
    }


def test_fede_partition_is_deterministic(fb15k237, tmp_path):
    a = _digest(federate(fb15k237, num_clients=10, seed=1).write(tmp_path / "a"))
    b = _digest(federate(fb15k237, num_clients=10, seed=1).write(tmp_path / "b"))
    c = _digest(federate(fb15k237, num_clients=10, seed=2).write(tmp_path / "c"))
    assert len(a) == 10 * 5 + 2  # 10 clients x (3 splits + 2 local vocabularies) + 2 global vocabularies
    assert a == b
    assert {k: v for k, v in a.items() if "/" in k} != {k: v for k, v in c.items() if "/" in k}


def test_fedlu_split_unseen_triples(shared_data):
    with pytest.raises(UnseenTripleError, match=r"FB15k-237-R10-FedLU/0/valid\.txt:\d+: .* not in client 0's train"):
        load_federated(shared_data / "FB15k-237-R10-FedLU")
    kg = load_federated(shared_data / "FB15k-237-R10-FedLU", on_unseen="drop")
    # SOURCE.md: test triples unseen in train: client0 38, client4 30, client5 6, clients 1/7/8 one each
    assert [c.dropped_unseen.get("test", 0) for c in kg.clients] == [38, 1, 0, 0, 30, 6, 0, 1, 1, 0]
    assert kg.num_entities == 14_541 and kg.num_relations == 237
    assert [c.num_relations for c in kg.clients] == [23] * 9 + [30]


def test_fede_pickle_fixture(shared_data):
    pkl = shared_data / "DDB14-FedR-fixture" / "DDB14-Fed3.pkl"
    with pytest.raises(SplitLeakError, match=r"client 0 has 1102 valid row\(s\) \(956 distinct triples\)"):
        load_federated(pkl)  # SOURCE.md: valid/test triples also in train, a leak
    with pytest.warns(KGDataWarning) as record:  # SOURCE.md: duplicates and train/test overlap
        kg = load_federated(pkl, allow_split_leaks=True)
    assert kg.records["split_leaks"]["0"] == {"valid": 1102, "test": 1139}
    messages = [str(w.message) for w in record]
    assert any(re.match(r".*DDB14-Fed3\.pkl client 0 train, row \d+: duplicate triple", m) for m in messages)
    assert any(
        re.match(
            r".*DDB14-Fed3\.pkl client 0 test, row \d+: triple also in train; client 0 has 1139 test row\(s\) \(986 distinct",
            m,
        )
        for m in messages
    )
    counts = [(c.train.num_triples, c.valid.num_triples, c.test.num_triples) for c in kg.clients]
    assert counts == [(11_883, 1_485, 1_486), (11_883, 1_485, 1_486), (11_882, 1_485, 1_486)]
    assert [c.num_relations for c in kg.clients] == [12, 13, 14]
    assert kg.num_entities == 7_787 and kg.num_relations == 14
    with pytest.raises(KGDataError, match="holds 3 clients, but num_clients=5"):
        load_federated(pkl, num_clients=5)


def test_nell995_openke_crlf(shared_data):
    graph = load_source(shared_data / "NELL-995")
    assert (graph.num_entities, graph.num_relations) == (75_492, 200)
    assert (len(graph.train), len(graph.valid), len(graph.test)) == (149_678, 543, 3_992)
    assert not any(re.search(r"\r", label) for label in graph.relation_to_id)
