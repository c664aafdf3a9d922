"""Statistics of a federated (or single) knowledge graph, as plain dicts ready for JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from kg_datasets.model import ClientGraph, FederatedKG, KGSplit
from kg_datasets.triples import SPLITS, LocatedTriples, encode_triples


def _duplicates(mapped: np.ndarray) -> int:
    """Rows equal to an earlier row."""
    if len(mapped) == 0:
        return 0
    return int(len(mapped) - np.unique(mapped, axis=0).shape[0])


#: Pairs of splits whose overlap is counted: (key, later split, earlier split); a later row also in
#: the earlier split is counted (valid or test rows in train are leaks).
OVERLAPS: tuple[tuple[str, str, str], ...] = (
    ("valid_in_train", "valid", "train"),
    ("test_in_train", "test", "train"),
    ("test_in_valid", "test", "valid"),
)


def split_overlaps(splits: dict[str, np.ndarray], num_entities: int, num_relations: int) -> dict[str, int]:
    """Rows of one split also in another (:data:`OVERLAPS`): ``valid_in_train`` and ``test_in_train``
    are leaks between train and evaluation, ``test_in_valid`` a repeat between the evaluation splits.

    :param splits: ``"train"``/``"valid"``/``"test"`` -> int (n, 3) triples over one id space.
    """
    keys = {name: encode_triples(ids, num_entities, num_relations) for name, ids in splits.items()}
    return {key: int(np.isin(keys[later], keys[earlier]).sum()) for key, later, earlier in OVERLAPS}


def client_stats(client: ClientGraph) -> dict[str, Any]:
    """Triples per split, local entities/relations, dropped-unseen, duplicate and overlap counts of one client."""
    factories = client.factories()
    mapped = {name: factories[name].mapped_triples.numpy() for name in SPLITS}
    return {
        "client_id": client.client_id,
        **{name: int(factories[name].num_triples) for name in SPLITS},
        "entities": client.num_entities,
        "relations": client.num_relations,
        "dropped_unseen": {name: int(client.dropped_unseen.get(name, 0)) for name in ("valid", "test")},
        "duplicates": {name: _duplicates(mapped[name]) for name in SPLITS},
        "overlaps": split_overlaps(mapped, client.num_entities, client.num_relations),
    }


def sharing_histogram(id_sets: list[np.ndarray], num_ids: int) -> dict[int, int]:
    """For k = 1..C, how many ids are held by exactly k of the C sets (ids held by none are not counted).

    :param id_sets: per client, the global ids it holds (unique).
    :param num_ids: size of the global id space.
    """
    holders = np.zeros(num_ids, dtype=np.int64)
    for ids in id_sets:
        holders[ids] += 1
    counts = np.bincount(holders, minlength=len(id_sets) + 1)
    return {k: int(counts[k]) for k in range(1, len(id_sets) + 1)}


def federated_stats(kg: FederatedKG) -> dict[str, Any]:
    """Per-client statistics plus entity/relation sharing histograms of a federation."""
    clients = [client_stats(c) for c in kg.clients]
    out: dict[str, Any] = {
        "name": kg.name,
        "num_clients": kg.num_clients,
        "num_entities": kg.num_entities,
        "num_relations": kg.num_relations,
        "totals": {name: sum(c[name] for c in clients) for name in SPLITS},
        "clients": clients,
        "overlaps": {key: sum(c["overlaps"][key] for c in clients) for key, _, _ in OVERLAPS},
        "records": dict(kg.records),
    }
    if all(c.entity_ids is not None for c in kg.clients):
        out["entity_sharing"] = sharing_histogram([c.entity_ids for c in kg.clients], kg.num_entities)
        out["relation_sharing"] = sharing_histogram([c.relation_ids for c in kg.clients], kg.num_relations)
    return out


def _unseen_count(split: LocatedTriples, train: LocatedTriples) -> int:
    entities = np.unique(train.ids[:, [0, 2]])
    relations = np.unique(train.ids[:, 1])
    ids = split.ids
    seen = np.isin(ids[:, 0], entities) & np.isin(ids[:, 2], entities) & np.isin(ids[:, 1], relations)
    return int((~seen).sum())


def split_stats(graph: KGSplit) -> dict[str, Any]:
    """Statistics of one (unpartitioned) graph, including valid/test triples unseen in train."""
    splits = {"train": graph.train, "valid": graph.valid, "test": graph.test}
    train_entities = np.unique(graph.train.ids[:, [0, 2]])
    return {
        "name": graph.name,
        "num_entities": graph.num_entities,
        "num_relations": graph.num_relations,
        **{name: len(s) for name, s in splits.items()},
        "train_entities": int(train_entities.size),
        "unseen_in_train": {name: _unseen_count(splits[name], graph.train) for name in ("valid", "test")},
        "duplicates": {name: _duplicates(s.ids) for name, s in splits.items()},
        "overlaps": split_overlaps(
            {name: s.ids for name, s in splits.items()}, graph.num_entities, graph.num_relations
        ),
    }


def format_federated_stats(stats: dict[str, Any]) -> str:
    """A human-readable table of :func:`federated_stats` output."""
    lines = [
        (
            f"{stats['name']}: {stats['num_clients']} clients, {stats['num_entities']} entities, "
            f"{stats['num_relations']} relations"
        ),
        (
            f"{'client':>6} {'train':>9} {'valid':>8} {'test':>8} {'entities':>9} {'relations':>9} "
            f"{'dropped v/t':>12} {'dup t/v/t':>12} {'v,t in train':>12} {'t in v':>6}"
        ),
    ]
    for c in stats["clients"]:
        dropped = f"{c['dropped_unseen']['valid']}/{c['dropped_unseen']['test']}"
        dup = "/".join(str(c["duplicates"][s]) for s in SPLITS)
        overlaps = c["overlaps"]
        leak = f"{overlaps['valid_in_train']}/{overlaps['test_in_train']}"
        lines.append(
            f"{c['client_id']:>6} {c['train']:>9,} {c['valid']:>8,} {c['test']:>8,} {c['entities']:>9,} "
            f"{c['relations']:>9,} {dropped:>12} {dup:>12} {leak:>12} {overlaps['test_in_valid']:>6}"
        )
    t = stats["totals"]
    lines.append(f"{'all':>6} {t['train']:>9,} {t['valid']:>8,} {t['test']:>8,}")
    leaked = stats["overlaps"]["valid_in_train"] + stats["overlaps"]["test_in_train"]
    if leaked:
        lines.append(
            f"LEAK: {stats['overlaps']['valid_in_train']:,} valid and {stats['overlaps']['test_in_train']:,} test "
            "rows are also in their client's train (they inflate every metric)"
        )
    dropped = stats.get("records", {}).get("duplicates_dropped")
    if dropped:
        lines.append(f"repeated triples dropped before partitioning: {dropped:,}")
    for key, title in (("entity_sharing", "entities"), ("relation_sharing", "relations")):
        if key in stats:
            lines.append(f"{title} held by exactly k clients:")
            hist = stats[key]
            width = max(hist.values(), default=0)
            for k, n in hist.items():
                bar = "#" * (round(40 * n / width) if width else 0)
                lines.append(f"  k={k:<3} {n:>8,}  {bar}")
    return "\n".join(lines)


def format_split_stats(stats: dict[str, Any]) -> str:
    """A human-readable summary of :func:`split_stats` output."""
    return "\n".join(
        [
            (
                f"{stats['name']}: {stats['num_entities']:,} entities ({stats['train_entities']:,} in train), "
                f"{stats['num_relations']:,} relations"
            ),
            f"  train {stats['train']:,}  valid {stats['valid']:,}  test {stats['test']:,}",
            (
                f"  valid/test triples with an entity or relation unseen in train: "
                f"{stats['unseen_in_train']['valid']:,} / {stats['unseen_in_train']['test']:,}"
            ),
            "  duplicate triples train/valid/test: " + "/".join(str(stats["duplicates"][s]) for s in SPLITS),
            (
                "  rows also in another split: valid in train {valid_in_train:,}, test in train "
                "{test_in_train:,}, test in valid {test_in_valid:,}"
            ).format(**stats["overlaps"]),
        ]
    )
