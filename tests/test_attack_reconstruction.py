"""scripts/attack_reconstruction.py: what an honest-but-curious FedE server recovers.

The pair ranking is checked against a full sort, the metrics against a hand computation, the
collusion score against TransE's formula, and the attacks against random guessing on UMLS (a
FedE run of a few seconds: a random triple partition, so parties share relations, and FedE's
relation partition, so they share none).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_script

#: A small, quickly trained FedE on UMLS: enough for the attacks to show (or not) against random.
UMLS_SETS = {
    "embedding-dim": 32,
    "local-epochs": 1,
    "learning-rate": 0.01,
    "num-negs-per-pos": 32,
    "patience": 100,
}
UMLS_ROUNDS = 6


@pytest.fixture(scope="module")
def attack() -> ModuleType:
    return load_script("attack_reconstruction")


def _observe(attack: ModuleType, partition: str, colluder: int = 0):
    """FedE on UMLS (3 parties) with the script's recorder on the last round: ``(kg, recorder)``."""
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig
    from kg_datasets import load_federated

    torch.set_num_threads(1)
    kg = load_federated("UMLS", num_clients=3, partition=partition, seed=0)
    recorder = attack.Recorder(None, colluder)
    run_fede_in_process(
        kg,
        KGEConfig.from_run_config(UMLS_SETS),
        UMLS_ROUNDS,
        device="cpu",
        progress=lambda line: None,
        on_upload=recorder,
    )
    return kg, recorder


@pytest.fixture(scope="module")
def umls_triple(attack: ModuleType):
    return _observe(attack, "triple")


@pytest.fixture(scope="module")
def umls_relation(attack: ModuleType):
    return _observe(attack, "relation")


def _truth(attack: ModuleType, client) -> dict[str, set]:
    triples = client.train.mapped_triples.numpy()
    return {order: attack.true_pairs(triples, order) for order in attack.ORDERS}


# --- the entity sets -------------------------------------------------------------------------------


def test_the_entity_set_attack_is_exact_under_plain_fede(attack: ModuleType, umls_triple) -> None:
    kg, recorder = umls_triple
    assert recorder.observed_round == UMLS_ROUNDS
    assert sorted(recorder.uploads) == [0, 1, 2]
    for index, client in enumerate(kg.clients):
        upload = recorder.uploads[index]
        assert np.array_equal(upload.ids, client.entity_ids)  # the server gets every held row
        assert attack.entity_set_recovery(upload.ids, client.entity_ids) == {
            "recovered": client.num_entities,
            "true": client.num_entities,
            "precision": 1.0,
            "recall": 1.0,
        }
    # what was sent is the server's table: rows two parties share were sent equal to both
    shared = np.intersect1d(recorder.uploads[0].ids, recorder.uploads[1].ids)
    row0 = recorder.uploads[0].sent[np.searchsorted(recorder.uploads[0].ids, shared)]
    row1 = recorder.uploads[1].sent[np.searchsorted(recorder.uploads[1].ids, shared)]
    assert shared.size and np.array_equal(row0, row1)


def test_entity_set_recovery_counts_wrong_and_missed_entities(attack: ModuleType) -> None:
    got = attack.entity_set_recovery(np.array([1, 2, 3, 9]), np.array([1, 2, 3, 4, 5]))
    assert got == {"recovered": 4, "true": 5, "precision": 0.75, "recall": 0.6}


# --- ranking, metrics, random guessing ------------------------------------------------------------


@pytest.mark.parametrize("order", ["ordered", "unordered"])
def test_chunked_top_k_equals_a_full_sort(attack: ModuleType, monkeypatch, order: str) -> None:
    n, k = 23, 40
    scores = torch.as_tensor(np.random.default_rng(3).normal(size=(n, n)), dtype=torch.float32)  # asymmetric
    monkeypatch.setattr(attack, "CHUNK_ELEMENTS", 3 * n)  # 3 heads per chunk: 8 chunks to merge
    got = attack.top_pairs(lambda h, t: scores[h][:, t], n, k, order)

    reference = []
    for h in range(n):
        for t in range(n):
            if order == "ordered" and h != t:
                reference.append((float(scores[h, t]), h, t))
            elif order == "unordered" and h < t:
                reference.append((max(float(scores[h, t]), float(scores[t, h])), h, t))
    reference.sort(reverse=True)
    assert len(reference) == attack.candidate_count(n, order)
    assert [tuple(p) for p in got.tolist()] == [(h, t) for _, h, t in reference[:k]]
    # more guesses than candidates: every candidate once
    every = attack.top_pairs(lambda h, t: scores[h][:, t], n, 10**6, order)
    assert sorted(map(tuple, every.tolist())) == sorted((h, t) for _, h, t in reference)


def test_both_orders_in_one_pass_equal_each_alone(attack: ModuleType, monkeypatch) -> None:
    n = 19
    raw = torch.as_tensor(np.random.default_rng(4).normal(size=(n, n)), dtype=torch.float32)
    monkeypatch.setattr(attack, "CHUNK_ELEMENTS", 4 * n)
    for scores, symmetric in ((raw, False), (raw + raw.T, True), (raw + raw.T, False)):
        scorer = lambda h, t, scores=scores: scores[h][:, t]  # noqa: E731
        both = attack.top_pairs_by_order(scorer, n, {"ordered": 30, "unordered": 25}, symmetric=symmetric)
        for order, k in (("ordered", 30), ("unordered", 25)):
            assert np.array_equal(both[order], attack.top_pairs(scorer, n, k, order))


def test_precision_and_recall_against_a_hand_computation(attack: ModuleType) -> None:
    triples = np.array([[0, 5, 1], [1, 2, 0], [2, 0, 3], [2, 1, 3], [4, 0, 4]])  # a repeat pair, a self-loop
    truth = attack.true_pairs(triples, "ordered")
    assert truth == {(0, 1), (1, 0), (2, 3)}
    assert attack.true_pairs(triples, "unordered") == {(0, 1), (2, 3)}
    guesses = np.array([[2, 3], [3, 2], [0, 1], [1, 2], [1, 0]])
    got = attack.precision_recall(guesses, truth, [1, 2, 3, 5, 9])
    assert got["k_used"] == [1, 2, 3, 5, 5]
    assert got["hits"] == [1, 1, 2, 3, 3]
    assert got["precision"] == pytest.approx([1.0, 0.5, 2 / 3, 0.6, 0.6])
    assert got["recall"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0, 1.0])


@pytest.mark.parametrize("n", [7, 3000])  # enumerated / drawn with rejection
@pytest.mark.parametrize("order", ["ordered", "unordered"])
def test_random_guesses_are_distinct_candidates(attack: ModuleType, n: int, order: str) -> None:
    k = min(500, attack.candidate_count(n, order))
    pairs = attack.random_pairs(n, k, order, np.random.default_rng(0))
    assert pairs.shape == (k, 2)
    assert len(set(map(tuple, pairs.tolist()))) == k
    assert np.all(pairs[:, 0] < pairs[:, 1]) if order == "unordered" else np.all(pairs[:, 0] != pairs[:, 1])
    assert pairs.min() >= 0 and pairs.max() < n


def test_random_baseline_is_exact_and_its_draw_is_near_it(attack: ModuleType) -> None:
    n = 40
    truth = {"ordered": {(h, (h + 1) % n) for h in range(n)}, "unordered": {(h, h + 1) for h in range(n - 1)}}
    ks = {"ordered": [100, 1560], "unordered": [100, 780]}
    report = attack.random_baseline(n, truth, ks, np.random.default_rng(0))
    assert report["ordered"]["candidates"] == 1560
    assert report["ordered"]["expected_precision"] == 40 / 1560
    assert report["unordered"]["expected_precision"] == 39 / 780
    assert report["ordered"]["expected_recall"] == [100 / 1560, 1.0]
    # every candidate guessed: precision is the expectation exactly, recall 1
    assert report["ordered"]["empirical"]["precision"][-1] == pytest.approx(40 / 1560)
    assert report["unordered"]["empirical"]["recall"][-1] == 1.0


# --- the attacks -----------------------------------------------------------------------------------


def test_the_collusion_score_is_transe_on_the_colluders_relations(attack: ModuleType, umls_triple) -> None:
    _, recorder = umls_triple
    model = recorder.colluder_model
    rows = recorder.uploads[1].returned
    scorer, _ = attack.relation_scorer(model, rows)
    relations = model.relation_representations[0](indices=None).detach().numpy()
    p = model.interaction.p
    heads, tails = torch.tensor([0, 5, 17]), torch.tensor([2, 3, 40, 99])
    got = scorer(heads, tails).numpy()
    for i, h in enumerate(heads.tolist()):
        for j, t in enumerate(tails.tolist()):
            norms = np.linalg.norm(rows[h][None] + relations - rows[t][None], ord=p, axis=1)
            assert got[i, j] == pytest.approx(-norms.min(), rel=1e-4)


def _precision_at(attack: ModuleType, kg, recorder, name: str, victim: int, k: int = 100) -> tuple[float, float]:
    """(attack's ordered precision@k, random guessing's expected precision) for ``victim``."""
    truth = _truth(attack, kg.clients[victim])
    ks = {order: [k] for order in attack.ORDERS}
    got = attack.attack_party(name, recorder.uploads[victim], recorder.colluder_model, truth, ks, "cpu")
    expected = len(truth["ordered"]) / attack.candidate_count(len(recorder.uploads[victim].ids), "ordered")
    return got["ordered"]["precision"][0], expected


def test_the_attacks_beat_random_guessing_with_shared_relations(attack: ModuleType, umls_triple) -> None:
    kg, recorder = umls_triple
    for name in ("collusion-relation", "update-anticos", "row-distance"):
        precision, random = _precision_at(attack, kg, recorder, name, victim=1)
        assert precision > 2 * random, (name, precision, random)


def test_server_alone_beats_random_guessing_with_disjoint_relations(attack: ModuleType, umls_relation) -> None:
    kg, recorder = umls_relation
    relations = [set(c.relation_ids.tolist()) for c in kg.clients]
    assert not relations[0] & relations[1]  # the colluder knows none of the victim's relations
    for name in ("update-anticos", "row-distance"):  # the server alone, no relation needed
        precision, random = _precision_at(attack, kg, recorder, name, victim=1)
        assert precision > 2 * random, (name, precision, random)


# --- the command -----------------------------------------------------------------------------------


def test_the_command_writes_its_report(attack: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "attack.json"
    status = attack.main(
        ["--data", "Nations", "--clients", "2", "--partition", "triple", "--rounds", "2", "--k", "10", "50"]
        + ["--set", "embedding-dim=8", "--set", "local-epochs=1", "--set", "num-negs-per-pos=4", "--threads", "1"]
        + ["--out", str(out)]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert report["observed_round"] == report["rounds_trained"] == 2
    assert report["command"].startswith("python scripts/attack_reconstruction.py --data Nations")
    assert {s["precision"] for s in report["entity_sets"].values()} == {1.0}
    party = report["parties"]["1"]
    n = party["entities"]
    assert party["random"]["ordered"]["candidates"] == n * (n - 1)
    assert party["random"]["ordered"]["expected_precision"] == party["true_pairs"]["ordered"] / (n * (n - 1))
    assert set(party["attacks"]) == set(attack.ATTACKS)
    assert "collusion-relation" not in report["parties"]["0"]["attacks"]  # party 0 colludes
    assert party["attacks"]["row-distance"]["ordered"]["k"] == [10, 50, party["true_pairs"]["ordered"]]
    assert party["selected"]["chosen_on"] == "0"
    assert len(report["load_average_before"]) == 3


def test_the_attack_reads_the_released_rows_under_local_dp(attack: ModuleType, tmp_path: Path) -> None:
    # UMLS, not Nations: on Nations' 14 entities most candidate pairs are true, so noised and plain rows
    # could give the same hits by chance (the noise is unseeded); UMLS' 135 entities leave room
    base = ["--data", "UMLS", "--clients", "2", "--partition", "triple", "--rounds", "2", "--k", "10", "100", "1000"]
    base += ["--attacks", "row-distance", "--set", "embedding-dim=8", "--set", "local-epochs=1"]
    base += ["--set", "num-negs-per-pos=4", "--threads", "1"]
    dp = ["--set", "dp=local", "--set", "dp-clip=0.5", "--set", "dp-noise-multiplier=4"]
    assert attack.main([*base, *dp, "--out", str(tmp_path / "dp.json")]) == 0
    assert attack.main([*base, "--out", str(tmp_path / "plain.json")]) == 0
    noised, plain = (json.loads((tmp_path / name).read_text()) for name in ("dp.json", "plain.json"))
    assert plain["dp"] is None
    assert noised["dp"]["noise_multiplier"] == 4.0 and len(noised["dp"]["parties"]) == 2
    assert {party["releases"] for party in noised["dp"]["parties"].values()} == {2}
    distances = [r["attacks"]["row-distance"]["ordered"] for r in (noised["parties"]["1"], plain["parties"]["1"])]
    assert distances[0] != distances[1]  # the attack saw other (noised) rows


def test_secure_aggregation_is_refused_by_the_in_process_attack(attack: ModuleType, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        attack.main(
            ["--data", "Nations", "--clients", "2", "--rounds", "1", "--set", "secure-aggregation=true"]
            + ["--out", str(tmp_path / "a.json")]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "this in-process run has no SecAgg+" in err
    assert "--view aggregate" in err  # the view that runs under it is named
    assert not (tmp_path / "a.json").exists()


def test_a_round_never_trained_is_an_input_error(attack: ModuleType, tmp_path: Path, capsys) -> None:
    status = attack.main(
        ["--data", "Nations", "--clients", "2", "--rounds", "1", "--observe-round", "3", "--set", "embedding-dim=8"]
        + ["--set", "num-negs-per-pos=4", "--out", str(tmp_path / "a.json")]
    )
    assert status == 2
    assert "--observe-round 3: the run trained 1 rounds only" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


# --- the observer hook of run_fede_in_process --------------------------------------------------------


def test_the_upload_observer_sees_what_the_server_aggregates_and_changes_nothing() -> None:
    from client.kge.aggregation import aggregate_rows
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig
    from kg_datasets import load_federated

    kg = load_federated("Nations", num_clients=3, partition="triple", seed=0)
    config = KGEConfig.from_run_config({"embedding-dim": 8, "local-epochs": 1, "num-negs-per-pos": 4, "patience": 100})
    seen: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def observer(server_round, index, ids, sent, returned, model) -> None:
        assert model.num_entities == len(ids)  # the party's own model
        seen[server_round, index] = (np.array(ids), np.array(sent), np.array(returned))

    plain = run_fede_in_process(kg, config, 3, progress=lambda line: None)
    observed = run_fede_in_process(kg, config, 3, progress=lambda line: None, on_upload=observer)
    assert observed["test"] == plain["test"]  # observing changes nothing
    assert sorted(seen) == [(r, k) for r in (1, 2, 3) for k in range(3)]
    for server_round in (1, 2):
        uploads = [(seen[server_round, k][0], seen[server_round, k][2]) for k in range(3)]
        table = np.zeros((kg.num_entities, seen[1, 0][1].shape[1]), dtype=np.float32)
        for k in range(3):
            ids, sent, _ = seen[server_round, k]
            table[ids] = sent
        table = aggregate_rows(table, uploads)
        for k in range(3):  # the next round sends each party the mean of this round's uploads
            ids, sent_next, _ = seen[server_round + 1, k]
            assert np.array_equal(ids, kg.clients[k].entity_ids)
            np.testing.assert_allclose(sent_next, table[ids], rtol=1e-6)


def test_a_federated_folder_is_attacked_as_stored(attack: ModuleType, tmp_path: Path) -> None:
    """The Fed3 path: a folder of client folders (here Nations, FedE's relation partition)."""
    from kg_datasets import load_federated

    folder = load_federated("Nations", num_clients=3, partition="relation", seed=0).write(tmp_path / "fed")
    out = tmp_path / "attack.json"
    status = attack.main(
        ["--data", str(folder), "--rounds", "1", "--k", "5", "--attacks", "row-distance", "collusion-relation"]
        + ["--set", "embedding-dim=8", "--set", "num-negs-per-pos=4", "--threads", "1", "--out", str(out)]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert report["data"]["partition"] == "the source's own"
    assert report["data"]["parties"] == 3
    for name, party in report["parties"].items():
        assert report["entity_sets"][name]["recall"] == 1.0
        if name != report["colluder"]:
            assert party["relations_shared_with_colluder"] == 0  # FedE's split: disjoint relations
            assert set(party["attacks"]) == {"row-distance", "collusion-relation"}


# --- the aggregate view (what the server sees under secure aggregation) ------------------------------


def _upload(attack: ModuleType, ids, sent, returned):
    return attack.Upload(np.array(ids, dtype=np.int64), np.array(sent, np.float32), np.array(returned, np.float32))


def test_the_aggregate_view_is_the_mean_over_the_holders_by_hand(attack: ModuleType) -> None:
    """Three parties over 4 entities: entity 0 held by party 0 alone, 1 by parties 0 and 1, 2 by all, 3 by party 1."""
    previous = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=np.float32)
    uploads = {
        0: _upload(attack, [0, 1, 2], previous[[0, 1, 2]], [[1, 0], [0, 2], [3, 0]]),
        1: _upload(attack, [1, 2, 3], previous[[1, 2, 3]], [[4, 0], [0, 3], [5, 5]]),
        2: _upload(attack, [2], previous[[2]], [[0, 6]]),
    }
    view = attack.aggregate_view(uploads, 4)
    mean = np.array([[1, 0], [2, 1], [1, 3], [5, 5]], dtype=np.float32)  # by hand: (0,2)+(4,0) / 2, ...
    for index, upload in uploads.items():
        assert np.array_equal(view[index].ids, upload.ids)
        np.testing.assert_allclose(view[index].returned, mean[upload.ids])
        np.testing.assert_allclose(view[index].sent, previous[upload.ids])
        np.testing.assert_allclose(view[index].delta, mean[upload.ids] - previous[upload.ids])
    # row-distance on party 0's view: -||mean_h - mean_t|| over its entities 0, 1, 2, by hand
    hand = -np.array([[0, np.sqrt(2), np.sqrt(9)], [np.sqrt(2), 0, np.sqrt(5)], [3, np.sqrt(5), 0]])
    scorer = attack.distance_scorer(view[0].returned)
    everyone = torch.arange(3)
    np.testing.assert_allclose(scorer(everyone, everyone).numpy(), hand, rtol=1e-6, atol=1e-6)
    plain = attack.distance_scorer(uploads[0].returned)(everyone, everyone).numpy()
    assert not np.allclose(plain, hand)  # the upload's own rows score otherwise
    # the closest pair of the mean table is {0, 1} (sqrt 2); of party 0's own upload it is {0, 2} (2)
    truth = {"ordered": {(0, 1)}, "unordered": {(0, 1)}}
    ks = {"ordered": [1], "unordered": [1]}
    on_mean = attack.attack_party("row-distance", view[0], None, truth, ks, "cpu")
    on_upload = attack.attack_party("row-distance", uploads[0], None, truth, ks, "cpu")
    assert on_mean["unordered"]["hits"] == [1] and on_upload["unordered"]["hits"] == [0]


def test_the_aggregate_view_is_the_table_the_engine_sends_next_round(attack: ModuleType) -> None:
    from client.kge.centralized import run_fede_in_process
    from client.kge.config import KGEConfig
    from kg_datasets import load_federated

    torch.set_num_threads(1)
    kg = load_federated("UMLS", num_clients=3, partition="relation", seed=0)
    config = KGEConfig.from_run_config({"embedding-dim": 8, "local-epochs": 1, "num-negs-per-pos": 4})
    first, second = attack.Recorder(1, None), attack.Recorder(2, None)

    def both(*upload) -> None:
        first(*upload)
        second(*upload)

    run_fede_in_process(kg, config, 2, progress=lambda line: None, on_upload=both)
    sizes = {len(client.entity_ids) for client in kg.clients}
    assert len(sizes) > 1  # the parties hold different entity sets
    view1 = attack.aggregate_view(first.uploads, kg.num_entities)
    view2 = attack.aggregate_view(second.uploads, kg.num_entities)
    for k in range(3):
        # round 1's aggregated table is what the engine sends every party in round 2
        np.testing.assert_allclose(view1[k].returned, second.uploads[k].sent, rtol=1e-6)
        assert np.array_equal(view2[k].sent, second.uploads[k].sent)


def _umls_command(view: str, out: Path, *extra: str) -> list[str]:
    return (
        ["--data", "UMLS", "--clients", "3", "--partition", "relation", "--rounds", "2", "--view", view]
        + ["--k", "10", "100", "1000"]
        + ["--attacks", "update-anticos", "row-distance", "--threads", "1", "--out", str(out)]
        + ["--set", "embedding-dim=8", "--set", "local-epochs=1", "--set", "num-negs-per-pos=4", *extra]
    )


def test_plain_and_aggregate_views_differ_and_secure_aggregation_runs_aggregate(
    attack: ModuleType, tmp_path: Path
) -> None:
    paths = {name: tmp_path / f"{name}.json" for name in ("uploads", "aggregate", "secagg")}
    assert attack.main(_umls_command("uploads", paths["uploads"])) == 0
    assert attack.main(_umls_command("aggregate", paths["aggregate"])) == 0
    secagg = ["--set", "secure-aggregation=true", "--set", "secagg-clipping-range=4"]
    assert attack.main(_umls_command("aggregate", paths["secagg"], *secagg)) == 0
    uploads, aggregate, secure = (json.loads(path.read_text()) for path in paths.values())
    assert (uploads["view"], aggregate["view"], secure["view"]) == ("uploads", "aggregate", "aggregate")
    assert "secure_aggregation" not in uploads and aggregate["secure_aggregation"] is None
    assert secure["secure_aggregation"]["in_process_stand_in"] is True
    assert secure["secure_aggregation"]["quantization_step"] == 2 * 4 / 2**22
    assert uploads["test_mrr"] == aggregate["test_mrr"] == secure["test_mrr"]  # the same training
    assert uploads["entity_sets"] == aggregate["entity_sets"]  # the handshake reveals them either way
    assert len({party["entities"] for party in uploads["parties"].values()}) > 1  # different entity sets
    for name in uploads["parties"]:
        # the update the server sees is the mean table's change, not the party's own update
        seen = [
            report["parties"][name]["attacks"]["update-anticos"]["ordered"]["hits"] for report in (uploads, aggregate)
        ]
        assert seen[0] != seen[1]
    for name in ("row-distance", "update-anticos"):
        # the stand-in is the aggregate view exactly
        assert secure["parties"]["1"]["attacks"][name] == aggregate["parties"]["1"]["attacks"][name] | {
            "seconds": secure["parties"]["1"]["attacks"][name]["seconds"]
        }
