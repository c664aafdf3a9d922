"""sLCWA with negatives shared across a batch: PyKEEN's loop, cheaper negatives.

Each batch draws one set of candidate entities per corrupted side (uniformly over the party's
entities, as PyKEEN's ``basic`` sampler does) and scores every positive against all of them
through :mod:`client.kge.candidate_scoring` (a distance matrix / matrix product instead of
``batch x negatives`` gathered rows). Candidates that form a known training triple with a
positive are filtered out (exact, :class:`client.kge.filtering.SortedKeyFilterer`) and the loss
is the model's own (the ``loss`` key; FedE's NSSA by default) on the remaining negatives, passed to
its ``process_slcwa_scores`` with the batch filter: a row holds the negatives of every corrupted side
(a softmax loss such as ``crossentropy`` normalizes over head- and tail-corrupted candidates together).

A reciprocal model (``reciprocal-relations``) scores a triple differently for each side it ranks: its
tail side is ``(h, r, t)`` and its head side the inverse triple ``(t, r^-1, h)``
(:func:`client.kge.candidate_scoring.score_triples`). Each corrupted side then has its own positive score
and its own loss (the positive against that side's negatives), and the batch's loss is the mean of the
sides' losses, as in LibKGE's reciprocal models (one loss per direction).

Why our own loop: PyKEEN's sLCWA loop samples ``num_negs_per_pos`` independent negative triples
per positive and scores each (``B * K`` embedding lookups, ``(B, K, d)`` intermediates and a
scatter in backward); profiling showed those to be ~90 % of an epoch. Everything else (epochs,
optimizer, resume, callbacks) is PyKEEN's :class:`~pykeen.training.SLCWATrainingLoop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pykeen.training import SLCWATrainingLoop
from pykeen.triples import CoreTriplesFactory
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from client.kge.candidate_scoring import score_heads, score_tails, score_triples
from client.kge.filtering import SortedKeyFilterer

__all__ = ["SharedNegativesTrainingLoop", "negatives_per_side"]

SIDES = ("head", "tail")


class _PositiveBatches(torch.utils.data.Dataset):
    """Rows of the training triples, indexed by a list of positions (one batch per item)."""

    def __init__(self, mapped_triples: torch.Tensor) -> None:
        self.mapped_triples = mapped_triples

    def __len__(self) -> int:
        return int(self.mapped_triples.shape[0])

    def __getitem__(self, positions: list[int]) -> torch.Tensor:
        return self.mapped_triples[positions]


def negatives_per_side(num_negs_per_pos: int, sides: Sequence[str]) -> int:
    """Candidates drawn per side: ``num_negs_per_pos`` split evenly over the corrupted sides."""
    return max(1, num_negs_per_pos // len(sides))


class SharedNegativesTrainingLoop(SLCWATrainingLoop):
    """PyKEEN's sLCWA loop whose negatives are shared by all positives of a batch.

    :param corruption_sides: the corrupted sides, a subset of ``("head", "tail")``.
    :param num_negs_per_pos: negatives per positive, split evenly over the sides.
    :param filtered: drop candidates that form a known training triple with the positive.
    :param kwargs: passed to :class:`~pykeen.training.TrainingLoop` (``model``, ``triples_factory``,
        ``optimizer``, ...).
    """

    def __init__(
        self, *, corruption_sides: Sequence[str], num_negs_per_pos: int, filtered: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        unknown = set(corruption_sides) - set(SIDES)
        if not corruption_sides or unknown:
            raise ValueError(f"shared negatives corrupt heads and/or tails only, got {tuple(corruption_sides)}")
        self.corruption_sides = tuple(corruption_sides)
        self.num_negatives = negatives_per_side(num_negs_per_pos, self.corruption_sides)
        self.filtered = filtered
        self._filterer: SortedKeyFilterer | None = None

    def _create_training_data_loader(
        self,
        triples_factory: CoreTriplesFactory,
        *,
        sampler: str | None,
        batch_size: int,
        drop_last: bool,
        **kwargs: Any,
    ) -> DataLoader:
        if sampler is not None:
            raise ValueError(f"shared negatives take no {sampler=}")
        if self.filtered:
            self._filterer = SortedKeyFilterer(triples_factory.mapped_triples)
        dataset = _PositiveBatches(triples_factory.mapped_triples)
        order = RandomSampler(dataset) if kwargs.pop("shuffle", True) else SequentialSampler(dataset)
        # one item = one batch of positions (the draws come from torch's global, seeded RNG)
        return DataLoader(
            dataset, sampler=BatchSampler(order, batch_size=batch_size, drop_last=drop_last), batch_size=None, **kwargs
        )

    @staticmethod
    def _get_batch_size(batch: torch.Tensor) -> int:
        return int(batch.shape[0])

    def _process_batch(
        self,
        batch: torch.Tensor,
        start: int,
        stop: int,
        label_smoothing: float = 0.0,
        slice_size: int | None = None,
    ) -> torch.Tensor:
        if slice_size is not None:
            raise AttributeError("Slicing is not possible for sLCWA training loops.")
        model = self.model
        positives = batch[start:stop].to(model.device)
        num_entities = model.num_entities
        negative_scores, keep = [], []
        for side in self.corruption_sides:
            candidates = torch.randint(num_entities, (self.num_negatives,), device=model.device)
            if side == "tail":
                scores = score_tails(model, positives[:, :2], candidates)
                if self._filterer is not None:  # the (B, K) answer of contains() on the (B, K, 3) negatives
                    keep.append(~self._filterer.contains_tails(positives[:, :2], candidates))
            else:
                scores = score_heads(model, positives[:, 1:], candidates)
                if self._filterer is not None:
                    keep.append(~self._filterer.contains_heads(candidates, positives[:, 1:]))
            negative_scores.append(scores)
        if model.use_inverse_triples:
            return self._per_side_loss(positives, negative_scores, keep, label_smoothing)
        scores = torch.cat(negative_scores, dim=1)
        batch_filter = torch.cat(keep, dim=1) if keep else None
        return (
            self.loss.process_slcwa_scores(
                positive_scores=model.score_hrt(positives),
                negative_scores=scores[batch_filter] if batch_filter is not None else scores,
                label_smoothing=label_smoothing,
                batch_filter=batch_filter,
                num_entities=num_entities,
            )
            + model.collect_regularization_term()
        )

    def _per_side_loss(
        self,
        positives: torch.Tensor,
        negative_scores: Sequence[torch.Tensor],
        keep: Sequence[torch.Tensor],
        label_smoothing: float,
    ) -> torch.Tensor:
        """A reciprocal model's batch loss: each side's positive score (:func:`score_triples`) against that
        side's (filtered) negatives, the sides' losses averaged, plus the regularization term."""
        model = self.model
        losses = []
        for index, side in enumerate(self.corruption_sides):
            scores = negative_scores[index]
            batch_filter = keep[index] if keep else None
            losses.append(
                self.loss.process_slcwa_scores(
                    positive_scores=score_triples(model, positives, target=side),
                    negative_scores=scores[batch_filter] if batch_filter is not None else scores,
                    label_smoothing=label_smoothing,
                    batch_filter=batch_filter,
                    num_entities=model.num_entities,
                )
            )
        return torch.stack(losses).mean() + model.collect_regularization_term()
