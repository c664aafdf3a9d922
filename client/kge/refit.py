"""Downstream link prediction on given entity rows (the SimSkip paper's downstream task).

Per client: the entity rows are loaded and FROZEN, the client's relation embeddings are re-fit
on its train triples for a fixed budget of epochs, with the same model, loss, negative sampler,
optimizer and batch size as KGE training (a :class:`~client.kge.training.LocalTrainer` built
from the run's :class:`~client.kge.config.KGEConfig`), then the test split is ranked under both
protocols of :mod:`client.kge.evaluation`.

Fairness: the relation tables are re-initialized from the trainer's seed (not taken from the
FedE run), and the re-fit's sampling is seeded by the same (config seed, client, epoch) stream,
so the unrefined and the refined rows get the same relation init, the same negatives and the
same budget: the entity rows are the only difference (``tests/test_refit.py`` checks that equal
rows give equal metrics). Starting from the FedE relations instead would favour the unrefined
rows, whose space those relations were trained in.

Frozen means bit-identical: the entity weight gets ``requires_grad = False`` before the loop
builds its optimizer (PyKEEN then leaves it out of the parameter list), and the entity
constrainer is switched off for the re-fit. Otherwise TransE with ``entity-constrainer =
model-default`` would re-normalize every row to unit L2 norm after each step, i.e. change the
rows under test. So refined rows are used exactly as given (not re-normalized); RotatE's and
ComplEx's rows are real pairs and are likewise used as given. :func:`refit_relations` checks
after training that the rows did not move and raises :class:`FrozenRowsChangedError` if they did.

"FedE as trained" (:func:`evaluate_as_trained`) ranks with the FedE model itself: best-round
entity rows plus the client's trained relation embeddings, no re-fit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from client.kge.config import KGEConfig
from client.kge.models import entity_embedding
from client.kge.training import LocalTrainer, TrainableGraph

__all__ = [
    "FrozenRowsChangedError",
    "PROTOCOL_NAMES",
    "RefitResult",
    "evaluate_as_trained",
    "evaluate_downstream",
    "evaluate_protocols",
    "refit_relations",
]

#: Both protocols are always reported.
PROTOCOL_NAMES: tuple[str, ...] = ("standard", "fede")


class FrozenRowsChangedError(RuntimeError):
    """The entity rows changed during the relation re-fit (they must stay frozen)."""


@dataclass
class RefitResult:
    """Outcome of one re-fit + evaluation.

    :param metrics: protocol -> metrics of :func:`client.kge.evaluation.evaluate_link_prediction`.
    :param losses: mean training loss of each re-fit epoch.
    :param seconds: wall time of the re-fit (training only).
    :param trainer: the trainer holding the re-fit model (for inspection; not serialized).
    """

    metrics: dict[str, dict[str, float]]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainer: LocalTrainer | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"metrics", "losses", "seconds"}``."""
        return {"metrics": self.metrics, "losses": self.losses, "seconds": round(self.seconds, 4)}


def _freeze_entities(trainer: LocalTrainer) -> None:
    """Exclude the entity table from gradients, the optimizer and the per-step constrainer."""
    embedding = entity_embedding(trainer.model)
    embedding._embeddings.weight.requires_grad_(False)
    # TransE's default constrainer would rewrite the frozen rows after every step.
    embedding.constrainer = None


def evaluate_protocols(
    trainer: LocalTrainer, split: str = "test", protocols: Sequence[str] = PROTOCOL_NAMES
) -> dict[str, dict[str, float]]:
    """Rank ``split`` with the trainer's current model under each protocol."""
    return {protocol: trainer.evaluate(split, protocol) for protocol in protocols}


def refit_relations(
    graph: TrainableGraph,
    config: KGEConfig,
    entity_rows: np.ndarray,
    *,
    epochs: int,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOL_NAMES,
    device: torch.device | str | None = None,
) -> RefitResult:
    """Re-fit the relation embeddings on frozen ``entity_rows`` and evaluate.

    :param graph: the client's graph (train factory in client-local ids; valid/test for evaluation).
    :param config: the run's KGE config (model, loss, sampler, optimizer, batch size, seed).
    :param entity_rows: float array ``(graph.num_entities, entity_dim)`` in local-id order.
    :param epochs: the re-fit budget (``0``: evaluate the fresh relations on the given rows).
    :param split: the evaluated split (``"test"``; ``"valid"`` for model selection).
    :param protocols: protocols to report.
    :param device: training device (CUDA when present by default).
    :raises client.kge.training.EmbeddingShapeError: rows of the wrong shape or non-finite.
    :raises FrozenRowsChangedError: if the rows moved during the re-fit.
    """
    trainer = LocalTrainer(graph, config, device=device)
    trainer.set_entity_embeddings(entity_rows)
    _freeze_entities(trainer)
    before = trainer.get_entity_embeddings()
    started = time.perf_counter()
    losses = trainer.train(epochs)
    seconds = time.perf_counter() - started
    after = trainer.get_entity_embeddings()
    if not np.array_equal(before, after):
        moved = int(np.flatnonzero((before != after).any(axis=1))[0])
        raise FrozenRowsChangedError(f"client {graph.client_id}: entity row {moved} changed during the relation re-fit")
    return RefitResult(evaluate_protocols(trainer, split, protocols), losses, seconds, trainer)


def evaluate_as_trained(
    graph: TrainableGraph,
    config: KGEConfig,
    entity_rows: np.ndarray,
    relation_state: Mapping[str, np.ndarray],
    *,
    split: str = "test",
    protocols: Sequence[str] = PROTOCOL_NAMES,
    device: torch.device | str | None = None,
) -> RefitResult:
    """Evaluate the model as FedE trained it: given entity rows and trained relation tensors.

    :param relation_state: the model's non-entity tensors by state-dict name (as in the client's
        ``relation_embeddings.npz``), or a full private state of
        :meth:`LocalTrainer.get_private_state` (``model/...`` keys).
    :raises client.kge.training.PrivateStateError: when the tensors do not fit the model.
    """
    trainer = LocalTrainer(graph, config, device=device)
    state = dict(relation_state)
    if not any(key.startswith("model/") for key in state):
        state = {f"model/{key}": value for key, value in state.items()}
    state = {key: value for key, value in state.items() if key.startswith(("model/", "meta/"))}  # optimizer moments are irrelevant here
    state.setdefault("meta/epochs_done", np.asarray([0], dtype=np.int64))
    trainer.set_private_state(state)
    trainer.set_entity_embeddings(entity_rows)
    return RefitResult(evaluate_protocols(trainer, split, protocols), [], 0.0, trainer)


def evaluate_downstream(
    graph: TrainableGraph,
    config: KGEConfig,
    unrefined_rows: np.ndarray,
    refined_rows: Mapping[str, np.ndarray],
    *,
    refit_epochs: int,
    relation_state: Mapping[str, np.ndarray] | None = None,
    split: str = "test",
    device: torch.device | str | None = None,
) -> dict[str, dict[str, Any]]:
    """One client's rows of the results table: as trained, unrefined and every refined variant.

    :param unrefined_rows: the FedE (best round) entity rows, local-id order.
    :param refined_rows: variant name (``refined``, ``refined-no-skip``) -> refined rows.
    :param refit_epochs: the re-fit budget, identical for every row.
    :param relation_state: the client's trained relation tensors; ``None`` leaves out the
        ``fede-as-trained`` row.
    :returns: ``{row: {"metrics": {protocol: metrics}, "losses": [...], "seconds": s}}``.
    """
    results: dict[str, dict[str, Any]] = {}
    if relation_state is not None:
        results["fede-as-trained"] = evaluate_as_trained(
            graph, config, unrefined_rows, relation_state, split=split, device=device
        ).as_dict()
    results["unrefined"] = refit_relations(graph, config, unrefined_rows, epochs=refit_epochs, split=split, device=device).as_dict()
    for variant, rows in refined_rows.items():
        results[variant] = refit_relations(graph, config, rows, epochs=refit_epochs, split=split, device=device).as_dict()
    return results
