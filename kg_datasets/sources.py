"""Source formats and the two loaders of the public API.

A source is one of (checked in this order): a FedE ``.pkl`` file; a folder of client folders
``0/, 1/, ...``; a labelled folder (``train.txt``...); an OpenKE folder (``entity2id.txt``...);
a PyKEEN dataset name. Single-graph sources are partitioned (or, with ``resplit=False``, given to
one party with their own train/valid/test split); federated ones are taken as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kg_datasets.build import ClientTriples, build_client, build_federated, check_on_unseen
from kg_datasets.errors import KGDataError, KGDataWarning
from kg_datasets.fede_pickle import read_fede_pickle
from kg_datasets.labeled import (
    is_client_folder_root,
    is_labeled_folder,
    local_vocabularies,
    read_client_folder_root,
    read_labeled_folder,
    read_split_files,
    split_files_to_ids,
)
from kg_datasets.model import ClientGraph, FederatedKG, KGSplit
from kg_datasets.openke import is_openke_folder, read_openke_folder
from kg_datasets.partition import get_partitioner
from kg_datasets.pykeen_source import load_pykeen_dataset
from kg_datasets.triples import LocatedTriples, labels_in_id_order


@dataclass(frozen=True)
class FederatedTriples:
    """An already-federated source before validation: global vocabularies + per-client id triples."""

    name: str
    entity_to_id: dict[str, int]
    relation_to_id: dict[str, int]
    clients: tuple[ClientTriples, ...]


Loaded = KGSplit | FederatedTriples


def _clients_from(splits_list) -> tuple[ClientTriples, ...]:
    return tuple(ClientTriples(s["train"], s["valid"], s["test"]) for s in splits_list)


def _load_pickle(path: Path) -> Loaded:
    entity_to_id, relation_to_id, clients = read_fede_pickle(path)
    return FederatedTriples(path.resolve().stem, entity_to_id, relation_to_id, _clients_from(clients))


def _load_client_folders(path: Path) -> Loaded:
    entity_to_id, relation_to_id, clients = read_client_folder_root(path)
    return FederatedTriples(path.resolve().name, entity_to_id, relation_to_id, _clients_from(clients))


def _load_labeled(path: Path) -> Loaded:
    entity_to_id, relation_to_id, s = read_labeled_folder(path)
    return KGSplit(path.resolve().name, entity_to_id, relation_to_id, s["train"], s["valid"], s["test"])


def _load_openke(path: Path) -> Loaded:
    entity_to_id, relation_to_id, s = read_openke_folder(path)
    resolved = path.resolve()
    name = resolved.parent.name if resolved.name.lower() == "openke" else resolved.name
    return KGSplit(name, entity_to_id, relation_to_id, s["train"], s["valid"], s["test"])


@dataclass(frozen=True)
class SourceFormat:
    """A source format: how to recognise a path and how to read it."""

    name: str
    matches: Callable[[Path], bool]
    load: Callable[[Path], Loaded]


#: Registry of path formats, tried in order (the first match wins).
SOURCE_FORMATS: tuple[SourceFormat, ...] = (
    SourceFormat("fede-pickle", lambda p: p.is_file() and p.suffix == ".pkl", _load_pickle),
    SourceFormat("client-folders", is_client_folder_root, _load_client_folders),
    SourceFormat("labeled", is_labeled_folder, _load_labeled),
    SourceFormat("openke", is_openke_folder, _load_openke),
)


def source_format_of(path: Path) -> SourceFormat | None:
    """The first format whose ``matches`` accepts ``path``, or ``None``."""
    return next((f for f in SOURCE_FORMATS if f.matches(path)), None)


def load_source(source: str | Path) -> Loaded:
    """Read a source without partitioning: a :class:`KGSplit` or a :class:`FederatedTriples`.

    :raises KGDataError: when the path matches no format, or the name is no PyKEEN dataset.
    """
    path = Path(source)
    if path.exists():
        fmt = source_format_of(path)
        if fmt is None:
            raise KGDataError(
                f"{path}: not a recognised source (expected a FedE .pkl, client folders 0/ 1/ ..., "
                f"train.txt/valid.txt/test.txt, or OpenKE entity2id.txt/relation2id.txt/train2id.txt)"
            )
        return fmt.load(path)
    return load_pykeen_dataset(str(source))


def partition_split(
    graph: KGSplit, *, num_clients: int, partition: str = "relation", seed: int = 0
) -> tuple[tuple[ClientTriples, ...], int]:
    """Partition one graph's pooled triples (train, valid, test in order) over ``num_clients``.

    Repeated triples are dropped first (:meth:`KGSplit.unique_pooled`, first occurrence kept), so
    no triple can land in two splits of a client (a leak); a source without repeats is split as before.

    :return: per client its triples, and how many repeated rows were dropped.
    """
    if num_clients < 1:
        raise KGDataError(f"num_clients must be >= 1, got {num_clients}")
    partitioner = get_partitioner(partition)
    pooled, dropped = graph.unique_pooled()
    if dropped:
        warnings.warn(
            f"{graph.name}: dropped {dropped} repeated triple(s) of the pooled train/valid/test before "
            f"partitioning (so that none lands in two splits; `simskip-data stats {graph.name}` counts them)",
            KGDataWarning,
            stacklevel=3,
        )
    parts = partitioner(pooled, labels_in_id_order(graph.relation_to_id), num_clients, seed)
    origin = f"{partition} partition of {graph.name} (seed {seed})"
    clients = tuple(
        ClientTriples(
            *(
                LocatedTriples(ids, f"{origin}, client {k} {name}")
                for ids, name in zip(splits, ("train", "valid", "test"))
            )
        )
        for k, splits in enumerate(parts)
    )
    return clients, dropped


def load_federated(
    source: str | Path,
    *,
    num_clients: int | None = None,
    partition: str = "relation",
    seed: int = 0,
    on_unseen: str = "error",
    allow_split_leaks: bool = False,
    resplit: bool = True,
) -> FederatedKG:
    """Load a federated knowledge graph.

    The centralized standard protocol on a benchmark's own split (one party, every entity of
    train/valid/test a candidate, no test triple dropped)::

        load_federated("../shared/data/FB15k-237", resplit=False, on_unseen="keep")

    :param source: a PyKEEN dataset name (e.g. ``"UMLS"``), a labelled folder, an OpenKE folder,
        a folder of client folders (``0/``, ``1/``, ...) or a FedE ``.pkl``.
    :param num_clients: clients to partition a single-graph source into (required for those);
        for an already-federated source ``None`` or its client count; with ``resplit=False``
        ``None`` or 1.
    :param partition: ``"relation"`` (FedE: disjoint relations) or ``"triple"`` (FedR-style random).
    :param seed: ``RandomState`` seed of the partition.
    :param on_unseen: ``"error"``, ``"drop"`` or (one party only) ``"keep"`` for valid/test triples
        unseen in their client's train (:data:`kg_datasets.build.ON_UNSEEN_POLICIES`).
    :param allow_split_leaks: accept (and count in :attr:`FederatedKG.records`) valid/test triples
        of a client that are also in its train; by default they are an error. A partitioned
        single graph has none (repeated triples are dropped before the split, and counted).
    :param resplit: ``True``: a single-graph source is pooled and partitioned over
        ``num_clients`` (even 1: a re-split). ``False``: it becomes one party holding its own
        train/valid/test split as it is (``records["split"] == "original"``; ``partition`` and
        ``seed`` are not used). A federated source is never re-split.
    :raises KGDataError: on any data problem (naming file and line where there is one).
    :raises kg_datasets.errors.SplitLeakError: a client's valid/test triple is also in its train.
    """
    check_on_unseen(on_unseen)
    get_partitioner(partition)
    return federate(
        load_source(source),
        num_clients=num_clients,
        partition=partition,
        seed=seed,
        on_unseen=on_unseen,
        allow_split_leaks=allow_split_leaks,
        resplit=resplit,
    )


def federate(
    loaded: Loaded,
    *,
    num_clients: int | None = None,
    partition: str = "relation",
    seed: int = 0,
    on_unseen: str = "error",
    allow_split_leaks: bool = False,
    resplit: bool = True,
) -> FederatedKG:
    """Partition (a single graph) or take as it is (a federated source), then validate and build.

    Parameters as in :func:`load_federated`; ``loaded`` comes from :func:`load_source`. A
    partitioned graph's :attr:`FederatedKG.records` hold ``duplicates_dropped``; a graph kept as
    one party (``resplit=False``) holds ``split: "original"``.
    """
    if isinstance(loaded, KGSplit) and not resplit:
        return _original_split(
            loaded, num_clients=num_clients, on_unseen=on_unseen, allow_split_leaks=allow_split_leaks
        )
    if isinstance(loaded, KGSplit):
        if num_clients is None:
            raise KGDataError(
                f"{loaded.name}: a single-graph source needs num_clients (how many clients to partition into)"
            )
        clients, dropped = partition_split(loaded, num_clients=num_clients, partition=partition, seed=seed)
        return build_federated(
            loaded.name,
            loaded.entity_to_id,
            loaded.relation_to_id,
            clients,
            on_unseen=on_unseen,
            allow_split_leaks=allow_split_leaks,
            records={"duplicates_dropped": dropped},
        )
    if num_clients is not None and num_clients != len(loaded.clients):
        raise KGDataError(
            f"{loaded.name}: holds {len(loaded.clients)} clients, but num_clients={num_clients} was asked"
        )
    return build_federated(
        loaded.name,
        loaded.entity_to_id,
        loaded.relation_to_id,
        loaded.clients,
        on_unseen=on_unseen,
        allow_split_leaks=allow_split_leaks,
    )


def _original_split(graph: KGSplit, *, num_clients: int | None, on_unseen: str, allow_split_leaks: bool) -> FederatedKG:
    """One party holding ``graph``'s own train/valid/test (global ids = the party's ids when every
    entity is kept: a labelled folder's sorted labels, an OpenKE folder's ids)."""
    if num_clients not in (None, 1):
        raise KGDataError(
            f"{graph.name}: resplit=False gives the graph's own train/valid/test split to one party; "
            f"num_clients must be 1, got {num_clients}"
        )
    return build_federated(
        graph.name,
        graph.entity_to_id,
        graph.relation_to_id,
        (ClientTriples(graph.train, graph.valid, graph.test),),
        on_unseen=on_unseen,
        allow_split_leaks=allow_split_leaks,
        records={"split": "original"},
    )


def load_client_folder(
    path: str | Path, *, client_id: int = 0, on_unseen: str = "error", allow_split_leaks: bool = False
) -> ClientGraph:
    """Load one party's own folder (labelled ``train.txt``/``valid.txt``/``test.txt``).

    Local ids follow the folder's ``entity_to_id.tsv`` / ``relation_to_id.tsv`` when present (as
    written by :meth:`FederatedKG.write`: the same local ids as the server's view of this client),
    else sorted train labels. ``entity_ids``/``relation_ids`` are ``None``.

    :param path: the client folder (e.g. ``out/0`` as written by :meth:`FederatedKG.write`).
    :param client_id: the id to give the client.
    :param on_unseen: ``"error"``, ``"drop"`` or ``"keep"`` for valid/test triples unseen in train
        (``"keep"``: their labels get the local ids after the train labels; not for a party of a
        federation, whose server knows only its train entities).
    :param allow_split_leaks: accept valid/test triples also in train (counted in
        :attr:`ClientGraph.split_leaks`); by default they are an error.
    :raises kg_datasets.errors.SplitLeakError: a valid/test triple is also in train (a leak).
    """
    check_on_unseen(on_unseen)
    path = Path(path)
    if not path.is_dir():
        raise KGDataError(f"{path}: client folder not found")
    files = read_split_files(path)
    entity_to_id, relation_to_id = local_vocabularies(path, files)
    s = split_files_to_ids(files, entity_to_id, relation_to_id)
    client = build_client(
        client_id,
        ClientTriples(s["train"], s["valid"], s["test"]),
        labels_in_id_order(entity_to_id),
        labels_in_id_order(relation_to_id),
        on_unseen=on_unseen,
        allow_split_leaks=allow_split_leaks,
    )
    # Train labels come first (ids 0..n-1), so this ad-hoc vocabulary's ids are the local ids:
    # drop the maps, which would only describe this folder's own numbering.
    return ClientGraph(
        client.client_id,
        client.train,
        client.valid,
        client.test,
        None,
        None,
        client.dropped_unseen,
        client.split_leaks,
        client.kept_unseen,
    )
