"""A structure-aware second view of a client's entity rows for SimSkip (``row_view``).

SimSkip's own views (:mod:`simskip_core.augment`: Gaussian noise, feature masking) perturb a row
without knowing anything about the graph, so the contrastive task only asks the encoder to undo
noise. This module gives SimSkip a view that carries the graph: for an entity ``e`` it draws one
of the client's own TRAIN triples incident to ``e`` and asks the trained model where that
neighbour and relation put ``e`` -- the neighbour's *evidence* for ``e`` in the model's geometry:

=========  ==============================  ==============================
model      ``e`` is the tail of (h, r, e)   ``e`` is the head of (e, r, t)
=========  ==============================  ==============================
TransE     ``h + r``                       ``t - r``
RotatE     ``h ∘ r``                       ``t ∘ conj(r)``  (``|r| = 1``)
ComplEx    ``h ∘ r``                       ``t ∘ conj(r)``
DistMult   ``h ∘ r``                       ``t ∘ r``
=========  ==============================  ==============================

For TransE and RotatE the evidence is the point the score says ``e`` should be at (the score is
a distance to it). For ComplEx (``Re<h ∘ r, conj(t)>``) and DistMult (``<h, r, t>``) it is only
the *direction* that maximizes the score at fixed norm; its length is ``|h||r|``, not ``|e|``:
a heuristic. RotatE's relations are projected onto ``|r| = 1`` (PyKEEN's constrainer keeps them
there after each step; the projection only removes float drift).

The view mixes the evidence with the row itself, ``view = x + beta (evidence - x)`` with ``beta``
the run-config key ``simskip-structure-mix`` (default 0.5), so it stays on the row's scale; an
entity with no train triple gets ``x`` itself. Complex models' rows are kept as the real pairs
``re_0, im_0, re_1, ...`` they are stored and refined as (:mod:`client.kge.models`). The
:class:`StructureView` is a :data:`simskip_core.RowViewProvider`: SimSkip calls it with the
batch's row indices and its augmentation generator (one uniform draw per row picks the triple,
through a CSR index of the incident triples), divides the view by its scale and then applies the
configured noise and masking (``simskip-augmentations = "row_view,gaussian_noise,feature_mask"``).

Privacy: only the client's own train triples, rows and trained relations are read, in the
client's process; nothing new leaves it (the server still sees only encoder weights).

Why it is built here: no library offers it. PyKEEN scores triples but has no "evidence of a
neighbour for an entity" representation, and :mod:`simskip_core` is modality-agnostic by contract
(no PyKEEN, ``lint-imports``), so it only offers the hook (``row_view``) and the KG side lives in
:mod:`client.kge`. It is a bet, not an established method: whether it helps is judged like every
SimSkip row, against the perturbation control (the unrefined rows moved by the same distance in
random directions) and the unrefined rows, under the same downstream protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pykeen.models import Model, model_resolver

from client.kge.config import KGEConfig
from client.kge.models import entity_embedding, relation_embeddings, relation_rows
from client.kge.protocols import as_trained_trainer
from client.kge.training import PrivateStateError, TrainableGraph

__all__ = [
    "STRUCTURE_VIEW_MODELS",
    "StructureView",
    "StructureViewError",
    "client_structure_view",
    "structure_view_from_model",
]

#: Normalized PyKEEN model name -> how the evidence is composed (``translation``: ``h + r`` /
#: ``t - r``; ``rotation``: ``h ∘ r`` / ``t ∘ conj(r)`` on complex rows; ``product``: ``h ∘ r`` /
#: ``t ∘ r`` on real rows).
STRUCTURE_VIEW_MODELS: dict[str, str] = {
    "transe": "translation",
    "rotate": "rotation",
    "complex": "rotation",
    "distmult": "product",
}


class StructureViewError(ValueError):
    """The structure view cannot be built: unsupported model, rows, relations or triples that do not fit."""


class StructureView:
    """Row-view provider: per batch row, the mix of the row with one random neighbour's evidence.

    Call it as ``view(index, generator)`` (a :data:`simskip_core.RowViewProvider`): ``index`` are
    row indices into ``entity_rows`` (on any device), ``generator`` a :class:`torch.Generator` on
    the same device; it draws one uniform number per row from ``generator`` (also for rows without
    a triple, so the stream does not depend on the degrees) and returns float32 ``(B, entity_dim)``
    on ``index``'s device, in the units of ``entity_rows``.

    :param entity_rows: float ``(num_entities, entity_dim)``, the rows SimSkip refines, as stored
        (complex models: real pairs ``re_0, im_0, ...``, ``entity_dim = 2 * dim``).
    :param relation_rows: ``(num_relations, dim)``: real for ``translation`` / ``product``, complex
        (or real pairs ``(num_relations, 2 * dim)``) for ``rotation``.
    :param triples: int ``(m, 3)`` ``(head, relation, tail)`` ids of the client's TRAIN triples.
    :param kind: a value of :data:`STRUCTURE_VIEW_MODELS`.
    :param mix: ``beta`` in ``x + beta (evidence - x)``, in ``[0, 1]``.
    :param unit_relations: project the relations onto ``|r| = 1`` (RotatE).
    :raises StructureViewError: for shapes, ids or values that do not fit.
    """

    def __init__(
        self,
        entity_rows: Any,
        relation_rows: Any,
        triples: Any,
        *,
        kind: str,
        mix: float,
        unit_relations: bool = False,
    ) -> None:
        if kind not in set(STRUCTURE_VIEW_MODELS.values()):
            raise StructureViewError(
                f"unknown evidence kind {kind!r}; one of {sorted(set(STRUCTURE_VIEW_MODELS.values()))}"
            )
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= float(mix) <= 1.0:
            raise StructureViewError(f"simskip-structure-mix must be a number in [0, 1], got {mix!r}")
        self.kind = kind
        self.mix = float(mix)
        rows = torch.as_tensor(np.ascontiguousarray(entity_rows, dtype=np.float32))
        if rows.ndim != 2 or rows.shape[0] < 1 or not torch.isfinite(rows).all():
            raise StructureViewError(
                f"entity rows must be a finite (num_entities, entity_dim) matrix, got {tuple(rows.shape)}"
            )
        relations = torch.as_tensor(relation_rows).detach().cpu()
        if kind == "rotation":
            if not relations.is_complex():
                if relations.ndim != 2 or relations.shape[1] % 2:
                    raise StructureViewError(
                        f"complex relations as real pairs need an even width, got {tuple(relations.shape)}"
                    )
                relations = torch.view_as_complex(
                    relations.to(torch.float32).reshape(relations.shape[0], -1, 2).contiguous()
                )
            relations = relations.to(torch.complex64)
            if unit_relations:
                relations = relations / relations.abs().clamp_min(torch.finfo(torch.float32).tiny)
            relations = torch.view_as_real(relations).reshape(relations.shape[0], -1)
        elif relations.is_complex():
            raise StructureViewError(f"{kind} evidence needs real relations, got complex ones")
        relations = relations.to(torch.float32).contiguous()
        if relations.ndim != 2 or relations.shape[1] != rows.shape[1]:
            raise StructureViewError(
                f"relation rows of shape {tuple(relations.shape)} do not fit entity rows of width {rows.shape[1]} "
                "(complex models: both as real pairs)"
            )
        if not torch.isfinite(relations).all():
            raise StructureViewError("relation rows hold NaN or Inf values")
        mapped = torch.as_tensor(np.asarray(triples, dtype=np.int64).reshape(-1, 3))
        n, num_relations = rows.shape[0], relations.shape[0]
        if mapped.numel() and (
            mapped[:, [0, 2]].min() < 0
            or mapped[:, [0, 2]].max() >= n
            or mapped[:, 1].min() < 0
            or mapped[:, 1].max() >= num_relations
        ):
            raise StructureViewError(
                f"triple ids outside the {n} entities / {num_relations} relations of the rows and relations"
            )
        heads, rels, tails = mapped[:, 0], mapped[:, 1], mapped[:, 2]
        # CSR over the incident triples: entry k belongs to entity owner[k]; its neighbour, relation and
        # sign: +1 where the owner is the triple's tail (evidence h + r / h ∘ r), -1 where it is the head
        # (t - r / t ∘ conj(r)).
        owner = torch.cat([tails, heads])
        order = torch.argsort(owner, stable=True)
        self.neighbour = torch.cat([heads, tails])[order]
        self.relation = torch.cat([rels, rels])[order]
        self.sign = torch.cat([torch.ones(len(heads)), -torch.ones(len(tails))])[order]
        self.degree = torch.bincount(owner, minlength=n)
        self.start = torch.cumsum(self.degree, 0) - self.degree
        self.rows = rows
        self.relations = relations
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @property
    def num_entities(self) -> int:
        """Rows the view is defined for."""
        return int(self.rows.shape[0])

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The index and the rows on ``device`` (copied once per device)."""
        if device not in self._on:
            self._on[device] = tuple(
                t.to(device)
                for t in (
                    self.rows,
                    self.relations,
                    self.neighbour,
                    self.relation,
                    self.sign,
                    self.degree,
                    self.start,
                )
            )
        return self._on[device]

    def evidence(self, index: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """The evidence of incident entry ``choice`` (CSR position) for the entities ``index``.

        :param index: long ``(B,)`` entity ids.
        :param choice: long ``(B,)`` positions in the CSR entries (each one of its entity's own).
        :return: float32 ``(B, entity_dim)``.
        """
        rows, relations, neighbour, relation, sign, _, _ = self._tensors(index.device)
        other = rows[neighbour[choice]]
        r = relations[relation[choice]]
        sign = sign[choice].unsqueeze(1)  # +1: the entity is the tail (h, r, e); -1: the head (e, r, t)
        if self.kind == "translation":
            return torch.addcmul(other, sign, r)  # h + r, or t - r
        if self.kind == "product":
            return other * r
        # complex rows as real pairs; conj(r) for a head owner flips the imaginary parts
        r = r.reshape(len(index), -1, 2) * torch.stack([torch.ones_like(sign), sign], dim=-1)
        product = torch.view_as_complex(other.reshape(len(index), -1, 2)) * torch.view_as_complex(r)
        return torch.view_as_real(product).reshape(len(index), -1)

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The view of the entities ``index``: ``x + beta (evidence - x)``; ``x`` where no triple.

        :param index: long ``(B,)`` entity ids (row indices of the fitted matrix).
        :param generator: draws one uniform number per row (on ``index``'s device).
        :return: float32 ``(B, entity_dim)`` on ``index``'s device.
        """
        index = index.long()
        rows, _, _, _, _, degree, start = self._tensors(index.device)
        u = torch.rand(index.shape, generator=generator, device=index.device, dtype=torch.float64)
        x = rows[index]
        if self.neighbour.numel() == 0:
            return x
        deg = degree[index]
        offset = torch.minimum((u * deg).long(), (deg - 1).clamp_min(0))
        choice = (start[index] + offset).clamp_max(self.neighbour.numel() - 1)
        weight = (deg > 0).to(x.dtype).mul_(self.mix).unsqueeze(1)  # beta, or 0 without a triple
        return self.evidence(index, choice).sub_(x).mul_(weight).add_(x)


def structure_view_from_model(
    model: Model, triples: Any, *, mix: float, entity_rows: Any | None = None
) -> StructureView:
    """A :class:`StructureView` in ``model``'s geometry.

    :param model: a trained PyKEEN TransE, RotatE, ComplEx or DistMult (its relation table is used,
        read through PyKEEN's representation: complex models as complex numbers).
    :param triples: int ``(m, 3)`` train triples in the model's ids (``TriplesFactory.mapped_triples``).
    :param mix: ``beta`` of ``x + beta (evidence - x)`` (``simskip-structure-mix``).
    :param entity_rows: the rows to view, ``(num_entities, entity_dim)`` as stored; by default the
        model's own entity table (:func:`client.kge.models.entity_embedding`).
    :raises StructureViewError: for another model, or rows / triples that do not fit it.
    """
    name = model_resolver.normalize_inst(model)
    if name not in STRUCTURE_VIEW_MODELS:
        raise StructureViewError(
            f"simskip-augmentations row_view has no evidence rule for model {type(model).__name__}; "
            f"supported: {', '.join(sorted(STRUCTURE_VIEW_MODELS))}"
        )
    table = entity_embedding(model)._embeddings.weight
    if entity_rows is None:
        entity_rows = table.detach().cpu().numpy()
    elif tuple(np.shape(entity_rows)) != tuple(table.shape):
        raise StructureViewError(
            f"entity rows of shape {np.shape(entity_rows)} do not fit the model's {tuple(table.shape)}"
        )
    representations = relation_embeddings(model)
    if len(representations) != 1:
        raise StructureViewError(f"{type(model).__name__} has {len(representations)} relation tables, expected one")
    # a reciprocal model (reciprocal-relations): its forward rows, in the graph's relation ids (the evidence
    # rules are those of (h, r, t) itself); its inverse rows are left out
    forward = None
    if model.use_inverse_triples:
        forward = relation_rows(model, torch.arange(model.num_real_relations, device=model.device))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # no regularizer term, no dropout
            relations = representations[0](indices=forward).detach().cpu()
    finally:
        model.train(was_training)
    if isinstance(triples, torch.Tensor):
        triples = triples.detach().cpu().numpy()
    return StructureView(
        entity_rows,
        relations,
        triples,
        kind=STRUCTURE_VIEW_MODELS[name],
        mix=mix,
        unit_relations=name == "rotate",
    )


def client_structure_view(
    graph: TrainableGraph,
    config: KGEConfig,
    rows: Any,
    relation_state: Mapping[str, np.ndarray] | None,
    *,
    mix: float,
) -> StructureView:
    """The structure view of one client: its TRAIN triples, its rows and its own trained relations.

    :param graph: the client's graph (``graph.train.mapped_triples`` in local ids).
    :param config: the run's KGE config (model, dim).
    :param rows: float ``(graph.num_entities, entity_dim)``, the rows SimSkip refines (local-id order).
    :param relation_state: the client's trained relation tensors (``relation_embeddings.npz`` or its
        private state, as :func:`client.kge.protocols.as_trained_trainer` takes them).
    :param mix: ``simskip-structure-mix``.
    :raises StructureViewError: naming the client, when there are no relations, they do not fit its
        model, the rows do not fit, or the model has no evidence rule.
    """
    who = f"client {graph.client_id}"
    if relation_state is None:
        raise StructureViewError(
            f"{who}: simskip-augmentations names row_view, which needs the client's own trained relations, "
            "and it has none (no relation_embeddings.npz / private state)"
        )
    try:
        trainer = as_trained_trainer(graph, config, relation_state, "cpu")
    except PrivateStateError as error:
        raise StructureViewError(
            f"{who}: simskip-augmentations names row_view, but the client's trained relations do not fit its "
            f"model (e.g. a pooled id space): {error}"
        ) from None
    try:
        return structure_view_from_model(trainer.model, graph.train.mapped_triples, mix=mix, entity_rows=rows)
    except StructureViewError as error:
        raise StructureViewError(f"{who}: {error}") from None
