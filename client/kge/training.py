"""One party's local KGE training with PyKEEN, resumable across federated rounds.

:class:`LocalTrainer` builds the PyKEEN model and training loop once and then alternates, round
after round, between receiving entity rows (:meth:`~LocalTrainer.set_entity_embeddings`),
training a few epochs that *continue* from those rows (:meth:`~LocalTrainer.train`) and returning
the rows (:meth:`~LocalTrainer.get_entity_embeddings`). Everything else a party needs to continue
in a fresh process (relation embeddings, optimizer moments, epoch counter) travels as numpy
arrays through :meth:`~LocalTrainer.get_private_state` / :meth:`~LocalTrainer.set_private_state`,
so a Flower ClientApp can keep it in ``context.state``.

The training regime (PyKEEN's sLCWA loop, ``slcwa``, or sLCWA with negatives shared across each
batch, ``sharednegatives``) is picked from :data:`training_regime_resolver`
by ``config.training_loop``, so faster regimes can be added as subclasses without touching the
trainer.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from class_resolver import ClassResolver
from class_resolver.contrib.torch import optimizer_resolver
from pykeen.models import Model
from pykeen.sampling import negative_sampler_resolver
from pykeen.training import SLCWATrainingLoop, TrainingCallback, TrainingLoop
from pykeen.training.training_loop import NonFiniteLossError
from pykeen.triples import CoreTriplesFactory

from client.kge import filtering
from client.kge.config import ConfigError, KGEConfig
from client.kge.evaluation import evaluate_client
from client.kge.models import build_model, entity_embedding, model_triples_factory, seeded
from client.kge.shared_negatives import SharedNegativesTrainingLoop
from simskip_core import resolve_device as resolve_named_device

__all__ = [
    "EmbeddingShapeError",
    "EpochLearningRate",
    "LocalTrainer",
    "PrivateStateError",
    "SLCWARegime",
    "SharedNegativesRegime",
    "TrainableGraph",
    "TrainingDivergedError",
    "TrainingRegime",
    "negative_sampler_kwargs",
    "resolve_device",
    "scheduled_learning_rate",
    "training_regime_resolver",
]

filtering.register()  # the exact ``sortedkey`` filterer, config.filterer's default

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


class TrainingRegime:
    """How local epochs are run: builds a PyKEEN training loop and the arguments of its ``train``.

    Subclasses are registered in :data:`training_regime_resolver` under their normalized name
    (``SLCWARegime`` -> ``slcwa``).
    """

    def build_loop(self, model: Model, triples_factory: CoreTriplesFactory, config: KGEConfig) -> TrainingLoop:
        """Create the training loop (and its optimizer) for ``model``."""
        raise NotImplementedError

    def train_kwargs(self, config: KGEConfig, device: torch.device) -> dict[str, Any]:
        """Keyword arguments for ``TrainingLoop.train`` common to every call."""
        return {
            "batch_size": config.batch_size,  # always explicit: the automatic search is slow on CPU
            "use_tqdm": False,
            "num_workers": 0,
            "pin_memory": device.type == "cuda",
            # PyKEEN creates its checkpoint folder on every call (under the home directory by
            # default); no checkpoint is written without a name, so point it at the temp folder
            "checkpoint_directory": tempfile.gettempdir(),
        }


def negative_sampler_kwargs(config: KGEConfig) -> dict[str, Any]:
    """Keyword arguments of the configured PyKEEN negative sampler.

    :raises ConfigError: for an unknown sampler, or a non-default corruption scheme the sampler
        cannot take.
    """
    try:
        sampler_cls = negative_sampler_resolver.lookup(config.negative_sampler)
    except (KeyError, ValueError):
        raise ConfigError(
            f"negative-sampler {config.negative_sampler!r} is not one of "
            f"{sorted(negative_sampler_resolver.lookup_dict)}"
        ) from None
    kwargs: dict[str, Any] = {
        "num_negs_per_pos": config.num_negs_per_pos,
        "filtered": config.filtered_negatives,
        "filterer": config.filterer if config.filtered_negatives else None,
    }
    if "corruption_scheme" in inspect.signature(sampler_cls.__init__).parameters:
        kwargs["corruption_scheme"] = config.corruption_sides
    elif config.corruption_scheme != KGEConfig.corruption_scheme:
        raise ConfigError(f"negative-sampler {config.negative_sampler!r} takes no corruption-scheme")
    return kwargs


#: Optimizers given ``fused=True``: torch's fused kernel (one pass over each parameter, on CPU too)
#: computes the same Adam step as the default per-tensor loop, ~5x faster on a 14.5k x 512 entity
#: table, where the default loop took ~28 % of a Fed3 ComplEx epoch (results/bench_epoch/).
FUSED_OPTIMIZERS = frozenset({"adam", "adamw"})


def optimizer_kwargs(config: KGEConfig) -> dict[str, Any]:
    """The optimizer's keyword arguments: the learning rate, and ``fused`` for :data:`FUSED_OPTIMIZERS`."""
    kwargs: dict[str, Any] = {"lr": config.learning_rate}
    if optimizer_resolver.normalize(config.optimizer) in FUSED_OPTIMIZERS:
        kwargs["fused"] = True
    return kwargs


def densify_gradient(parameter: torch.Tensor) -> None:
    """A post-accumulate-grad hook: the summed sparse gradient of a batch becomes the dense one the
    (dense) optimizer step reads."""
    if parameter.grad is not None and parameter.grad.is_sparse:
        parameter.grad = parameter.grad.to_dense()


def sum_entity_gradients_sparsely(model: Model) -> None:
    """Make the entity table's lookups give sparse gradients, densified once per backward pass.

    Our own because PyKEEN's embeddings give dense gradients: every lookup of a batch (heads,
    tails and each side's candidates: six for the entity table in the shared-negatives loop)
    allocates a zero-filled ``num_entities x dim`` gradient and adds it to the others, ~45 % of a
    Fed3 ComplEx epoch. Sparse lookups keep each contribution as its rows; :func:`densify_gradient`
    sums them into one dense gradient before the optimizer step, so the step (dense Adam, every
    row's moments decaying) is the one it was. Only the summation order of a row's contributions
    changes (float rounding).
    """
    for representation in model.entity_representations:
        embeddings = getattr(representation, "_embeddings", None)
        if isinstance(embeddings, torch.nn.Embedding) and not embeddings.sparse:
            embeddings.sparse = True
            embeddings.weight.register_post_accumulate_grad_hook(densify_gradient)


class SLCWARegime(TrainingRegime):
    """PyKEEN's sLCWA loop: sampled negatives (FedE's regime)."""

    def build_loop(self, model: Model, triples_factory: CoreTriplesFactory, config: KGEConfig) -> TrainingLoop:
        return SLCWATrainingLoop(
            model=model,
            triples_factory=triples_factory,
            optimizer=config.optimizer,
            optimizer_kwargs=optimizer_kwargs(config),
            negative_sampler=config.negative_sampler,
            negative_sampler_kwargs=negative_sampler_kwargs(config),
            # the sub-batch/slice search probes memory with extra forward passes; batch is fixed
            automatic_memory_optimization=False,
        )


class SharedNegativesRegime(TrainingRegime):
    """sLCWA with negatives shared across each batch (:mod:`client.kge.shared_negatives`).

    Same loss (the model's: the ``loss`` key), same optimizer and filtering as :class:`SLCWARegime`; each batch
    draws ``num_negs_per_pos`` candidates (split over the corrupted sides) scored against every
    positive through a distance matrix / matrix product: ~10x less work per batch on CPU.
    """

    def build_loop(self, model: Model, triples_factory: CoreTriplesFactory, config: KGEConfig) -> TrainingLoop:
        if config.negative_sampler != KGEConfig.negative_sampler:
            raise ConfigError(
                f"training-loop 'sharednegatives' draws its own uniform negatives; "
                f"negative-sampler {config.negative_sampler!r} does not apply"
            )
        if "relation" in config.corruption_sides:
            raise ConfigError("training-loop 'sharednegatives' corrupts heads and/or tails only")
        return SharedNegativesTrainingLoop(
            model=model,
            triples_factory=triples_factory,
            optimizer=config.optimizer,
            optimizer_kwargs=optimizer_kwargs(config),
            corruption_sides=config.corruption_sides,
            num_negs_per_pos=config.num_negs_per_pos,
            filtered=config.filtered_negatives,
            automatic_memory_optimization=False,
        )


#: Training regimes by name (``config.training_loop``).
training_regime_resolver: ClassResolver[TrainingRegime] = ClassResolver.from_subclasses(
    base=TrainingRegime, suffix="Regime", default=SLCWARegime
)


def scheduled_learning_rate(config: KGEConfig, epoch: int) -> float:
    """The learning rate of a party's epoch ``epoch`` (0-based, counted across rounds and resumes):
    ``learning_rate * lr_decay ** epoch`` (the ``lr-decay`` key; the one place of the rule)."""
    return config.learning_rate * config.lr_decay**epoch


class EpochLearningRate(TrainingCallback):
    """Give every optimizer step of one :meth:`LocalTrainer.train` call the learning rate of the party's
    epoch it belongs to (:func:`scheduled_learning_rate`), set on each of the optimizer's parameter groups
    before the step.

    Our own rather than PyKEEN's ``lr_scheduler`` (a torch scheduler the loop steps with
    ``scheduler.step(epoch=loop_epoch)`` after each epoch), because that one counts the wrong epochs here:
    (1) its epoch is the loop's own ``_epoch``, which a trainer restored from a private state (a resumed run,
    a Flower ClientApp's fresh process) starts again at 0 while the party's ``epochs_done`` says otherwise,
    so the schedule would restart; (2) with ``keep-optimizer-state = false`` every call trains with
    ``continue_training=False``, for which PyKEEN rebuilds the optimizer from the old one's *current*
    (already decayed) learning rate and a fresh scheduler whose base is that rate, still stepped with the
    loop's epoch number, so the decay compounds across calls (probed with ``ExponentialLR(gamma=0.5)``, two
    epochs per call: the 6th epoch ran at 2**-11, not 2**-5); (3) its ``step(epoch=...)`` is torch's
    deprecated form. The party's epoch count is what resume restores (``meta/epochs_done``), so the rate is
    computed from it and needs no state of its own.

    :param config: the trainer's config (``learning_rate``, ``lr_decay``).
    :param first_epoch: the party's epoch count when the call starts (``LocalTrainer.epochs_done``).
    :param first_loop_epoch: the loop's number (1-based, PyKEEN's) of the call's first epoch (``loop._epoch + 1``).
    """

    def __init__(self, config: KGEConfig, first_epoch: int, first_loop_epoch: int) -> None:
        super().__init__()
        self.config = config
        self.first_epoch = first_epoch
        self.first_loop_epoch = first_loop_epoch

    def on_batch(self, epoch: int, batch: Any, batch_loss: float, **kwargs: Any) -> None:
        """After each (sub-)batch's backward pass and before the optimizer's step (PyKEEN's ``post_batch``):
        set the learning rate of the party's epoch that loop epoch ``epoch`` is. Each batch rather than once an
        epoch because PyKEEN has no pre-epoch hook, and the loop may have just rebuilt its optimizer
        (``continue_training=False``); it is a float per parameter group."""
        rate = scheduled_learning_rate(self.config, self.first_epoch + epoch - self.first_loop_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = rate


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
