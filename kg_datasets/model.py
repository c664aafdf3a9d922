"""The data types of a (federated) knowledge graph.

* :class:`KGSplit`: one graph with train/valid/test as global-id triples (a single-graph source).
* :class:`ClientGraph`: one party's graph as PyKEEN ``TriplesFactory`` objects with client-local ids.
* :class:`FederatedKG`: global vocabularies plus the clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pykeen.triples import TriplesFactory

from kg_datasets.triples import LocatedTriples, encode_triples, labels_in_id_order
from kg_datasets.writer import write_federated


class _GlobalVocabularies:
    """``num_entities`` / ``num_relations`` of a graph holding global vocabularies."""

    entity_to_id: Mapping[str, int]
    relation_to_id: Mapping[str, int]

    @property
    def num_entities(self) -> int:
        return len(self.entity_to_id)

    @property
    def num_relations(self) -> int:
        return len(self.relation_to_id)


@dataclass(frozen=True)
class KGSplit(_GlobalVocabularies):
    """One knowledge graph with train/valid/test over global vocabularies.

    :param name: a display name (e.g. ``"FB15k-237"``).
    :param entity_to_id: entity label -> global id, ids dense 0..E-1.
    :param relation_to_id: relation label -> global id, ids dense 0..R-1.
    :param train: global-id triples (n_train, 3), with their file/line origins.
    :param valid: likewise.
    :param test: likewise.
    """

    name: str
    entity_to_id: Mapping[str, int]
    relation_to_id: Mapping[str, int]
    train: LocatedTriples
    valid: LocatedTriples
    test: LocatedTriples

    def pooled(self) -> np.ndarray:
        """int64 (n, 3): train, then valid, then test rows, in file order (the partitioners' input)."""
        return np.concatenate([self.train.ids, self.valid.ids, self.test.ids], axis=0)

    def unique_pooled(self) -> tuple[np.ndarray, int]:
        """The pooled rows without repeats (each triple's first occurrence, in pooled order) and how
        many rows were dropped: the partitioners' input, so that no triple lands in two splits.

        :return: ``(int64 (m, 3) triples, n - m)``; with no repeats, exactly :meth:`pooled`.
        """
        pooled = self.pooled()
        keys = encode_triples(pooled, self.num_entities, self.num_relations)
        _, first = np.unique(keys, return_index=True)
        if first.size == len(pooled):
            return pooled, 0
        return pooled[np.sort(first)], int(len(pooled) - first.size)


@dataclass(frozen=True)
class ClientGraph:
    """One party's graph: train/valid/test ``TriplesFactory`` objects sharing client-local ids.

    The local entity (relation) set is exactly the entities (relations) of the train split; valid
    and test hold only those. (Loaded with ``on_unseen="keep"``, one party only: the entities and
    relations of all three splits, so valid/test may hold ones no train triple holds, counted in
    ``kept_unseen``.) Local ids follow global ids when built from a :class:`FederatedKG`
    (FedE's ``np.unique`` order) and sorted labels when a folder is loaded alone.

    :param client_id: the client's index (its folder name).
    :param train: local-id factory; ``entity_to_id`` maps label -> local id.
    :param valid: same ``entity_to_id`` / ``relation_to_id`` as ``train``.
    :param test: likewise.
    :param entity_ids: int64 (num_entities,), local id -> global entity id of the federation;
        ``None`` when the folder was loaded alone.
    :param relation_ids: int64 (num_relations,), local -> global relation id; ``None`` likewise.
    :param dropped_unseen: per split (``"valid"``, ``"test"``), how many triples were dropped
        because they hold an entity or relation unseen in train (``on_unseen="drop"``).
    :param split_leaks: per split (``"valid"``, ``"test"``), how many of its distinct triples are
        also in train, accepted with ``allow_split_leaks=True`` (otherwise they are an error).
    :param kept_unseen: per split (``"valid"``, ``"test"``), how many triples holding an entity or
        relation unseen in train were kept (``on_unseen="keep"``).
    """

    client_id: int
    train: TriplesFactory
    valid: TriplesFactory
    test: TriplesFactory
    entity_ids: np.ndarray | None
    relation_ids: np.ndarray | None
    dropped_unseen: Mapping[str, int] = field(default_factory=dict)
    split_leaks: Mapping[str, int] = field(default_factory=dict)
    kept_unseen: Mapping[str, int] = field(default_factory=dict)

    @property
    def num_entities(self) -> int:
        return int(self.train.num_entities)

    @property
    def num_relations(self) -> int:
        return int(self.train.num_relations)

    @property
    def entity_labels(self) -> list[str]:
        """Entity labels in local-id order."""
        return labels_in_id_order(self.train.entity_to_id)

    @property
    def relation_labels(self) -> list[str]:
        """Relation labels in local-id order."""
        return labels_in_id_order(self.train.relation_to_id)

    def factories(self) -> dict[str, TriplesFactory]:
        """``{"train": ..., "valid": ..., "test": ...}``."""
        return {"train": self.train, "valid": self.valid, "test": self.test}


@dataclass(frozen=True)
class FederatedKG(_GlobalVocabularies):
    """A knowledge graph split over clients.

    :param name: a display name.
    :param entity_to_id: global entity vocabulary, label -> id (dense 0..E-1).
    :param relation_to_id: global relation vocabulary, label -> id (dense 0..R-1).
    :param clients: the clients, ``clients[k].client_id == k``.
    :param records: what the run must keep about how the federation was made (JSON values), e.g.
        ``duplicates_dropped`` (repeated triples removed before partitioning) and ``split_leaks``
        (per client, accepted valid/test triples also in train); written into the manifest.
    """

    name: str
    entity_to_id: Mapping[str, int]
    relation_to_id: Mapping[str, int]
    clients: tuple[ClientGraph, ...]
    records: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def write(
        self,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        inputs: Sequence[str | Path | None] = (),
        command: str = "kg_datasets.FederatedKG.write",
    ) -> Path:
        """Write per-client folders ``out_dir/<k>/{train,valid,test}.txt`` (labelled, LF).

        Each client folder is all one party needs (:func:`kg_datasets.load_client_folder` reads
        it); besides the triples it holds the client's local vocabularies ``entity_to_id.tsv`` /
        ``relation_to_id.tsv`` (its own labels, in its local-id order) so that the party's local
        ids equal the server's view. ``out_dir`` itself gets the global vocabularies under the same
        names (for the server), so reading the folder back gives the same global ids. The manifest
        ``.simskip-output.json`` (:mod:`simskip_core.outputs`) records the command, the files and
        :attr:`records`; only a folder holding it may be replaced.

        :param out_dir: the folder to create.
        :param overwrite: replace an existing non-empty folder that simskip wrote (otherwise an error).
        :param inputs: the paths the federation was read from; ``out_dir`` may not be, contain or lie inside one.
        :param command: the command recorded in the manifest.
        :return: the folder written.
        :raises kg_datasets.errors.UnsafeOutputError: see :func:`kg_datasets.writer.write_federated`.
        """
        return write_federated(self, Path(out_dir), overwrite=overwrite, inputs=inputs, command=command)
