"""The server's checkpoint: the state after the last completed round, written atomically.

Layout under ``<run_dir>/checkpoint/``:

``state-r<round>.npz`` (``state-r<round>-s<step>.npz`` during the SimSkip phase)
    The arrays (global entity table, best-so-far table, per-client rows, SimSkip encoder
    weights, ...) as written by :func:`numpy.savez` (no pickles). Each round gets its own file
    name, so writing round ``r`` never touches the file that round ``r - 1``'s manifest names.
``manifest.json``
    The commit point, written last: format version, round, the JSON ``state`` (best-so-far and
    early-stopping counters, RNG states, ...), the name and sha256 of the npz it belongs to, the
    model-defining run-config values with their sha256, and the sha256 and size of the
    vocabulary (the global entity labels).

Crash safety: both files go through a temporary file + ``os.replace`` (:mod:`client.kge.run_folder`),
npz first, manifest second, then older npz files are removed. A crash before the manifest is
replaced leaves the previous manifest and the npz it names intact; a missing or altered npz is
detected by its sha256. Nothing is ever silently started afresh: :func:`load_checkpoint` raises
:class:`CheckpointError` naming the file (missing, truncated, not JSON, hash mismatch) or the
setting (a changed model-defining key, with its old and new value; a different vocabulary).

Which run-config keys are model-defining: :data:`MODEL_DEFINING_KEYS`. The others,
:data:`HARMLESS_KEYS`, are budgets a resume may raise (``num-server-rounds``, ``patience``,
``simskip-rounds``), paths of outputs, timeouts, progress output and devices. Both come from the
run-config registry (:mod:`client.kge.run_config`), where every key is declared once with its class,
so a key added later has to be classified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.kge.run_config import HARMLESS_KEYS, MODEL_DEFINING_KEYS, REGISTRY, load_run_configs
from client.kge.run_folder import atomic_write_bytes, atomic_write_text

__all__ = [
    "ADDED_KEYS",
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "HARMLESS_KEYS",
    "MANIFEST_FILE",
    "MODEL_DEFINING_KEYS",
    "REFINE_CHECKPOINT_DIR",
    "CheckpointError",
    "FolderCheckpoint",
    "checkpoint_dir",
    "has_checkpoint",
    "load_checkpoint",
    "model_defining_changes",
    "model_defining_values",
    "remove_checkpoint",
    "save_checkpoint",
    "vocabulary_digest",
]

CHECKPOINT_DIR = "checkpoint"
#: the folder in which :func:`server.downstream.refine_run_folder` keeps its finished steps
#: (its own units, not this module's rounds; named here beside the KGE checkpoint's folder)
REFINE_CHECKPOINT_DIR = "refine_checkpoint"
MANIFEST_FILE = "manifest.json"
ARRAYS_PATTERN = "state-r{:06d}.npz"
#: the arrays of a checkpoint written after KGE round r, at step s of a later phase (SimSkip round s)
STEP_ARRAYS_PATTERN = "state-r{:06d}-s{:06d}.npz"
FORMAT_VERSION = 1


#: Model-defining keys added after checkpoints of :data:`FORMAT_VERSION` were first written, with
#: the value a checkpoint that lacks the key ran with: resuming it compares against that value
#: instead of refusing the key as changed. ``simskip-structure-mix`` only acts where
#: ``simskip-augmentations`` names ``row_view``, which no run before the key could name; every run
#: before ``loss`` trained with ``nssa``. The privacy keys (issue 34), ``regularize-entities``, the dropout keys,
#: ``reciprocal-relations``, ``lr-decay`` and ``downstream-top-candidates`` were added with defaults that are the
#: behaviour before them (no DP, no SecAgg, relation-only regularization, no dropout, one row per relation, a constant
#: learning rate, every candidate trained), so a checkpoint that lacks them ran with their defaults.
_ADDED_WITH_OLD_BEHAVIOUR_AS_DEFAULT = (
    "regularize-entities",
    "entity-dropout",
    "relation-dropout",
    "reciprocal-relations",
    "lr-decay",
    "downstream-top-candidates",
    "secure-aggregation",
    "secagg-clipping-range",
    "dp",
    "dp-clip",
    "dp-clip-encoder",
    "dp-noise-multiplier",
    "dp-target-epsilon",
    "dp-delta",
)
ADDED_KEYS: dict[str, Any] = {
    "simskip-structure-mix": 0.5,
    "loss": "nssa",
    **{key: REGISTRY[key].default for key in _ADDED_WITH_OLD_BEHAVIOUR_AS_DEFAULT},
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or does not belong to this run's settings."""


# ----------------------------------------------------------------------------- helpers
def checkpoint_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoint``."""
    return Path(run_dir) / CHECKPOINT_DIR


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def vocabulary_digest(vocabulary: Sequence[str]) -> str:
    """sha256 of the vocabulary, one label per line in order (global id = position)."""
    digest = hashlib.sha256()
    for label in vocabulary:
        digest.update(str(label).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _resolved(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config with every owner's defaults filled in and values normalized.

    ``{"learning-rate": 1}`` and a config without the key (default 0.001) must compare by value,
    not by spelling: the owners (FederationSettings, KGEConfig, RefinementConfig) resolve them.
    Keys no owner knows (e.g. ``dataset``) are kept as given.
    """
    settings, kge, refinement = load_run_configs(run_config)
    resolved = dict(run_config)
    resolved.update({f.name.replace("_", "-"): getattr(settings, f.name) for f in dataclasses.fields(settings)})
    resolved.update(kge.to_run_config())
    resolved.update(refinement.to_run_config())
    return resolved


def model_defining_values(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The model-defining entries of ``run_config`` (defaults filled in), as JSON values.

    :raises client.kge.config.ConfigError: for an unknown key or a bad value.
    """
    resolved = _resolved(run_config)
    return json.loads(_canonical_json({k: resolved[k] for k in sorted(MODEL_DEFINING_KEYS) if k in resolved}))


def _values_equal(old: Any, new: Any) -> bool:
    if isinstance(old, float) or isinstance(new, float):
        try:
            return float(old) == float(new) or (math.isnan(float(old)) and math.isnan(float(new)))
        except (TypeError, ValueError):
            return False
    return old == new


# ----------------------------------------------------------------------------- save
def save_checkpoint(
    run_dir: str | Path,
    *,
    round: int,  # the contract's name (shadows the builtin here only)
    arrays: Mapping[str, np.ndarray],
    state: Mapping[str, Any],
    run_config: Mapping[str, Any],
    vocabulary: Sequence[str],
    step: int = 0,
) -> Path:
    """Write the checkpoint of the completed round ``round``; returns the manifest's path.

    :param run_dir: the run folder; files go to ``<run_dir>/checkpoint/``.
    :param round: the last completed (KGE) round (>= 0).
    :param step: > 0 for a checkpoint of a later phase after that round (the SimSkip round):
        only the file name depends on it, so every checkpoint gets its own npz.
    :param arrays: name -> numeric array of any shape/dtype (no object arrays); names may
        contain ``/``. Loaded back bit-exact with the same dtype and shape.
    :param state: JSON-serializable values (numpy scalars allowed; ``inf``/``nan`` kept).
    :param run_config: the run's resolved run config (kebab-case keys).
    :param vocabulary: the global entity labels (global id = position).
    :raises CheckpointError: for an object array or a state that is not JSON-serializable
        (nothing is written then).
    """
    if int(round) < 0:
        raise CheckpointError(f"checkpoint round must be >= 0, got {round}")
    folder = checkpoint_dir(run_dir)
    try:
        state_json = json.loads(_canonical_json(dict(state)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint state of round {round} is not JSON-serializable: {err}") from err
    buffer = io.BytesIO()
    try:
        np.savez(buffer, allow_pickle=False, **{str(k): np.asarray(v) for k, v in arrays.items()})
    except ValueError as err:  # object arrays refuse to be saved without pickles
        raise CheckpointError(f"checkpoint array of round {round} cannot be saved without pickles: {err}") from err
    payload = buffer.getvalue()
    arrays_name = ARRAYS_PATTERN.format(int(round)) if step <= 0 else STEP_ARRAYS_PATTERN.format(int(round), int(step))
    model_values = model_defining_values(run_config)
    manifest = {
        "format_version": FORMAT_VERSION,
        "round": int(round),
        "arrays_file": arrays_name,
        "arrays_sha256": _sha256(payload),
        "array_names": sorted(str(k) for k in arrays),
        "state": state_json,
        "model_config": model_values,
        "model_config_sha256": _sha256(_canonical_json(model_values).encode()),
        "vocabulary_size": len(vocabulary),
        "vocabulary_sha256": vocabulary_digest(vocabulary),
    }
    atomic_write_bytes(folder / arrays_name, payload)
    manifest_path = folder / MANIFEST_FILE
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    # only now are older arrays unreferenced
    for old in folder.glob("state-r*.npz"):
        if old.name != arrays_name:
            old.unlink(missing_ok=True)
    return manifest_path


# ----------------------------------------------------------------------------- load
def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``<run_dir>/checkpoint/manifest.json`` exists (valid or not: :func:`load_checkpoint` tells)."""
    return (checkpoint_dir(run_dir) / MANIFEST_FILE).is_file()


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint: {path} does not exist (nothing to resume)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"corrupt checkpoint manifest {path}: {err}") from err
    required = (
        "format_version",
        "round",
        "arrays_file",
        "arrays_sha256",
        "state",
        "model_config",
        "model_config_sha256",
        "vocabulary_size",
        "vocabulary_sha256",
    )
    if not isinstance(manifest, dict) or any(key not in manifest for key in required):
        missing = [key for key in required if not isinstance(manifest, dict) or key not in manifest]
        raise CheckpointError(f"corrupt checkpoint manifest {path}: missing {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint manifest {path} has format version {manifest['format_version']!r}; "
            f"this code reads version {FORMAT_VERSION}"
        )
    name = str(manifest["arrays_file"])
    if Path(name).name != name or not name.endswith(".npz"):
        raise CheckpointError(f"corrupt checkpoint manifest {path}: bad arrays_file {name!r}")
    if _sha256(_canonical_json(manifest["model_config"]).encode()) != manifest["model_config_sha256"]:
        raise CheckpointError(f"corrupt checkpoint manifest {path}: model_config does not match its sha256")
    return manifest


def model_defining_changes(recorded: Mapping[str, Any], run_config: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, value now)`` of every model-defining key whose value ``run_config`` changes
    against ``recorded`` (a run's saved :func:`model_defining_values`). A key added after the run was
    recorded counts with the value the run used (:data:`ADDED_KEYS`); ``"<not set>"`` marks a missing one.

    :raises client.kge.config.ConfigError: for an unknown key or a bad value in ``run_config``.
    """
    saved: dict[str, Any] = {**ADDED_KEYS, **recorded}
    current = model_defining_values(run_config)
    return [
        (key, saved.get(key, "<not set>"), current.get(key, "<not set>"))
        for key in sorted(set(saved) | set(current))
        if not _values_equal(saved.get(key, "<not set>"), current.get(key, "<not set>"))
    ]


def _check_model_config(manifest: Mapping[str, Any], run_config: Mapping[str, Any], path: Path) -> None:
    changed = model_defining_changes(manifest["model_config"], run_config)
    if changed:
        details = ", ".join(f"{key}: checkpoint {before!r}, now {now!r}" for key, before, now in changed)
        raise CheckpointError(
            f"cannot resume from {path}: model-defining setting(s) changed: {details}. "
            "Resume with the original values, or start a new run folder"
        )


def _check_vocabulary(manifest: Mapping[str, Any], vocabulary: Sequence[str], path: Path) -> None:
    digest = vocabulary_digest(vocabulary)
    if digest != manifest["vocabulary_sha256"] or len(vocabulary) != int(manifest["vocabulary_size"]):
        raise CheckpointError(
            f"cannot resume from {path}: the vocabulary changed (checkpoint: {manifest['vocabulary_size']} "
            f"entities, sha256 {str(manifest['vocabulary_sha256'])[:12]}...; now: {len(vocabulary)} entities, "
            f"sha256 {digest[:12]}...): the clients hold a different dataset"
        )


def _read_arrays(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"corrupt checkpoint: {path} (named by the manifest) does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint arrays {path}: {err}") from err
    if _sha256(payload) != expected_sha256:
        raise CheckpointError(
            f"corrupt checkpoint: {path} does not match the sha256 in its manifest "
            f"(truncated or modified after it was written)"
        )
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"corrupt checkpoint arrays {path}: {err}") from err


def load_checkpoint(
    run_dir: str | Path,
    *,
    run_config: Mapping[str, Any],
    vocabulary: Sequence[str] | None = None,
) -> tuple[int, dict[str, np.ndarray], dict[str, Any]]:
    """Read the checkpoint of ``run_dir`` and check that it belongs to this run.

    :param run_dir: the run folder holding ``checkpoint/manifest.json``.
    :param run_config: this (resumed) run's run config; its model-defining values
        (:data:`MODEL_DEFINING_KEYS`, defaults filled in) must equal the checkpoint's.
    :param vocabulary: the global entity labels of this run; ``None`` skips that check
        (e.g. before the handshake).
    :returns: ``(round, arrays, state)`` exactly as given to :func:`save_checkpoint`.
    :raises CheckpointError: no checkpoint; a manifest that is not JSON, incomplete or of
        another format version; an npz missing, truncated or not matching its sha256 (naming
        the file); a changed model-defining key (naming it with both values); another vocabulary.
    """
    manifest_path = checkpoint_dir(run_dir) / MANIFEST_FILE
    manifest = _read_manifest(manifest_path)
    _check_model_config(manifest, run_config, manifest_path)
    if vocabulary is not None:
        _check_vocabulary(manifest, vocabulary, manifest_path)
    arrays_path = manifest_path.parent / str(manifest["arrays_file"])
    arrays = _read_arrays(arrays_path, str(manifest["arrays_sha256"]))
    expected_names = manifest.get("array_names")
    if expected_names is not None and sorted(arrays) != sorted(expected_names):
        raise CheckpointError(
            f"corrupt checkpoint arrays {arrays_path}: holds {sorted(arrays)}, "
            f"the manifest lists {sorted(expected_names)}"
        )
    return int(manifest["round"]), arrays, dict(manifest["state"])


def remove_checkpoint(run_dir: str | Path) -> None:
    """Delete ``<run_dir>/checkpoint/``, once the run's outputs hold what the checkpoint held."""
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)


# ----------------------------------------------------------------------------- in-process runs
@dataclasses.dataclass
class FolderCheckpoint:
    """The checkpoint of an in-process run (:class:`client.kge.in_process_rounds.RoundCheckpoint`) in
    ``<run_dir>/checkpoint/``: the same files, checks and errors as the Flower server's.

    :param run_dir: the run folder.
    :param run_config: the run's run config (its model-defining values must match on resume).
    :param vocabulary: the global entity labels (global id = position).
    """

    run_dir: Path
    run_config: Mapping[str, Any]
    vocabulary: Sequence[str]

    #: ``state["writer"]`` of these checkpoints: the Flower server's checkpoint of the same folder
    #: holds other arrays, and neither may resume the other
    WRITER = "in-process"

    def load(self) -> tuple[int, dict[str, np.ndarray], dict[str, Any]] | None:
        """The saved state, or ``None`` when the folder has no checkpoint yet.

        :raises CheckpointError: as :func:`load_checkpoint` (never silently starts afresh), and
            for a checkpoint the Flower server wrote.
        """
        if not has_checkpoint(self.run_dir):
            return None
        done, arrays, state = load_checkpoint(self.run_dir, run_config=self.run_config, vocabulary=self.vocabulary)
        if state.get("writer") != self.WRITER:
            raise CheckpointError(
                f"cannot resume from {checkpoint_dir(self.run_dir) / MANIFEST_FILE}: it was written by the Flower "
                "server (resume it with the Flower engine, or start a new run folder)"
            )
        return done, arrays, state

    def save(self, round_number: int, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]) -> None:
        """Replace the checkpoint with the state after ``round_number``."""
        save_checkpoint(
            self.run_dir,
            round=round_number,
            arrays=arrays,
            state={**state, "writer": self.WRITER},
            run_config=self.run_config,
            vocabulary=self.vocabulary,
        )
