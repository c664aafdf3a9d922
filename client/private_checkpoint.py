"""A party's private checkpoints: its relations, optimizer state and (isolation) entity rows of a
round, on its own disk, so that a resumed or rejoining party restores exactly the state the server's
checkpoint expects. Nothing here leaves the party.

``<out>/checkpoint/<kind>-<round:06d>.npz``: the ``context.state`` record's arrays plus the
federation id and the round; written atomically; the :data:`KEEP_NEWEST` newest and the newest one
not after the best round are kept.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord

from client.kge.run_folder import atomic_write_bytes

__all__ = [
    "CHECKPOINT_DIR",
    "KEEP_NEWEST",
    "KGE_CHECKPOINT",
    "ClientCheckpointError",
    "load_private_checkpoint",
    "save_private_checkpoint",
]

CHECKPOINT_DIR = "checkpoint"
#: file-name prefix of the KGE rounds' private checkpoints (the SimSkip phase's: ``simskip``)
KGE_CHECKPOINT = "round"
CHECKPOINT_FILE = "{}-{:06d}.npz"
META_FEDERATION = "meta/federation-id"
META_ROUND = "meta/round"
#: newest train checkpoints kept (the server's checkpoint is at most one round behind a client's)
KEEP_NEWEST = 2


class ClientCheckpointError(RuntimeError):
    """A private checkpoint the server asked for is missing or unreadable (the file is named)."""


def _checkpoint_files(out: Path, kind: str = KGE_CHECKPOINT) -> list[tuple[int, Path]]:
    """``(round, path)`` of the party's checkpoints of ``kind``, oldest first."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(kind)}-(\d{{6}})\.npz$")
    found = [(int(m.group(1)), path) for path in folder.iterdir() if (m := pattern.match(path.name))]
    return sorted(found)


def save_private_checkpoint(
    out: Path,
    server_round: int,
    federation_id: str,
    private: ArrayRecord,
    best_round: int = 0,
    kind: str = KGE_CHECKPOINT,
) -> Path:
    """Write ``private`` (the ``context.state`` record) as round ``server_round``'s checkpoint.

    Atomic (temporary file + ``os.replace``); then prunes all but the :data:`KEEP_NEWEST`
    newest and the newest one not after ``best_round``.

    :param kind: the file-name prefix: ``round`` (KGE phase) or ``simskip`` (the local-only
        SimSkip ablation's own encoder weights).
    """
    arrays = {key: private[key].numpy() for key in private}
    arrays[META_FEDERATION] = np.asarray(federation_id)
    arrays[META_ROUND] = np.asarray(int(server_round), dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = out / CHECKPOINT_DIR / CHECKPOINT_FILE.format(kind, int(server_round))
    atomic_write_bytes(path, buffer.getvalue())
    files = _checkpoint_files(out, kind)
    keep = {r for r, _ in files[-KEEP_NEWEST:]}
    keep.add(max((r for r, _ in files if r <= best_round), default=-1))  # the best round's state
    for other_round, other in files:
        if other_round not in keep:
            other.unlink(missing_ok=True)
    return path


def load_private_checkpoint(
    out: Path, federation_id: str, max_round: int, kind: str = KGE_CHECKPOINT
) -> tuple[int, ArrayRecord] | None:
    """The newest checkpoint of ``kind`` of this federation with round <= ``max_round``, or ``None``.

    Checkpoints of another federation (an earlier run that used the same folder) are ignored.

    :raises ClientCheckpointError: for an unreadable (truncated, corrupt) file, naming it.
    """
    for file_round, path in reversed(_checkpoint_files(out, kind)):
        if file_round > max_round:
            continue
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except Exception as err:  # zip/npy errors of many kinds: name the file
            raise ClientCheckpointError(
                f"private checkpoint {path} is unreadable: {type(err).__name__}: {err}"
            ) from err
        if str(arrays.pop(META_FEDERATION, "")) != federation_id:
            continue
        arrays.pop(META_ROUND, None)
        return file_round, ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in arrays.items()})
    return None
