"""Write a :class:`FederatedKG` as per-client labelled folders, atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kg_datasets.errors import KGDataError
from kg_datasets.labeled import ENTITY_VOCAB_FILE, RELATION_VOCAB_FILE
from kg_datasets.triples import labels_in_id_order

if TYPE_CHECKING:  # annotations only: model imports this module for FederatedKG.write
    from kg_datasets.model import ClientGraph, FederatedKG


def render_triples(mapped: np.ndarray, entity_labels: list[str], relation_labels: list[str]) -> bytes:
    """``head<TAB>relation<TAB>tail\\n`` lines (UTF-8) for local-id triples (n, 3), in row order."""
    if len(mapped) == 0:
        return b""
    columns = (
        map(entity_labels.__getitem__, mapped[:, 0].tolist()),
        map(relation_labels.__getitem__, mapped[:, 1].tolist()),
        map(entity_labels.__getitem__, mapped[:, 2].tolist()),
    )
    return ("\n".join(map("\t".join, zip(*columns))) + "\n").encode("utf-8")


def write_client_folder(client: ClientGraph, folder: Path) -> None:
    """Write ``folder/{train,valid,test}.txt`` and the client's local vocabularies (the folder must exist).

    ``entity_to_id.tsv`` / ``relation_to_id.tsv`` hold the client's own labels in its local-id
    order, so that a party loading its folder alone numbers entities as the server does.
    """
    entity_labels, relation_labels = client.entity_labels, client.relation_labels
    for name, factory in client.factories().items():
        data = render_triples(factory.mapped_triples.numpy(), entity_labels, relation_labels)
        (Path(folder) / f"{name}.txt").write_bytes(data)
    (Path(folder) / ENTITY_VOCAB_FILE).write_bytes(_render_vocabulary(client.train.entity_to_id))
    (Path(folder) / RELATION_VOCAB_FILE).write_bytes(_render_vocabulary(client.train.relation_to_id))


def _render_vocabulary(label_to_id) -> bytes:
    return "".join(f"{label}\t{i}\n" for i, label in enumerate(labels_in_id_order(label_to_id))).encode("utf-8")


def write_federated(kg: FederatedKG, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write ``out_dir/<k>/`` client folders plus the global vocabularies.

    Everything is written into a temporary sibling folder first and then renamed into place, so
    ``out_dir`` is either the old folder or the complete new one, never half written.

    :param kg: the federation.
    :param out_dir: destination folder.
    :param overwrite: replace an existing non-empty ``out_dir``.
    :raises KGDataError: when ``out_dir`` exists, is not empty and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise KGDataError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise KGDataError(f"{out_dir}: folder exists and is not empty (pass overwrite=True / --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for client in kg.clients:
            folder = tmp / str(client.client_id)
            folder.mkdir()
            write_client_folder(client, folder)
        (tmp / ENTITY_VOCAB_FILE).write_bytes(_render_vocabulary(kg.entity_to_id))
        (tmp / RELATION_VOCAB_FILE).write_bytes(_render_vocabulary(kg.relation_to_id))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
