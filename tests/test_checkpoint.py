"""server/checkpoint.py: bit-exact round trip, corruption detected and named, settings checked."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from client.kge.run_folder import atomic_write_bytes
from server.checkpoint import (
    HARMLESS_KEYS,
    MODEL_DEFINING_KEYS,
    CheckpointError,
    FolderCheckpoint,
    has_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["alice", "bob", "carol", "dave"]
RUN_CONFIG = {"model": "TransE", "embedding-dim": 8, "seed": 3, "num-server-rounds": 4}


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "entity-table": rng.standard_normal((4, 8)).astype(np.float32),
        "best/entity-table": rng.standard_normal((4, 8)).astype(np.float32),
        "client-rows/0": rng.standard_normal((3, 8)).astype(np.float16),
        "encoder/0.weight": rng.standard_normal((8, 8)),  # float64
        "global-ids/0": np.array([0, 2, 3], dtype=np.int64),
        "adam/step": np.array(7, dtype=np.int64),  # 0-d stays 0-d
    }


def _state() -> dict:
    rng = np.random.default_rng(11)
    rng.standard_normal(5)
    return {
        "best_round": 2,
        "best_mrr": -float("inf"),
        "bad_checks": 1,
        "rng": rng.bit_generator.state,
        "history": [0.1, 0.25],
        "stopped": False,
    }


@pytest.fixture
def run_dir(tmp_path):
    save_checkpoint(tmp_path, round=2, arrays=_arrays(), state=_state(), run_config=RUN_CONFIG, vocabulary=VOCAB)
    return tmp_path


def test_round_trip_is_bit_exact(run_dir):
    round_, arrays, state = load_checkpoint(run_dir, run_config=RUN_CONFIG, vocabulary=VOCAB)
    expected = _arrays()
    assert round_ == 2 and sorted(arrays) == sorted(expected)
    for name, array in expected.items():
        assert arrays[name].dtype == array.dtype and arrays[name].shape == array.shape, name
        assert arrays[name].tobytes() == array.tobytes(), name
    assert state == _state()
    # the RNG state restores the generator's stream exactly
    restored = np.random.default_rng()
    restored.bit_generator.state = state["rng"]
    reference = np.random.default_rng(11)
    reference.standard_normal(5)
    assert np.array_equal(restored.standard_normal(4), reference.standard_normal(4))


def test_the_latest_round_wins_and_older_arrays_are_removed(run_dir):
    save_checkpoint(
        run_dir, round=3, arrays=_arrays(1), state={"best_round": 3}, run_config=RUN_CONFIG, vocabulary=VOCAB
    )
    round_, arrays, state = load_checkpoint(run_dir, run_config=RUN_CONFIG)
    assert round_ == 3 and state == {"best_round": 3}
    assert np.array_equal(arrays["entity-table"], _arrays(1)["entity-table"])
    assert [p.name for p in (run_dir / "checkpoint").glob("*.npz")] == ["state-r000003.npz"]


def test_a_crash_between_the_two_writes_leaves_the_previous_checkpoint(run_dir):
    # round 3's arrays were written, the process died before its manifest replaced round 2's
    atomic_write_bytes(run_dir / "checkpoint" / "state-r000003.npz", b"half of something")
    round_, arrays, _ = load_checkpoint(run_dir, run_config=RUN_CONFIG, vocabulary=VOCAB)
    assert round_ == 2 and np.array_equal(arrays["entity-table"], _arrays()["entity-table"])


def test_truncated_arrays_are_an_error_naming_the_file(run_dir):
    npz = run_dir / "checkpoint" / "state-r000002.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="state-r000002.npz"):
        load_checkpoint(run_dir, run_config=RUN_CONFIG)


def test_modified_arrays_fail_the_hash_check(run_dir):
    npz = run_dir / "checkpoint" / "state-r000002.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"state-r000002\.npz.*sha256"):
        load_checkpoint(run_dir, run_config=RUN_CONFIG)


def test_missing_arrays_file_is_named(run_dir):
    (run_dir / "checkpoint" / "state-r000002.npz").unlink()
    with pytest.raises(CheckpointError, match=r"state-r000002\.npz.*does not exist"):
        load_checkpoint(run_dir, run_config=RUN_CONFIG)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"\x00\xff\xfe", b"[1, 2, 3]", b'{"round": 2}'])
def test_a_garbage_manifest_is_an_error_naming_it(run_dir, garbage):
    (run_dir / "checkpoint" / "manifest.json").write_bytes(garbage)
    assert has_checkpoint(run_dir), "a corrupt checkpoint is still a checkpoint: never a silent fresh start"
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_checkpoint(run_dir, run_config=RUN_CONFIG)


def test_a_tampered_manifest_hash_is_detected(run_dir):
    path = run_dir / "checkpoint" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["arrays_sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(run_dir, run_config=RUN_CONFIG)
    # editing a recorded setting by hand (to force a resume) is caught too
    manifest = json.loads(path.read_text())
    manifest["arrays_sha256"] = json.loads(path.read_text())["arrays_sha256"]
    manifest["model_config"]["model"] = "RotatE"
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="model_config"):
        load_checkpoint(run_dir, run_config={**RUN_CONFIG, "model": "RotatE"})


@pytest.mark.parametrize(
    ("key", "value"), [("model", "RotatE"), ("embedding-dim", 16), ("client-data-root", "/elsewhere"), ("seed", 4)]
)
def test_a_changed_model_defining_setting_is_refused_naming_it(run_dir, key, value):
    with pytest.raises(CheckpointError, match=rf"{key}: checkpoint .*, now {value!r}") as info:
        load_checkpoint(run_dir, run_config={**RUN_CONFIG, key: value}, vocabulary=VOCAB)
    assert "model-defining" in str(info.value)


def test_harmless_changes_and_spelling_of_defaults_are_accepted(run_dir):
    changed = {
        **RUN_CONFIG,
        "num-server-rounds": 40,
        "round-timeout": 5.0,
        "eval-batch-size": 64,
        "simskip-progress": True,
        "patience": 3,
        "run-dir": "/moved",
        "learning-rate": 0.001,
        "margin": 10,
    }  # defaults written out (10 == 10.0) are no change
    round_, _, _ = load_checkpoint(run_dir, run_config=changed, vocabulary=VOCAB)
    assert round_ == 2


#: Model-defining keys every checkpoint written before 2026-12-07 records (the others are in ADDED_KEYS).
ADDED_KEYS_FIRST_FORMAT = {
    "adversarial-temperature",
    "aggregation",
    "aggregation-trim",
    "batch-size",
    "client-data-root",
    "corruption-scheme",
    "data-dir",
    "dataset",
    "downstream-patience",
    "downstream-protocols",
    "downstream-seeds",
    "embedding-dim",
    "entity-constrainer",
    "eval-every",
    "eval-protocol",
    "filtered-negatives",
    "filterer",
    "fraction-train",
    "keep-optimizer-state",
    "learning-rate",
    "local-epochs",
    "margin",
    "model",
    "negative-sampler",
    "num-clients",
    "num-negs-per-pos",
    "optimizer",
    "partition",
    "partition-seed",
    "refit-epochs",
    "refit-init",
    "regularizer",
    "regularizer-p",
    "regularizer-weight",
    "seed",
    "setting",
    "simskip-activation",
    "simskip-augmentations",
    "simskip-batch-size",
    "simskip-federate",
    "simskip-gate-grid",
    "simskip-hidden-dim",
    "simskip-local-epochs",
    "simskip-lr",
    "simskip-mask-prob",
    "simskip-no-skip-ablation",
    "simskip-noise-std",
    "simskip-normalization",
    "simskip-num-layers",
    "simskip-projection-dim",
    "simskip-projection-hidden-dim",
    "simskip-search",
    "simskip-seed",
    "simskip-skip",
    "simskip-standardize",
    "simskip-temperature",
    "simskip-weight-decay",
    "stopping",
    "training-loop",
    "transfer-dtype",
}


def test_a_checkpoint_written_before_a_key_was_added_resumes_with_its_old_value(run_dir):
    from server.checkpoint import ADDED_KEYS, _canonical_json, _sha256

    path = run_dir / "checkpoint" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ADDED_KEYS:
        del manifest["model_config"][key]
    manifest["model_config_sha256"] = _sha256(_canonical_json(manifest["model_config"]).encode())
    path.write_text(json.dumps(manifest))
    assert load_checkpoint(run_dir, run_config=RUN_CONFIG, vocabulary=VOCAB)[0] == 2
    with pytest.raises(CheckpointError, match=r"simskip-structure-mix: checkpoint 0.5, now 0.7"):
        load_checkpoint(run_dir, run_config={**RUN_CONFIG, "simskip-structure-mix": 0.7}, vocabulary=VOCAB)
    with pytest.raises(CheckpointError, match=r"dp: checkpoint 'none', now 'local'"):
        load_checkpoint(
            run_dir,
            run_config={**RUN_CONFIG, "dp": "local", "dp-clip": 1.0, "dp-noise-multiplier": 1.0, "simskip-rounds": 0},
            vocabulary=VOCAB,
        )


def test_every_model_defining_key_added_since_the_format_is_in_added_keys():
    """A key added later must not make an older run's checkpoint unresumable: the keys of
    FORMAT_VERSION 1's first checkpoints (the literal set) plus ADDED_KEYS are the model-defining keys."""
    from server.checkpoint import ADDED_KEYS

    assert ADDED_KEYS_FIRST_FORMAT | set(ADDED_KEYS) == set(MODEL_DEFINING_KEYS)


def test_a_different_vocabulary_is_refused(run_dir):
    for other in (VOCAB[:-1], list(reversed(VOCAB)), [*VOCAB[:-1], "eve"]):
        with pytest.raises(CheckpointError, match="vocabulary changed"):
            load_checkpoint(run_dir, run_config=RUN_CONFIG, vocabulary=other)


def test_no_checkpoint(tmp_path):
    assert not has_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"manifest\.json does not exist"):
        load_checkpoint(tmp_path, run_config=RUN_CONFIG)
    # a temp file of an interrupted first write is not a checkpoint
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / ".manifest.json.abc.tmp").write_text("{")
    assert not has_checkpoint(tmp_path)


def test_an_in_process_checkpoint_round_trips_and_refuses_the_flower_servers(run_dir, tmp_path_factory):
    """FolderCheckpoint (the in-process runners') marks what it writes, and never resumes from the
    Flower server's checkpoint of the same folder (other arrays under other names)."""
    with pytest.raises(CheckpointError, match="written by the Flower server"):
        FolderCheckpoint(run_dir, RUN_CONFIG, VOCAB).load()
    own = FolderCheckpoint(tmp_path_factory.mktemp("in-process"), RUN_CONFIG, VOCAB)
    assert own.load() is None
    own.save(3, _arrays(), _state())
    done, arrays, state = own.load()
    assert done == 3 and state == {**_state(), "writer": "in-process"}
    assert arrays["entity-table"].tobytes() == _arrays()["entity-table"].tobytes()
    remove_checkpoint(own.run_dir)
    assert not has_checkpoint(own.run_dir) and own.load() is None


def test_unsaveable_input_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="pickles"):
        save_checkpoint(
            tmp_path, round=1, arrays={"x": np.array([object()])}, state={}, run_config=RUN_CONFIG, vocabulary=VOCAB
        )
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, round=1, arrays={}, state={"x": object()}, run_config=RUN_CONFIG, vocabulary=VOCAB)
    assert not has_checkpoint(tmp_path)


def test_every_run_config_key_is_classified_exactly_once():
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as handle:
        keys = set(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])
    assert not MODEL_DEFINING_KEYS & HARMLESS_KEYS
    unclassified = sorted(keys - MODEL_DEFINING_KEYS - HARMLESS_KEYS)
    assert not unclassified, f"classify {unclassified} in server/checkpoint.py (MODEL_DEFINING_KEYS or HARMLESS_KEYS)"
    # the ones the issue names explicitly
    assert {"model", "embedding-dim", "client-data-root"} <= MODEL_DEFINING_KEYS
    assert {"num-server-rounds", "round-timeout"} <= HARMLESS_KEYS
