"""The ``stopping`` run-config key: ``overall`` (one tracker over the weighted valid MRR, the
default) and ``per-party`` (one tracker per party over its own valid MRR; the federation trains on
until every party has stopped, and each party tests its own best round's state).

Pure tests script the valid MRRs (the tracker, and the in-process round schedule); the learning
tests run FedE in-process on PyKEEN's Kinships split over 3 clients, where (measured, seed 0,
DistMult dim 16, lr 0.02, patience 1) client 0 stops at round 2 while the others still improve at
round 5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from client.kge.centralized import run_collection, run_fede_in_process, run_isolation
from client.kge.config import ConfigError, KGEConfig
from client.kge.early_stopping import PartyStopping
from client.kge.evaluation import weighted_overall
from client.kge.in_process_rounds import ENDED_BY_BUDGET, ENDED_BY_RULE, PartyState, run_rounds
from client.kge.training import ENTITY_KEY, LocalTrainer

# --- the tracker (pure) --------------------------------------------------------------------------


def test_party_stopping_follows_a_hand_worked_sequence() -> None:
    """patience 2; a: 0.1 0.3 0.2 0.25 -> best 2, stopped at 4; b: 0.1 0.05 0.04 -> best 1,
    stopped at 3, after which its 0.9 at round 4 is ignored (a stopped party is frozen)."""
    stopper = PartyStopping(patience=2, parties=["a", "b"])
    assert stopper.update(1, {"a": 0.1, "b": 0.1}) and stopper.improved == ("a", "b")
    assert stopper.update(2, {"a": 0.3, "b": 0.05}) and stopper.improved == ("a",)
    assert not stopper.update(3, {"a": 0.2, "b": 0.04}) and stopper.improved == ()
    assert stopper.stopped_round == {"a": None, "b": 3} and not stopper.should_stop
    saved = stopper.state()
    assert not stopper.update(4, {"a": 0.25, "b": 0.9}) and stopper.improved == ()
    assert stopper.should_stop and stopper.best_round == 2
    assert stopper.summary() == {
        "a": {"best_round": 2, "best_valid_mrr": 0.3, "stopped_round": 4},
        "b": {"best_round": 1, "best_valid_mrr": 0.1, "stopped_round": 3},
    }
    # a resumed tracker (from round 3's state) decides round 4 alike
    again = PartyStopping.from_state(2, ["a", "b"], saved)
    assert not again.update(4, {"a": 0.25, "b": 0.9}) and again.state() == stopper.state()
    with pytest.raises(ValueError, match="holds parties"):
        PartyStopping.from_state(2, ["a", "b", "c"], saved)
    # a party without a value (it did not answer) and a NaN are checks without improvement
    quiet = PartyStopping(patience=1, parties=["a", "b"])
    assert quiet.update(1, {"a": 0.2}) and quiet.improved == ("a",)
    assert quiet.stopped_round == {"a": None, "b": 1} and quiet.summary()["b"]["best_valid_mrr"] is None
    assert not quiet.update(2, {"a": math.nan}) and quiet.should_stop
    with pytest.raises(ValueError, match="distinct"):
        PartyStopping(patience=1, parties=["a", "a"])


def test_the_key_defaults_to_overall_and_names_its_choices() -> None:
    assert KGEConfig().stopping == "overall"
    assert KGEConfig.from_run_config({"stopping": "per-party"}).stopping == "per-party"
    with pytest.raises(ConfigError, match="key 'stopping': 'each' is not one of overall, per-party"):
        KGEConfig(stopping="each")


# --- the in-process round schedule with scripted valid MRRs ----------------------------------------

#: party 0 (10 valid triples) peaks at round 2, party 1 (30) keeps improving until round 5
VALID = {
    "0": {1: 0.5, 2: 0.6, 3: 0.55, 4: 0.5, 5: 0.4, 6: 0.4, 7: 0.4, 8: 0.4},
    "1": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5, 6: 0.45, 7: 0.44, 8: 0.43},
}
SIZES = {"0": 10, "1": 30}


class _MemoryCheckpoint:
    """A :class:`client.kge.in_process_rounds.RoundCheckpoint` in memory (copies of what was saved)."""

    def __init__(self) -> None:
        self.saved: tuple[int, dict[str, np.ndarray], dict[str, Any]] | None = None

    def load(self):
        return self.saved

    def save(self, round_number: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        import json

        self.saved = (round_number, {k: np.array(v) for k, v in arrays.items()}, json.loads(json.dumps(state)))


def _scripted(stopping: str, rounds: int, checkpoint=None, progress=None) -> dict[str, Any]:
    """Each party's state is the round it last trained; its test MRR is that round's number."""
    state = {"0": 0, "1": 0}

    def train_round(round_number):
        state.update({"0": round_number, "1": round_number})
        return {name: [1.0] for name in state}

    def evaluate(split):
        if split == "valid":
            return [{"mrr": VALID[name][state[name]], "num_triples": SIZES[name]} for name in ("0", "1")]
        return [{"mrr": float(state[name]), "num_triples": SIZES[name]} for name in ("0", "1")]

    def snapshot():
        return {f"client/{name}/round": np.array(state[name]) for name in state}

    def restore(arrays):
        state.update({name: int(arrays[f"client/{name}/round"]) for name in state})

    parties = PartyState(
        snapshot=lambda index: {"round": np.array(state[str(index)])},
        restore=lambda index, arrays: state.update({str(index): int(arrays["round"])}),
    )
    return run_rounds(
        setting="fede",
        config=KGEConfig(eval_every=1, patience=2, stopping=stopping),
        rounds=rounds,
        client_ids=[0, 1],
        train_round=train_round,
        evaluate=evaluate,
        snapshot=snapshot,
        restore=restore,
        progress=progress or (lambda line: None),
        checkpoint=checkpoint,
        parties=parties,
    )


def test_per_party_runs_until_every_party_stopped_and_tests_each_partys_best_round() -> None:
    result = _scripted("per-party", 20)
    # party 0: best 2, two checks without a better MRR -> stopped at 4; party 1: best 5, stopped at 7
    assert result["rounds_trained"] == 7
    assert result["stopping"]["rule"] == "per-party" and result["stopping"]["ended_by"] == "every party stopped"
    parties = result["stopping"]["parties"]
    assert {name: (p["best_round"], p["best_valid_mrr"], p["stopped_round"]) for name, p in parties.items()} == {
        "0": (2, 0.6, 4),
        "1": (5, 0.5, 7),
    }
    assert parties["0"]["best_valid"] == {"mrr": 0.6, "num_triples": 10}
    # each party tests its own best round's state; the overall test is their weighted mean
    clients = result["test"]["clients"]
    assert clients["0"]["mrr"] == 2.0 and clients["1"]["mrr"] == 5.0
    assert result["test"]["overall"]["mrr"] == pytest.approx((2 * 10 + 5 * 30) / 40)
    # the overall keys: the latest party best round, and the valid counterpart of the test
    assert result["best_round"] == 5
    assert result["best_valid_mrr"] == pytest.approx((0.6 * 10 + 0.5 * 30) / 40)
    # every validated round records where each party stands
    assert result["history"][3]["parties"]["0"] == {"best_round": 2, "best_valid_mrr": 0.6, "stopped_round": 4}
    assert result["history"][3]["parties"]["1"]["stopped_round"] is None


def test_overall_tests_every_party_on_the_one_best_overall_round() -> None:
    result = _scripted("overall", 20)
    # overall MRRs: 0.2 0.3 0.3625 0.425 0.475 0.4375 0.43 -> best 5, stopped at 7
    assert result["rounds_trained"] == 7 and result["best_round"] == 5
    assert result["best_valid_mrr"] == pytest.approx(0.475)
    assert result["test"]["clients"]["0"]["mrr"] == 5.0  # not party 0's own best round 2
    assert result["stopping"] == {"rule": "overall", "ended_by": ENDED_BY_RULE["overall"], "parties": None}
    assert "parties" not in result["history"][0]


def test_a_budget_that_ends_first_is_recorded_as_the_cap() -> None:
    result = _scripted("per-party", 6)
    assert result["rounds_trained"] == 6 and result["stopping"]["ended_by"] == ENDED_BY_BUDGET
    parties = result["stopping"]["parties"]
    assert parties["0"]["stopped_round"] == 4 and parties["1"]["stopped_round"] is None
    assert result["test"]["clients"]["0"]["mrr"] == 2.0 and result["test"]["clients"]["1"]["mrr"] == 5.0
    assert _scripted("overall", 6)["stopping"]["ended_by"] == ENDED_BY_BUDGET


class _Interrupt(Exception):
    pass


def test_a_resumed_per_party_schedule_ends_as_an_uninterrupted_one() -> None:
    whole = _scripted("per-party", 20)

    def stop_at_round_6(line: str) -> None:
        if "round 6/20" in line:
            raise _Interrupt(line)

    checkpoint = _MemoryCheckpoint()
    with pytest.raises(_Interrupt):
        _scripted("per-party", 20, checkpoint=checkpoint, progress=stop_at_round_6)
    done, arrays, _ = checkpoint.saved
    assert done == 5  # party 0 had stopped at 4: its best (round 2) is in the checkpoint
    assert int(arrays["best/client/0/round"]) == 2 and int(arrays["best/client/1/round"]) == 5
    lines: list[str] = []
    resumed = _scripted("per-party", 20, checkpoint=checkpoint, progress=lines.append)
    assert lines[0].startswith("[fede] resumed after round 5 (0: best 0.6000 at round 2, stopped at 4;")
    assert resumed["resumed_after_round"] == 5
    for key in ("rounds_trained", "best_round", "best_valid_mrr", "stopping", "test"):
        assert resumed[key] == whole[key], key
    for key in ("round", "valid", "parties"):
        assert [e.get(key) for e in resumed["history"]] == [e.get(key) for e in whole["history"]], key


# --- the runners, learning ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kinships():
    from kg_datasets import load_federated

    return load_federated("Kinships", num_clients=3, seed=0)


def _config(**changes: Any) -> KGEConfig:
    return KGEConfig(
        model="DistMult",
        embedding_dim=16,
        batch_size=512,
        num_negs_per_pos=8,
        learning_rate=0.02,
        local_epochs=1,
        eval_every=1,
        patience=1,
        stopping="per-party",
    ).replace(**changes)


class _Recorder(_MemoryCheckpoint):
    """Keeps every round's saved state (never resumes), to evaluate any round's state afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: dict[int, dict[str, np.ndarray]] = {}

    def load(self):
        return None

    def save(self, round_number, arrays, state) -> None:
        self.rounds[round_number] = {k[len("now/") :]: np.array(v) for k, v in arrays.items() if k.startswith("now/")}


@pytest.fixture(scope="module")
def per_party_fede(kinships, tmp_path_factory):
    """One per-party FedE run of 5 rounds at lr 0.02 (measured: client 0 best round 1, stopped at 2;
    clients 1 and 2 still improving at round 5), every round's state recorded, outputs written."""
    out = tmp_path_factory.mktemp("per-party-fede")
    recorder = _Recorder()
    result = run_fede_in_process(
        kinships, _config(), 5, device="cpu", progress=lambda line: None, checkpoint=recorder, out_dir=out
    )
    return result, recorder, out


def test_fede_per_party_trains_past_the_first_stop_and_tests_each_partys_own_best_round(
    kinships, per_party_fede
) -> None:
    result, recorder, out = per_party_fede
    parties = result["stopping"]["parties"]
    stopped = {name: p["stopped_round"] for name, p in parties.items()}
    assert stopped["0"] is not None and stopped["0"] < result["rounds_trained"] == 5  # trained past its stop
    assert result["stopping"]["ended_by"] == ENDED_BY_BUDGET and None in stopped.values()
    assert len({p["best_round"] for p in parties.values()}) > 1
    assert result["best_round"] == max(p["best_round"] for p in parties.values())
    valid = {e["round"]: e["valid"]["clients"] for e in result["history"]}
    for index, client in enumerate(kinships.clients):
        name = str(client.client_id)
        best, last = parties[name]["best_round"], stopped[name] or result["rounds_trained"]
        assert (
            parties[name]["best_valid_mrr"]
            == valid[best][name]["mrr"]
            == max(valid[r][name]["mrr"] for r in valid if r <= last)
        )
        # the party's test is an evaluation of its state at its own best round (a fresh trainer)
        saved = recorder.rounds[best]
        prefix = f"client/{index}/"
        trainer = LocalTrainer(client, _config(), "cpu")
        trainer.set_private_state({k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)})
        rows = saved["table"][np.asarray(client.entity_ids)]
        trainer.set_entity_embeddings(rows)
        assert trainer.evaluate("test") == pytest.approx(result["test"]["clients"][name])
        # and its written rows are that round's
        np.testing.assert_array_equal(np.load(out / "clients" / name / "entity_embeddings.npy"), rows)
    assert result["test"]["overall"] == pytest.approx(weighted_overall(list(result["test"]["clients"].values())))
    assert not (out / "entity_embeddings.npy").exists()  # no one table holds every party's best rows


def test_fede_per_party_resumes_with_the_trackers_and_best_rows_of_each_party(
    kinships, per_party_fede, tmp_path
) -> None:
    """Interrupted after round 3 of 5 (client 0 already stopped at round 2), the resumed run
    trains rounds 4-5 only and ends exactly as the uninterrupted one."""
    from kg_datasets.triples import labels_in_id_order
    from server.checkpoint import FolderCheckpoint

    whole = per_party_fede[0]
    checkpoint = FolderCheckpoint(tmp_path, _config().to_run_config(), labels_in_id_order(kinships.entity_to_id))

    def stop_after_round_3(line: str) -> None:
        if "round 4/5" in line:
            raise _Interrupt(line)

    with pytest.raises(_Interrupt):
        run_fede_in_process(kinships, _config(), 5, device="cpu", progress=stop_after_round_3, checkpoint=checkpoint)
    _, arrays, state = checkpoint.load()
    best = {name for name in arrays if name.startswith("best/")}
    # one merged best snapshot: each client's own arrays once, its rows as evaluated, no table, no optimizer
    assert f"best/client/0/{ENTITY_KEY}" in best and "best/table" not in best
    assert not any("optimizer/" in name for name in best)
    assert state["stopper"]["parties"]["0"]["stopped_round"] == whole["stopping"]["parties"]["0"]["stopped_round"]
    lines: list[str] = []
    resumed = run_fede_in_process(kinships, _config(), 5, device="cpu", progress=lines.append, checkpoint=checkpoint)
    assert resumed["resumed_after_round"] == 3 and sum("valid MRR" in line for line in lines) == 2
    for key in ("rounds_trained", "best_round", "best_valid_mrr", "stopping", "test"):
        assert resumed[key] == whole[key], key


def test_isolation_per_party_best_snapshot_has_the_overall_ones_names(kinships) -> None:
    """Per party, the best snapshot holds each client's arrays once (no larger than the overall one)."""
    overall, per_party = _MemoryCheckpoint(), _MemoryCheckpoint()
    run_isolation(
        kinships, _config(stopping="overall"), 2, device="cpu", progress=lambda line: None, checkpoint=overall
    )
    result = run_isolation(kinships, _config(), 2, device="cpu", progress=lambda line: None, checkpoint=per_party)
    shapes = [
        {k: v.shape for k, v in saved[1].items() if k.startswith("best/")} for saved in (overall.saved, per_party.saved)
    ]
    assert shapes[0] == shapes[1] and shapes[0]
    assert set(result["stopping"]["parties"]) == {"0", "1", "2"}


def test_collection_is_one_party_so_per_party_is_the_overall_rule(kinships) -> None:
    runs = {
        rule: run_collection(kinships, _config(stopping=rule), 2, device="cpu", progress=lambda line: None)
        for rule in ("overall", "per-party")
    }
    assert runs["per-party"]["test"] == runs["overall"]["test"]
    assert runs["per-party"]["best_round"] == runs["overall"]["best_round"]
    pooled = runs["per-party"]["stopping"]["parties"]["pooled"]
    assert pooled["best_round"] == runs["overall"]["best_round"]
    assert pooled["best_valid_mrr"] == runs["overall"]["best_valid_mrr"]


# --- the Flower engine: both rules (tests/test_fede_per_party.py runs per-party on it) ---------------


def test_the_flower_engine_takes_both_rules_and_refuses_an_unknown_one() -> None:
    from server.run_options import check_run_config
    from server.strategy import FLOWER_STOPPING_RULES, FedEStrategy, check_stopping

    assert set(FLOWER_STOPPING_RULES) == {"overall", "per-party"}
    for setting in ("fede", "isolation", "collection"):
        for rule in ("overall", "per-party"):
            check_run_config({"setting": setting, "stopping": rule})
    for setting in ("fede", "isolation"):
        assert FedEStrategy(setting=setting, stopping="per-party").per_party
        assert not FedEStrategy(setting=setting, stopping="overall").per_party
    with pytest.raises(ConfigError) as caught:
        check_stopping("each", "fede")
    assert "\n" not in str(caught.value) and "key 'stopping'" in str(caught.value) and "'each'" in str(caught.value)
