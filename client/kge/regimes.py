"""How a party's local epochs run: the training regimes, their PyKEEN loops and optimizer, and the
learning-rate schedule (:class:`client.kge.training.LocalTrainer` picks one by ``config.training_loop``).

The training regime (PyKEEN's sLCWA loop, ``slcwa``, or sLCWA with negatives shared across each
batch, ``sharednegatives``) is picked from :data:`training_regime_resolver`, so faster regimes can be
added as subclasses without touching the trainer.
"""

from __future__ import annotations

import inspect
import tempfile
from typing import Any

import torch
from class_resolver import ClassResolver
from class_resolver.contrib.torch import optimizer_resolver
from pykeen.models import Model
from pykeen.sampling import negative_sampler_resolver
from pykeen.training import SLCWATrainingLoop, TrainingCallback, TrainingLoop
from pykeen.triples import CoreTriplesFactory

from client.kge import filtering
from client.kge.config import ConfigError, KGEConfig
from client.kge.shared_negatives import SharedNegativesTrainingLoop

__all__ = [
    "FUSED_OPTIMIZERS",
    "EpochLearningRate",
    "SLCWARegime",
    "SharedNegativesRegime",
    "TrainingRegime",
    "negative_sampler_kwargs",
    "optimizer_kwargs",
    "scheduled_learning_rate",
    "sum_entity_gradients_sparsely",
    "training_regime_resolver",
]

# the exact ``sortedkey`` filterer, config.filterer's default: registered wherever a regime (or the run
# config's choice check, client.kge.run_config) can name it
filtering.register()


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
    """Give every optimizer step of one :meth:`client.kge.training.LocalTrainer.train` call the learning rate of the party's
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
    :param first_epoch: the party's epoch count when the call starts (``client.kge.training.LocalTrainer.epochs_done``).
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
