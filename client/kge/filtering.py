"""An exact and fast negative-triple filterer, registered in PyKEEN's ``filterer_resolver``.

Why our own: PyKEEN ships a Python-set filterer (exact, but a Python loop over every negative)
and a Bloom filter (vectorized, but ~0.1 % false positives and ten hashing rounds). FedE filters
exactly; encoding each triple as one int64 key and binary-searching a sorted key table is exact
and, measured on FB15k-237-Fed3 client 0 (512 x 256 negatives per batch), ~5x faster than the
Bloom filter on CPU. Importing :mod:`client.kge.regimes` (which the trainer and the run config's choice check import) registers it as ``sortedkey``.
"""

from __future__ import annotations

import torch
from pykeen.sampling.filtering import Filterer, filterer_resolver
from pykeen.typing import BoolTensor, MappedTriples

__all__ = ["SortedKeyFilterer", "register"]

#: Largest key range that fits int64 with room to spare.
_MAX_KEYS = 2**62


class SortedKeyFilterer(Filterer):
    """Membership of triples in the training triples through sorted int64 keys.

    A triple ``(h, r, t)`` has the key ``(h * R + r) * E + t``, unique for ids inside the table
    (``E`` entities, ``R`` relations, taken from the training triples' maxima).

    :param mapped_triples: shape (n, 3), the known (training) triples.
    """

    keys: torch.Tensor

    def __init__(self, mapped_triples: MappedTriples) -> None:
        super().__init__()
        triples = torch.as_tensor(mapped_triples, dtype=torch.long)
        if triples.ndim != 2 or triples.shape[1] != 3 or triples.shape[0] == 0:
            raise ValueError(f"mapped_triples must be a non-empty (n, 3) tensor, got {tuple(triples.shape)}")
        self.num_entities = int(triples[:, [0, 2]].max()) + 1
        self.num_relations = int(triples[:, 1].max()) + 1
        if self.num_entities * self.num_entities * self.num_relations >= _MAX_KEYS:
            raise ValueError(f"{self.num_entities} entities x {self.num_relations} relations do not fit one int64 key")
        self.register_buffer("keys", torch.unique(self._encode(triples)))  # unique() sorts

    def _encode(self, triples: torch.Tensor) -> torch.Tensor:
        return (triples[..., 0] * self.num_relations + triples[..., 1]) * self.num_entities + triples[..., 2]

    def contains(self, batch: MappedTriples) -> BoolTensor:
        """Whether each triple of ``batch`` (shape ``(*, 3)``) is a known triple; shape ``(*)``."""
        keys = self.keys.to(batch.device)
        inside = (
            (batch[..., 0] < self.num_entities)
            & (batch[..., 2] < self.num_entities)
            & (batch[..., 1] < self.num_relations)
        )
        query = torch.where(inside[..., None], batch, torch.zeros_like(batch))
        encoded = self._encode(query)
        position = torch.searchsorted(keys, encoded).clamp_max(keys.numel() - 1)
        return inside & (keys[position] == encoded)

    def contains_tails(self, heads_relations: torch.Tensor, tails: torch.Tensor) -> BoolTensor:
        """Whether each ``(h, r, t)`` of every pair ``(h, r)`` (shape ``(B, 2)``) with every candidate ``t``
        (shape ``(K,)``) is a known triple; shape ``(B, K)``. The same answer as :meth:`contains` of the
        ``(B, K, 3)`` stack, without building it: the key is ``(h * R + r) * E`` plus ``t``."""
        base = self._encode_prefix(heads_relations[:, 0], heads_relations[:, 1])
        return self._lookup(base[:, None] + tails[None, :], base >= 0, tails < self.num_entities)

    def contains_heads(self, heads: torch.Tensor, relations_tails: torch.Tensor) -> BoolTensor:
        """Whether each ``(h, r, t)`` of every candidate ``h`` (shape ``(K,)``) with every pair ``(r, t)``
        (shape ``(B, 2)``) is a known triple; shape ``(B, K)``: the key is ``h * (R * E)`` plus ``r * E + t``."""
        relations, tails = relations_tails[:, 0], relations_tails[:, 1]
        inside_pairs = (relations < self.num_relations) & (tails < self.num_entities)
        offset = relations * self.num_entities + tails
        return self._lookup(
            heads[None, :] * (self.num_relations * self.num_entities) + offset[:, None],
            inside_pairs,
            heads < self.num_entities,
        )

    def _encode_prefix(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """``(h * R + r) * E`` per pair, ``-1`` where ``h`` or ``r`` lies outside the table."""
        inside = (heads < self.num_entities) & (relations < self.num_relations)
        return torch.where(inside, (heads * self.num_relations + relations) * self.num_entities, -1)

    def _lookup(self, encoded: torch.Tensor, rows_inside: torch.Tensor, columns_inside: torch.Tensor) -> BoolTensor:
        """Membership of ``(B, K)`` keys, false outside the table (rows or columns out of range)."""
        keys = self.keys.to(encoded.device)
        inside = rows_inside[:, None] & columns_inside[None, :]
        encoded = torch.where(inside, encoded, 0)
        position = torch.searchsorted(keys, encoded).clamp_max(keys.numel() - 1)
        return inside & (keys[position] == encoded)

    def extra_repr(self) -> str:
        return f"num_keys={self.keys.numel()}, num_entities={self.num_entities}, num_relations={self.num_relations}"


def register() -> None:
    """Make ``sortedkey`` a name of ``pykeen.sampling.filtering.filterer_resolver`` (idempotent)."""
    if filterer_resolver.normalize_cls(SortedKeyFilterer) not in filterer_resolver.lookup_dict:
        filterer_resolver.register(SortedKeyFilterer)
