"""Seeded partitioners that split one graph's pooled triples over C clients (FedE / FedR style).

Both draw from one ``numpy.random.RandomState(seed)`` (its stream is frozen across numpy
versions), so a seed gives the same split everywhere. The FedE relation partition follows
``shared/data/FB15k-237-Fed3/README.md`` step by step and reproduces that folder byte for byte.
Their input holds each triple once (:func:`kg_datasets.sources.partition_split` drops repeats
first, :meth:`kg_datasets.model.KGSplit.unique_pooled`): a repeated triple could otherwise land in
a client's train and its valid or test, a leak.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from kg_datasets.errors import KGDataError

#: Share of each client's triples moved to valid+test by the held-out walk (FedE: 20%).
HELDOUT_FRACTION = 0.2
#: An entity/relation may leave train only while its count is above this (so >= 2 stay in train).
MIN_COUNT = 2

Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


def heldout_split(
    triples: np.ndarray, rng: np.random.RandomState, *, fraction: float = HELDOUT_FRACTION, min_count: int = MIN_COUNT
) -> Splits:
    """FedE's greedy held-out split of one client's triples into train/valid/test.

    Triples are visited in ``rng.permutation(n)`` order; a triple (h, r, t) moves to the held-out
    pool when ``cnt[h] > min_count and cnt[t] > min_count and cnt[r] > min_count`` (counts over the
    client's data, decremented on each move); the walk stops as soon as the pool holds more than
    ``fraction * n`` triples. Valid is the first half of the pool, test the rest (test gets the odd one).
    Every valid/test entity and relation therefore stays in train.

    :param triples: int64 (n, 3) global-id triples of one client.
    :param rng: the generator (advanced by one permutation of n).
    :return: ``(train, valid, test)`` int64 arrays (·, 3); train in visiting order, valid/test in pool order.
    """
    triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
    n = triples.shape[0]
    if n == 0:
        return triples, triples.copy(), triples.copy()
    order = rng.permutation(n)
    shuffled = triples[order]
    # Counts as Python lists: the walk is inherently sequential, and list indexing is several
    # times faster than numpy scalar access inside a Python loop.
    num_ids = int(shuffled.max()) + 1
    cnt_e = np.bincount(shuffled[:, [0, 2]].ravel(), minlength=num_ids).tolist()
    cnt_r = np.bincount(shuffled[:, 1], minlength=num_ids).tolist()
    moved = np.zeros(n, dtype=bool)
    pool: list[int] = []
    limit = fraction * n
    for i, (h, r, t) in enumerate(zip(shuffled[:, 0].tolist(), shuffled[:, 1].tolist(), shuffled[:, 2].tolist())):
        if len(pool) > limit:
            break
        if cnt_e[h] > min_count and cnt_e[t] > min_count and cnt_r[r] > min_count:
            cnt_e[h] -= 1
            cnt_e[t] -= 1
            cnt_r[r] -= 1
            pool.append(i)
            moved[i] = True
    half = len(pool) // 2
    pool_idx = np.asarray(pool, dtype=np.int64)
    return shuffled[~moved], shuffled[pool_idx[:half]], shuffled[pool_idx[half:]]


def fede_relation_partition(
    pooled: np.ndarray, relation_labels: Sequence[str], num_clients: int, seed: int
) -> list[Splits]:
    """FedE's relation partition: relations dealt out disjointly, then a held-out split per client.

    The relations present in ``pooled`` are sorted by label (Python string order) and reordered by
    ``rng.permutation``; client k < C-1 takes ``round(R / C)`` of them in turn, the last the rest.
    Each client takes every pooled triple of its relations (pooled order), then clients 0..C-1 run
    :func:`heldout_split` on the same ``rng``.

    :param pooled: int64 (n, 3) global-id triples: train, valid, test in file order.
    :param relation_labels: global relation labels in id order.
    :param num_clients: C >= 1.
    :param seed: ``RandomState`` seed.
    :return: per client ``(train, valid, test)``.
    """
    rng = np.random.RandomState(seed)
    present = np.unique(pooled[:, 1])
    relations = sorted(present.tolist(), key=lambda r: relation_labels[r])
    num_relations = len(relations)
    per_client = round(num_relations / num_clients)
    if num_clients > num_relations or per_client * (num_clients - 1) >= num_relations:
        raise KGDataError(
            f"cannot partition {num_relations} relations over {num_clients} clients by relation "
            f"(each client needs at least one); use fewer clients or partition='triple'"
        )
    relations = [relations[i] for i in rng.permutation(num_relations)]
    client_of = np.full(len(relation_labels), -1, dtype=np.int64)
    for k in range(num_clients):
        stop = (k + 1) * per_client if k < num_clients - 1 else num_relations
        client_of[relations[k * per_client : stop]] = k
    owner = client_of[pooled[:, 1]]
    return [heldout_split(pooled[owner == k], rng) for k in range(num_clients)]


def random_triple_partition(
    pooled: np.ndarray, relation_labels: Sequence[str], num_clients: int, seed: int
) -> list[Splits]:
    """FedR-style random triple partition: clients share relations.

    The pooled triples are shuffled with ``rng.permutation`` and dealt round-robin (client k takes
    shuffled rows k, k+C, k+2C, ...); then clients 0..C-1 run :func:`heldout_split` on the same rng.

    :param pooled: int64 (n, 3) global-id triples.
    :param relation_labels: unused (same signature as the relation partition).
    :param num_clients: C >= 1.
    :param seed: ``RandomState`` seed.
    :return: per client ``(train, valid, test)``.
    """
    del relation_labels
    if num_clients > len(pooled):
        raise KGDataError(f"cannot deal {len(pooled)} triples over {num_clients} clients")
    rng = np.random.RandomState(seed)
    shuffled = pooled[rng.permutation(len(pooled))]
    return [heldout_split(shuffled[k::num_clients], rng) for k in range(num_clients)]


#: Partitioner registry: name -> function(pooled, relation_labels, num_clients, seed).
PARTITIONERS: Mapping[str, Callable[[np.ndarray, Sequence[str], int, int], list[Splits]]] = {
    "relation": fede_relation_partition,
    "triple": random_triple_partition,
}


def get_partitioner(name: str) -> Callable[[np.ndarray, Sequence[str], int, int], list[Splits]]:
    """Look up a partitioner by name (``"relation"`` or ``"triple"``)."""
    try:
        return PARTITIONERS[name]
    except KeyError:
        raise KGDataError(f"unknown partition {name!r}; choose one of {sorted(PARTITIONERS)}") from None
