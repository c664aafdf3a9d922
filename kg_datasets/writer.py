"""Write a :class:`FederatedKG` as per-client labelled folders, atomically."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kg_datasets.errors import OUTPUT_ERRORS, KGDataError
from kg_datasets.labeled import ENTITY_VOCAB_FILE, RELATION_VOCAB_FILE
from kg_datasets.triples import labels_in_id_order
from simskip_core import outputs

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


#: The parameter that replaces a folder, as messages name it (``simskip-data`` shows ``--overwrite``).
OVERWRITE = "overwrite=True"


@contextmanager
def kg_output_errors() -> Iterator[None]:
    """Re-raise :mod:`simskip_core.outputs` errors as this package's (:data:`OUTPUT_ERRORS`)."""
    try:
        yield
    except outputs.UnsafeOutputError as exc:
        if isinstance(exc, KGDataError):
            raise
        ours = next(OUTPUT_ERRORS[kind] for kind in type(exc).__mro__ if kind in OUTPUT_ERRORS)
        raise ours(str(exc)) from exc


def check_federated_output(
    out_dir: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None] = (), overwrite: bool = False
) -> None:
    """Check before any work that :func:`write_federated` may write ``out_dir`` (the rule of
    :func:`simskip_core.outputs.plan_folder_replacement`); writes nothing.

    :raises UnsafeOutputError: (or :class:`OutputOverlapError`, :class:`ForeignOutputError`) when not.
    """
    with kg_output_errors():
        outputs.plan_folder_replacement(out_dir, inputs=inputs, overwrite=overwrite, overwrite_flag=OVERWRITE)


def write_federated(
    kg: FederatedKG,
    out_dir: Path,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    records: Mapping[str, Any] | None = None,
    command: str = "kg_datasets.FederatedKG.write",
) -> Path:
    """Write ``out_dir/<k>/`` client folders plus the global vocabularies and the manifest.

    Everything is written into a temporary sibling folder first and then renamed into place, so
    ``out_dir`` is either the old folder or the complete new one, never half written
    (:func:`simskip_core.outputs.staged_folder`). The manifest
    :data:`simskip_core.outputs.MARKER_FILE` names the command, the time, the files and ``records``
    (the federation's :attr:`FederatedKG.records`, e.g. duplicates dropped and accepted leaks).

    :param kg: the federation.
    :param out_dir: destination folder.
    :param overwrite: replace an existing non-empty ``out_dir`` that simskip wrote (its removed
        files are listed on stderr).
    :param inputs: what the federation was read from: ``out_dir`` may not be, contain or lie inside one.
    :param records: extra entries for the manifest's ``records``.
    :param command: the command recorded in the manifest.
    :raises UnsafeOutputError: ``out_dir`` exists and is not empty and ``overwrite`` is False, or is
        the current folder or an ancestor of it, or (:class:`ForeignOutputError`) has no marker.
    :raises OutputOverlapError: ``out_dir`` is, contains or lies inside an input.
    """
    staged = outputs.staged_folder(
        out_dir, command=command, inputs=inputs, overwrite=overwrite, overwrite_flag=OVERWRITE
    )
    with kg_output_errors(), staged as st:
        tmp = st.path
        for client in kg.clients:
            folder = tmp / str(client.client_id)
            folder.mkdir()
            write_client_folder(client, folder)
        (tmp / ENTITY_VOCAB_FILE).write_bytes(_render_vocabulary(kg.entity_to_id))
        (tmp / RELATION_VOCAB_FILE).write_bytes(_render_vocabulary(kg.relation_to_id))
        st.records.update({**kg.records, **(records or {})})
    return Path(out_dir)
