"""Turn per-client global-id triples into :class:`ClientGraph` / :class:`FederatedKG` objects.

Validation happens here, before any PyKEEN factory exists: PyKEEN silently drops unknown labels,
so the unseen-entity check is ours (raise naming file:line, or drop and count).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pykeen.triples import TriplesFactory

from kg_datasets.errors import KGDataError, KGDataWarning, SplitLeakError, UnseenTripleError, clip
from kg_datasets.model import ClientGraph, FederatedKG
from kg_datasets.triples import LocatedTriples, encode_triples, labels_in_id_order

logger = logging.getLogger(__name__)

#: What to do with valid/test triples whose entity or relation is not in the client's train:
#: ``error`` raises naming file:line, ``drop`` removes them (counted in ``ClientGraph.dropped_unseen``),
#: ``keep`` keeps them and puts their entities and relations into the party's vocabulary (counted in
#: ``ClientGraph.kept_unseen``): the standard protocol of a centralized benchmark (LibKGE, the
#: original FB15k-237 split), where every entity of train/valid/test is a candidate and an entity
#: no train triple holds is ranked with a row no positive triple trained. One party only
#: (:data:`FEDERATION_ON_UNSEEN_POLICIES`).
ON_UNSEEN_POLICIES: tuple[str, ...] = ("error", "drop", "keep")
#: The policies a federation of several clients may use (``simskip-data --on-unseen``): with ``keep``
#: a client would hold, send and average into FedE's mean rows it never trains.
FEDERATION_ON_UNSEEN_POLICIES: tuple[str, ...] = ("error", "drop")


def check_on_unseen(on_unseen: str) -> str:
    """Validate an ``on_unseen`` policy name (one of :data:`ON_UNSEEN_POLICIES`)."""
    if on_unseen not in ON_UNSEEN_POLICIES:
        raise KGDataError(f"on_unseen must be one of {ON_UNSEEN_POLICIES}, got {on_unseen!r}")
    return on_unseen


@dataclass(frozen=True)
class ClientTriples:
    """One client's splits as global-id triples (before local ids and factories exist)."""

    train: LocatedTriples
    valid: LocatedTriples
    test: LocatedTriples


def _unseen_mask(split: LocatedTriples, train_entities: np.ndarray, train_relations: np.ndarray) -> np.ndarray:
    """bool (n,): rows with an entity or relation absent from train."""
    ids = split.ids
    seen = np.isin(ids[:, 0], train_entities) & np.isin(ids[:, 2], train_entities) & np.isin(ids[:, 1], train_relations)
    return ~seen


def _describe_unseen(
    row: np.ndarray,
    train_entities: np.ndarray,
    train_relations: np.ndarray,
    entity_labels: Sequence[str],
    relation_labels: Sequence[str],
) -> str:
    """Which parts of one (h, r, t) global-id row are missing from train, by label."""
    h, r, t = (int(x) for x in row)
    missing = []
    if not np.isin(h, train_entities):
        missing.append(f"head entity {clip(entity_labels[h])!r}")
    if not np.isin(r, train_relations):
        missing.append(f"relation {clip(relation_labels[r])!r}")
    if not np.isin(t, train_entities) and t != h:  # a self-loop's entity is named once
        missing.append(f"tail entity {clip(entity_labels[t])!r}")
    return " and ".join(missing)


def _triple_text(row: np.ndarray, entity_labels: Sequence[str], relation_labels: Sequence[str]) -> str:
    h, r, t = (int(x) for x in row)
    return f"({clip(entity_labels[h])!r}, {clip(relation_labels[r])!r}, {clip(entity_labels[t])!r})"


def _check_split_overlaps(
    client_id: int,
    splits: Mapping[str, LocatedTriples],
    entity_labels: Sequence[str],
    relation_labels: Sequence[str],
    *,
    allow_split_leaks: bool,
) -> dict[str, int]:
    """Check one client's splits against each other.

    Repeated triples within a split and test triples also in valid are warned about
    (KGDataWarning, naming file:line; data stays as it is). Valid or test triples also in train are
    a leak that inflates every metric: :class:`SplitLeakError` unless ``allow_split_leaks``, then a
    warning and their count.

    :return: per split (``"valid"``, ``"test"``), its rows also in train (only splits that have some).
    """
    keys = {name: encode_triples(s.ids, len(entity_labels), len(relation_labels)) for name, s in splits.items()}
    for name, split in splits.items():
        _, first = np.unique(keys[name], return_index=True)
        n_dup = int(len(split) - first.size)
        if n_dup:
            is_first = np.zeros(len(split), dtype=bool)
            is_first[first] = True
            row = int(np.flatnonzero(~is_first)[0])
            warnings.warn(
                f"{split.where(row)}: duplicate triple; client {client_id} {name} holds {n_dup} repeated "
                f"triple(s) (kept as they are)",
                KGDataWarning,
                stacklevel=4,
            )
    leaks: dict[str, int] = {}
    for later, earlier in (("valid", "train"), ("test", "train"), ("test", "valid")):
        overlap = np.isin(keys[later], keys[earlier])
        if not overlap.any():
            continue
        row = int(np.flatnonzero(overlap)[0])
        count, distinct = int(overlap.sum()), int(np.unique(keys[later][overlap]).size)
        what = (
            f"client {client_id} has {count} {later} row(s) ({distinct} distinct triples) that are in its "
            f"{earlier} split, e.g. {_triple_text(splits[later].ids[row], entity_labels, relation_labels)}"
        )
        if earlier != "train":
            warnings.warn(
                f"{splits[later].where(row)}: triple also in {earlier}; {what} (kept as they are)",
                KGDataWarning,
                stacklevel=4,
            )
            continue
        if not allow_split_leaks:
            raise SplitLeakError(
                f"{splits[later].where(row)}: triple also in train; {what}: a leak between train and {later} "
                f"inflates every metric; remove them, or accept and count them with --allow-split-leaks "
                f"(allow_split_leaks=True)"
            )
        warnings.warn(
            f"{splits[later].where(row)}: triple also in train; {what} (accepted by --allow-split-leaks; counted)",
            KGDataWarning,
            stacklevel=4,
        )
        leaks[later] = count
    return leaks


def build_client(
    client_id: int,
    triples: ClientTriples,
    entity_labels: Sequence[str],
    relation_labels: Sequence[str],
    *,
    on_unseen: str = "error",
    allow_split_leaks: bool = False,
) -> ClientGraph:
    """Validate one client's global-id triples and build its local-id factories.

    :param client_id: the client's index.
    :param triples: train/valid/test as global ids (n, 3).
    :param entity_labels: global entity labels in id order (len E).
    :param relation_labels: global relation labels in id order (len R).
    :param on_unseen: ``"error"`` raises :class:`UnseenTripleError` at the first valid/test triple
        whose entity or relation is not in train; ``"drop"`` removes them and records the count;
        ``"keep"`` keeps them, records the count, and the client's vocabulary (its local ids, its
        model's rows) holds every entity and relation of its three splits (:data:`ON_UNSEEN_POLICIES`).
    :param allow_split_leaks: accept valid/test triples that are also in train (counted in
        :attr:`ClientGraph.split_leaks`) instead of raising :class:`SplitLeakError`.
    :raises SplitLeakError: a valid or test triple is also in train (naming client, count, an example).
    :return: the client, with ``entity_ids`` / ``relation_ids`` mapping local -> global ids.
    """
    check_on_unseen(on_unseen)
    train = triples.train
    splits = {"train": train, "valid": triples.valid, "test": triples.test}
    for name, split in splits.items():
        if len(split) == 0:
            raise KGDataError(f"{split.origin}: client {client_id} has no {name} triples")

    # FedE's local ids: each global id's rank among the client's train entities (np.unique order).
    entity_ids = np.unique(train.ids[:, [0, 2]])
    relation_ids = np.unique(train.ids[:, 1])
    dropped: dict[str, int] = {}
    kept: dict[str, int] = {}
    for name in ("valid", "test"):
        split = splits[name]
        unseen = _unseen_mask(split, entity_ids, relation_ids)
        count = int(unseen.sum())
        if not count:
            continue
        row = int(np.flatnonzero(unseen)[0])
        what = _describe_unseen(split.ids[row], entity_ids, relation_ids, entity_labels, relation_labels)
        if on_unseen == "keep":
            logger.info(
                "client %d: kept %d %s triple(s) unseen in train (first at %s: %s)",
                client_id,
                count,
                name,
                split.where(row),
                what,
            )
            kept[name] = count
            continue
        if on_unseen == "error":
            raise UnseenTripleError(
                f"{split.where(row)}: {what} not in client {client_id}'s train; {count} {name} triple(s) "
                f"of this client hold an entity or relation unseen in its train "
                f"(pass on_unseen='drop' to drop them)"
            )
        logger.warning(
            "client %d: dropped %d %s triple(s) unseen in train (first at %s)", client_id, count, name, split.where(row)
        )
        splits[name] = split.select(~unseen)
        dropped[name] = count
        if len(splits[name]) == 0:
            raise KGDataError(
                f"{split.origin}: client {client_id} has no {name} triples left after dropping {count} unseen in train"
            )

    if kept:  # every entity and relation of the three splits: ranked, and a candidate for every query
        entity_ids = np.unique(np.concatenate([s.ids[:, [0, 2]].ravel() for s in splits.values()]))
        relation_ids = np.unique(np.concatenate([s.ids[:, 1] for s in splits.values()]))

    # after the unseen check (a leaked triple is seen in train by definition), on the rows kept
    leaks = _check_split_overlaps(
        client_id, splits, entity_labels, relation_labels, allow_split_leaks=allow_split_leaks
    )
    entity_to_id = {entity_labels[g]: i for i, g in enumerate(entity_ids.tolist())}
    relation_to_id = {relation_labels[g]: i for i, g in enumerate(relation_ids.tolist())}
    factories = {}
    for name, split in splits.items():
        local = np.empty_like(split.ids)
        local[:, 0] = np.searchsorted(entity_ids, split.ids[:, 0])
        local[:, 1] = np.searchsorted(relation_ids, split.ids[:, 1])
        local[:, 2] = np.searchsorted(entity_ids, split.ids[:, 2])
        # The plain constructor keeps row order and ids as given; from_labeled_triples would
        # re-map labels, silently drop unknown ones and filter relations ending in "_inverse".
        factories[name] = TriplesFactory(
            mapped_triples=torch.from_numpy(local),
            entity_to_id=entity_to_id,
            relation_to_id=relation_to_id,
        )
    return ClientGraph(
        client_id=client_id,
        train=factories["train"],
        valid=factories["valid"],
        test=factories["test"],
        entity_ids=entity_ids.astype(np.int64),
        relation_ids=relation_ids.astype(np.int64),
        dropped_unseen=dropped,
        split_leaks=leaks,
        kept_unseen=kept,
    )


def build_federated(
    name: str,
    entity_to_id: Mapping[str, int],
    relation_to_id: Mapping[str, int],
    clients: Sequence[ClientTriples],
    *,
    on_unseen: str = "error",
    allow_split_leaks: bool = False,
    records: Mapping[str, Any] | None = None,
) -> FederatedKG:
    """Build a :class:`FederatedKG` from per-client global-id triples (see :func:`build_client`).

    :param records: entries for :attr:`FederatedKG.records`; accepted leaks are added as
        ``split_leaks`` (client id -> split -> rows also in train), kept unseen triples
        (``on_unseen="keep"``) as ``kept_unseen`` (client id -> split -> rows).
    :raises KGDataError: ``on_unseen="keep"`` with more than one client
        (:data:`FEDERATION_ON_UNSEEN_POLICIES`).
    """
    check_on_unseen(on_unseen)
    if not clients:
        raise KGDataError(f"{name}: no clients")
    if on_unseen not in FEDERATION_ON_UNSEEN_POLICIES and len(clients) > 1:
        raise KGDataError(
            f"{name}: on_unseen={on_unseen!r} is for one party (a centralized run with the standard protocol); "
            f"this source has {len(clients)} clients, whose kept entities would be rows a client never trains "
            f"but sends into FedE's mean: use one of {FEDERATION_ON_UNSEEN_POLICIES}"
        )
    entity_labels = labels_in_id_order(entity_to_id)
    relation_labels = labels_in_id_order(relation_to_id)
    for k, c in enumerate(clients):
        for split in (c.train, c.valid, c.test):
            if len(split) and (
                split.ids.min() < 0
                or split.ids[:, [0, 2]].max() >= len(entity_labels)
                or split.ids[:, 1].max() >= len(relation_labels)
            ):
                raise KGDataError(f"{split.origin}: client {k} has ids outside the global vocabularies")
    built = tuple(
        build_client(k, c, entity_labels, relation_labels, on_unseen=on_unseen, allow_split_leaks=allow_split_leaks)
        for k, c in enumerate(clients)
    )
    kept = dict(records or {})
    leaks = {str(c.client_id): dict(c.split_leaks) for c in built if c.split_leaks}
    if leaks:
        kept["split_leaks"] = leaks
    unseen = {str(c.client_id): dict(c.kept_unseen) for c in built if c.kept_unseen}
    if unseen:
        kept["kept_unseen"] = unseen
    return FederatedKG(
        name=name, entity_to_id=dict(entity_to_id), relation_to_id=dict(relation_to_id), clients=built, records=kept
    )
