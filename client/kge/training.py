"""One party's local KGE training with PyKEEN, resumable across federated rounds.

:class:`LocalTrainer` builds the PyKEEN model and training loop once and then alternates, round
after round, between receiving entity rows (:meth:`~LocalTrainer.set_entity_embeddings`),
training a few epochs that *continue* from those rows (:meth:`~LocalTrainer.train`) and returning
the rows (:meth:`~LocalTrainer.get_entity_embeddings`). Everything else a party needs to continue
in a fresh process (relation embeddings, optimizer moments, epoch counter) travels as numpy
arrays through :meth:`~LocalTrainer.get_private_state` / :meth:`~LocalTrainer.set_private_state`,
so a Flower ClientApp can keep it in ``context.state``.

The training regime (PyKEEN's sLCWA loop, ``slcwa``, or sLCWA with negatives shared across each
batch, ``sharednegatives``) is picked from :data:`client.kge.regimes.training_regime_resolver`
by ``config.training_loop``, so faster regimes can be added as subclasses without touching the
trainer.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from pykeen.models import Model
from pykeen.training.training_loop import NonFiniteLossError
from pykeen.triples import CoreTriplesFactory

from client.kge.config import ConfigError, KGEConfig
from client.kge.evaluation import evaluate_client
from client.kge.models import build_model, entity_embedding, model_triples_factory, seeded
from client.kge.regimes import EpochLearningRate, sum_entity_gradients_sparsely, training_regime_resolver
from simskip_core import resolve_device as resolve_named_device

__all__ = [
    "EmbeddingShapeError",
    "LocalTrainer",
    "PrivateStateError",
    "TrainableGraph",
    "TrainingDivergedError",
    "resolve_device",
]


#: Prefixes of the private-state keys.
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"
META_EPOCHS = "meta/epochs_done"
ENTITY_KEY = "entity/rows"


class EmbeddingShapeError(ValueError):
    """Entity rows of the wrong shape, dtype or with non-finite values."""


class TrainingDivergedError(RuntimeError):
    """Local training produced a non-finite loss (its rows must not reach the server)."""


class PrivateStateError(ValueError):
    """A private state that does not fit this trainer's model (missing, extra or mis-shaped keys)."""


class TrainableGraph(Protocol):
    """What :class:`LocalTrainer` needs of a party's graph (:class:`kg_datasets.ClientGraph` fits).

    ``valid`` and ``test`` factories are only needed by :meth:`LocalTrainer.evaluate`.
    """

    client_id: int
    train: CoreTriplesFactory

    @property
    def num_entities(self) -> int: ...


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when present, else CPU; otherwise that device.

    The rule is :func:`simskip_core.resolve_device`'s (one rule for KGE and SimSkip): asking for
    CUDA where there is none fails with its named error instead of later inside torch.
    """
    return resolve_named_device("auto" if device is None else str(device))


@contextlib.contextmanager
def _parameters_kept(model: Model) -> Iterator[None]:
    """Make ``model.reset_parameters_`` a no-op for the block.

    PyKEEN's loop re-initializes the model on a first ``train`` call (``continue_training=False``)
    and refuses ``continue_training=True`` while the optimizer has no state. A party's first
    local training must start from the rows the server sent, so the re-initialization (only) is
    skipped; the loop still builds its fresh optimizer as usual.
    """
    model.reset_parameters_ = lambda: model  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.reset_parameters_


_HEAP_FROZEN = False


def _freeze_import_heap() -> None:
    """Move the objects alive now (torch, PyKEEN, Flower modules; the graph) out of the GC's view.

    PyKEEN's training loop calls ``gc.collect()`` after every epoch; with the ~400k objects the
    imports leave, that full collection took 0.28 s per epoch here (UMLS: half of a 3-epoch
    round; Fed3: ~4 % of an epoch). Called once per process, right after the first training
    call (whose last epoch ended with PyKEEN's own full collection, and whose lazy imports are
    done), ``gc.freeze()`` makes later collections scan only what was created since. Memory that
    becomes garbage later is still collected.
    """
    global _HEAP_FROZEN  # noqa: PLW0603 - one flag per process: the heap is frozen once
    if not _HEAP_FROZEN:
        gc.freeze()
        _HEAP_FROZEN = True


class LocalTrainer:
    """A party's PyKEEN model and training loop, trained a few epochs per round.

    :param graph: the party's graph; its train factory uses client-local ids, so negatives are
        drawn from the party's own entities.
    :param config: the KGE config.
    :param device: where to train; CUDA when present, else CPU.
    """

    def __init__(self, graph: TrainableGraph, config: KGEConfig, device: torch.device | str | None = None) -> None:
        self.graph = graph
        self.config = config
        self.device = resolve_device(device)
        try:
            self.regime = training_regime_resolver.make(config.training_loop)
        except (KeyError, ValueError):
            raise ConfigError(
                f"training-loop {config.training_loop!r} is not one of {sorted(training_regime_resolver.lookup_dict)}"
            ) from None
        #: what the training loop trains on: ``graph.train``, or with ``reciprocal-relations`` the same triples
        #: with PyKEEN's inverse triples (the factory the model is built on; the same ``mapped_triples``)
        self.train_factory = model_triples_factory(config, graph.train)
        with seeded(self._seed(-1), self.device):
            self.model = build_model(config, self.train_factory, self.device)
            sum_entity_gradients_sparsely(self.model)
            self.loop = self.regime.build_loop(self.model, self.train_factory, config)
        if self.model.num_entities != graph.num_entities:
            raise EmbeddingShapeError(
                f"client {graph.client_id}: train factory has {self.model.num_entities} entities, "
                f"the graph reports {graph.num_entities}"
            )
        self._entity_weight = entity_embedding(self.model)._embeddings.weight
        #: epochs trained so far (across rounds and processes, through the private state)
        self.epochs_done = 0

    # --- entity rows -----------------------------------------------------------------------

    @property
    def entity_dim(self) -> int:
        """Width of one stored entity row."""
        return int(self._entity_weight.shape[1])

    def set_entity_embeddings(self, rows: np.ndarray) -> None:
        """Load entity rows into the model.

        :param rows: float array, shape ``(graph.num_entities, entity_dim)``, local-id order.
        :raises EmbeddingShapeError: wrong shape, non-float dtype or non-finite values.
        """
        rows = np.asarray(rows)
        expected = tuple(self._entity_weight.shape)
        if rows.shape != expected:
            raise EmbeddingShapeError(
                f"client {self.graph.client_id}: entity rows have shape {rows.shape}, expected {expected}"
            )
        if not np.issubdtype(rows.dtype, np.floating):
            raise EmbeddingShapeError(f"client {self.graph.client_id}: entity rows dtype {rows.dtype} is not float")
        if not np.isfinite(rows).all():
            bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
            raise EmbeddingShapeError(f"client {self.graph.client_id}: entity row {bad} holds NaN or inf")
        with torch.no_grad():
            self._entity_weight.copy_(torch.as_tensor(rows, dtype=self._entity_weight.dtype))

    def get_entity_embeddings(self) -> np.ndarray:
        """The model's entity rows: float32, shape ``(graph.num_entities, entity_dim)``, a copy."""
        return self._entity_weight.detach().cpu().numpy().astype(np.float32, copy=True)

    # --- training --------------------------------------------------------------------------

    def _seed(self, epochs_done: int) -> int:
        """A seed per (config seed, client, epochs done): resumed training replays identically."""
        # SeedSequence takes non-negative entropy only: shift ids (the pooled graph is -1) and counts
        sequence = np.random.SeedSequence([self.config.seed, int(self.graph.client_id) + 1, epochs_done + 1])
        return int(sequence.generate_state(1)[0])

    def train(self, epochs: int) -> list[float]:
        """Train ``epochs`` more epochs, continuing from the current weights (no re-init).

        :param epochs: number of epochs (0 does nothing).
        :returns: the mean training loss of each of these epochs.
        """
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if epochs == 0:
            return []
        # PyKEEN's num_epochs is a total over the loop's life, not an increment
        total = self.loop._epoch + epochs
        resume = self.config.keep_optimizer_state and bool(self.loop.optimizer.state)
        kwargs = self.regime.train_kwargs(self.config, self.device)
        if self.config.lr_decay != 1.0:  # without a schedule the optimizer is never touched (bit-identical)
            kwargs["callbacks"] = [EpochLearningRate(self.config, self.epochs_done, self.loop._epoch + 1)]
        with seeded(self._seed(self.epochs_done), self.device), warnings.catch_warnings():
            # PyKEEN's own sLCWA loop passes the deprecated shuffle flag; nothing for us to act on
            warnings.filterwarnings(
                "ignore", message="Training instances are always shuffled", category=DeprecationWarning
            )
            try:
                if resume:
                    losses = self.loop.train(self.train_factory, num_epochs=total, continue_training=True, **kwargs)
                else:
                    with _parameters_kept(self.model):
                        losses = self.loop.train(
                            self.train_factory, num_epochs=total, continue_training=False, **kwargs
                        )
            except NonFiniteLossError as error:
                raise TrainingDivergedError(
                    f"client {self.graph.client_id}: non-finite training loss in epochs "
                    f"{self.epochs_done + 1}..{self.epochs_done + epochs} (lower learning-rate?)"
                ) from error
        self.epochs_done += epochs
        _freeze_import_heap()
        # the loop returns its cumulative loss list
        return [float(loss) for loss in (losses or [])[-epochs:]]

    # --- evaluation ------------------------------------------------------------------------

    def evaluate(self, split: str = "valid", protocol: str | None = None) -> dict[str, float]:
        """Filtered rank-based link prediction on the party's ``valid`` or ``test`` split.

        :param split: ``"valid"`` or ``"test"``.
        :param protocol: ``"standard"`` or ``"fede"``; ``config.eval_protocol`` by default.
        :returns: see :func:`client.kge.evaluation.evaluate_link_prediction`.
        """
        return evaluate_client(
            self.model,
            self.graph,  # type: ignore[arg-type]
            split=split,
            protocol=protocol or self.config.eval_protocol,
            batch_size=self.config.eval_batch_size,
            device=self.device,
        )

    # --- private state ---------------------------------------------------------------------

    def _private_model_keys(self) -> list[str]:
        entity_key = next(
            name for name, tensor in self.model.state_dict(keep_vars=True).items() if tensor is self._entity_weight
        )
        return [name for name in self.model.state_dict() if name != entity_key]

    def get_private_state(self, include_entities: bool = False) -> dict[str, np.ndarray]:
        """Everything besides the shared entity rows needed to continue training elsewhere.

        Keys: ``model/<state_dict name>`` (relation embeddings and any other model tensor),
        ``optimizer/<param index>/<name>`` (e.g. Adam's ``exp_avg``, ``exp_avg_sq``, ``step``),
        ``meta/epochs_done``; with ``include_entities`` also ``entity/rows`` (for settings where
        no server keeps them, e.g. isolation).

        :returns: numpy arrays (copies), ready for a Flower ``ArrayRecord``.
        """
        model_state = self.model.state_dict()
        state = {
            MODEL_PREFIX + name: model_state[name].detach().cpu().numpy().copy() for name in self._private_model_keys()
        }
        if self.config.keep_optimizer_state:
            for index, param_state in self.loop.optimizer.state_dict()["state"].items():
                for name, value in param_state.items():
                    state[f"{OPTIMIZER_PREFIX}{index}/{name}"] = torch.as_tensor(value).detach().cpu().numpy().copy()
        state[META_EPOCHS] = np.asarray([self.epochs_done], dtype=np.int64)
        if include_entities:
            state[ENTITY_KEY] = self.get_entity_embeddings()
        return state

    def set_private_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`get_private_state` returned (in this or a fresh process).

        :raises PrivateStateError: for missing, unexpected or mis-shaped entries; nothing is
            changed then.
        """
        model_state = self.model.state_dict()
        expected = {MODEL_PREFIX + name for name in self._private_model_keys()} | {META_EPOCHS}
        given = set(state)
        optimizer_keys = {key for key in given if key.startswith(OPTIMIZER_PREFIX)}
        missing = sorted(expected - given)
        unexpected = sorted(given - expected - optimizer_keys - {ENTITY_KEY})
        if missing or unexpected:
            raise PrivateStateError(
                f"client {self.graph.client_id}: private state missing {missing}, unexpected {unexpected}"
            )
        new_model_state = {}
        for key in expected - {META_EPOCHS}:
            name = key[len(MODEL_PREFIX) :]
            value = np.asarray(state[key])
            if value.shape != tuple(model_state[name].shape):
                raise PrivateStateError(
                    f"client {self.graph.client_id}: private state {key!r} has shape {value.shape}, "
                    f"expected {tuple(model_state[name].shape)}"
                )
            new_model_state[name] = torch.as_tensor(value, dtype=model_state[name].dtype)
        optimizer_state = self._optimizer_state_from(state, optimizer_keys)
        if ENTITY_KEY in state:
            self.set_entity_embeddings(state[ENTITY_KEY])
        self.model.load_state_dict(new_model_state, strict=False)
        if optimizer_state is not None:
            self.loop.optimizer.load_state_dict(optimizer_state)
        self.epochs_done = int(np.asarray(state[META_EPOCHS]).reshape(-1)[0])

    def _optimizer_state_from(self, state: Mapping[str, np.ndarray], keys: set[str]) -> dict[str, Any] | None:
        """Rebuild a torch optimizer ``state_dict`` from flattened ``optimizer/<i>/<name>`` arrays."""
        if not keys or not self.config.keep_optimizer_state:
            return None
        current = self.loop.optimizer.state_dict()
        params = [p for group in self.loop.optimizer.param_groups for p in group["params"]]
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key in keys:
            index_text, _, name = key[len(OPTIMIZER_PREFIX) :].partition("/")
            if not index_text.isdigit() or int(index_text) >= len(params) or not name:
                raise PrivateStateError(f"client {self.graph.client_id}: bad optimizer state key {key!r}")
            value = torch.as_tensor(np.asarray(state[key]))
            param = params[int(index_text)]
            if value.ndim > 0 and value.shape != param.shape:
                raise PrivateStateError(
                    f"client {self.graph.client_id}: optimizer state {key!r} has shape {tuple(value.shape)}, "
                    f"parameter has {tuple(param.shape)}"
                )
            per_param.setdefault(int(index_text), {})[name] = value.to(param.device) if value.ndim else value
        return {"state": per_param, "param_groups": current["param_groups"]}
