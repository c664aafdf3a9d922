"""PyKEEN models chosen by name, and access to their single entity embedding table.

FedE exchanges entity rows only, so a usable model keeps its entities in exactly one
:class:`pykeen.nn.Embedding` (TransE, RotatE, DistMult, ComplEx, TransH, SimplE is not: it has
two). Rows are exchanged as stored: complex models keep ``(num_entities, 2 * dim)`` float32 real
pairs, which is also what the server averages (averaging real pairs is averaging the complex
numbers).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from pykeen.losses import Loss, NSSALoss, loss_resolver
from pykeen.models import Model, model_resolver
from pykeen.nn import Embedding
from pykeen.nn.representation import constrainer_resolver
from pykeen.regularizers import regularizer_resolver
from pykeen.triples import CoreTriplesFactory
from pykeen.utils import NoRandomSeedNecessary

from client.kge.config import ConfigError, KGEConfig

__all__ = [
    "LOSS_PARAMETERS",
    "MARGIN_FREE_MODELS",
    "RealViewDropout",
    "UnsupportedModelError",
    "build_loss",
    "build_model",
    "entity_dim",
    "entity_embedding",
    "initial_entity_table",
    "loss_margin",
    "model_triples_factory",
    "nssa_margin",
    "relation_embeddings",
    "relation_rows",
    "seeded",
]

#: Models whose FedE score has no gamma (semantic matching): the NSSA margin is 0 for them.
MARGIN_FREE_MODELS: frozenset[str] = frozenset({"distmult", "complex", "rescal", "tucker", "simple", "hole"})

#: Initializers replacing a model's own when it is trained without its regularizer (FedE trains
#: without one). PyKEEN's ComplEx draws entities and relations from N(0, 1) and relies on its Lp
#: regularizer to shrink them: unregularized, a 128-dim row starts with norm ~16 (TransE's ~1.4),
#: scores start in the tens and the self-adversarial loss saturates (Fed3 and Kinships stayed at
#: random MRR). Xavier-normal gives it the scale of the other models.
UNREGULARIZED_INITIALIZERS: dict[str, str] = {"complex": "xavier_normal"}

#: Config values that keep the model's own constrainer / regularizer.
MODEL_DEFAULT = "model-default"
NONE = "none"


class UnsupportedModelError(ValueError):
    """The model is unknown to PyKEEN or does not keep its entities in one embedding table."""


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards.

    PyKEEN's samplers and initializers draw from torch's global generator; forking it keeps a
    trainer's randomness reproducible without disturbing the host process (e.g. a ClientApp).

    :param seed: the seed for the block.
    :param device: a CUDA device whose generator is forked and seeded too.
    """
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def nssa_margin(config: KGEConfig) -> float:
    """The NSSA margin for the configured model (0 for :data:`MARGIN_FREE_MODELS`).

    ``margin`` is FedE's gamma, which FedE applies to a sum over dimensions: TransE's L1 distance
    (PyKEEN's TransE uses the same) and, for RotatE, the sum of the complex moduli
    ``sum_i |h_i r_i - t_i|``. PyKEEN's RotatE scores the L2 norm of that complex vector, which is
    smaller by about ``2 / sqrt(pi * dim)`` for random rows (``E|z_i| = sigma sqrt(pi/2)`` against
    ``E||z|| = sigma sqrt(2 dim)``), so gamma is scaled by that factor (10 -> 1.0 at dim 128). With
    the unscaled 10, RotatE stayed at random MRR on Kinships and Fed3; with 1.0 it learns.
    """
    name = _normalized_model_name(config.model)
    if name in MARGIN_FREE_MODELS:
        return 0.0
    return config.margin * L2_MARGIN_SCALE[name](config.embedding_dim) if name in L2_MARGIN_SCALE else config.margin


#: Models whose PyKEEN distance is an L2 norm where FedE's gamma applies to an L1-type sum:
#: dim -> the factor turning FedE's gamma into the margin of PyKEEN's score (see :func:`nssa_margin`).
L2_MARGIN_SCALE = {"rotate": lambda dim: 2.0 / math.sqrt(math.pi * dim)}


def loss_margin(config: KGEConfig, loss_cls: type[Loss]) -> float:
    """The ``margin`` of a loss that takes one: FedE's rule (:func:`nssa_margin`) for NSSA, else ``config.margin``.

    FedE's gamma is an offset of the score inside NSSA's sigmoids, absent from semantic-matching scores;
    a pairwise margin (``marginranking``) separates positive from negative scores for every model, so it
    is taken as given.
    """
    return nssa_margin(config) if issubclass(loss_cls, NSSALoss) else config.margin


#: The loss ``__init__`` parameters the config sets, by parameter name -> their value for the config and
#: the loss class: a loss gets those its signature names (:func:`build_loss`). PyKEEN names the
#: self-adversarial temperature ``adversarial_temperature`` on :class:`~pykeen.losses.NSSALoss` and
#: ``inverse_softmax_temperature`` on its other :class:`~pykeen.losses.AdversarialLoss` subclasses (the
#: same alpha: NSSA passes it on as the latter).
LOSS_PARAMETERS: dict[str, Callable[[KGEConfig, type[Loss]], float]] = {
    "margin": loss_margin,
    "adversarial_temperature": lambda config, _: config.adversarial_temperature,
    "inverse_softmax_temperature": lambda config, _: config.adversarial_temperature,
}


def build_loss(config: KGEConfig) -> Loss:
    """The configured training loss (``config.loss``), resolved by PyKEEN's ``loss_resolver``.

    The default ``nssa`` is FedE's loss: ``NSSALoss(margin=nssa_margin(config),
    adversarial_temperature=config.adversarial_temperature)``. Every loss gets the entries of
    :data:`LOSS_PARAMETERS` its signature names, and nothing else (PyKEEN's defaults for the rest).

    :param config: the KGE config.
    :returns: the loss module, used by both training loops through ``model.loss``.
    :raises ConfigError: naming ``loss`` for a name PyKEEN does not know.
    """
    try:
        loss_cls = loss_resolver.lookup(config.loss)
    except (KeyError, ValueError):
        raise ConfigError(
            f"key 'loss': {config.loss!r} is not one of {', '.join(sorted(loss_resolver.lookup_dict))}"
        ) from None
    accepted = inspect.signature(loss_cls.__init__).parameters
    kwargs = {name: rule(config, loss_cls) for name, rule in LOSS_PARAMETERS.items() if name in accepted}
    return loss_resolver.make(loss_cls, kwargs)


def _normalized_model_name(name: str) -> str:
    try:
        return model_resolver.normalize_cls(model_resolver.lookup(name))
    except (KeyError, ValueError) as error:
        raise UnsupportedModelError(f"unknown PyKEEN model {name!r}: {error}") from None


def _regularizer_kwargs(config: KGEConfig) -> dict[str, float]:
    """``regularizer-weight`` and ``regularizer-p`` for the named regularizer, each where its class takes it."""
    accepted = inspect.signature(regularizer_resolver.lookup(config.regularizer).__init__).parameters
    values = {"weight": config.regularizer_weight, "p": config.regularizer_p}
    return {name: value for name, value in values.items() if name in accepted}


def _optional_component_kwargs(model_cls: type[Model], config: KGEConfig) -> dict[str, object]:
    """Constrainer / regularizer overrides for the keyword arguments the model class accepts."""
    accepted = inspect.signature(model_cls.__init__).parameters
    kwargs: dict[str, object] = {}
    choices = (
        ("entity_constrainer", config.entity_constrainer, constrainer_resolver),
        ("regularizer", config.regularizer, regularizer_resolver),
    )
    for parameter, choice, resolver in choices:
        if choice == MODEL_DEFAULT or parameter not in accepted:
            continue
        if choice == NONE:
            kwargs[parameter] = None
            continue
        try:
            resolver.lookup(choice)
        except (KeyError, ValueError):
            raise ConfigError(
                f"{parameter.replace('_', '-')} {choice!r} is neither 'none', 'model-default' "
                f"nor one of {sorted(resolver.lookup_dict)}"
            ) from None
        kwargs[parameter] = choice
        if parameter == "regularizer" and f"{parameter}_kwargs" in accepted:
            kwargs["regularizer_kwargs"] = _regularizer_kwargs(config)
    initializer = UNREGULARIZED_INITIALIZERS.get(_normalized_model_name(config.model))
    if initializer is not None and config.regularizer == NONE:
        for parameter in ("entity_initializer", "relation_initializer"):
            if parameter in accepted:
                kwargs[parameter] = initializer
    return kwargs


class RealViewDropout(torch.nn.Dropout):
    """:class:`torch.nn.Dropout` that also takes complex rows (RotatE, ComplEx), dropping each real
    coordinate of their real view independently, as LibKGE does on ComplEx's stored real pairs. Our own
    because torch's dropout has no complex kernel (``bernoulli_`` is not implemented for ComplexFloat)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_complex():
            return super().forward(x)
        return torch.view_as_complex(super().forward(torch.view_as_real(x)))


def model_triples_factory(config: KGEConfig, triples_factory: CoreTriplesFactory) -> CoreTriplesFactory:
    """The factory a party's model is built on and PyKEEN's own training loop is given: ``triples_factory``
    itself, or with ``reciprocal-relations`` the same triples re-created with PyKEEN's
    ``create_inverse_triples=True`` (the one place the inverse factory is made).

    PyKEEN then sizes the relation tables ``2 * num_relations`` (``model.use_inverse_triples``; its
    ``relation_inverter`` puts relation ``r``'s row at ``2r`` and its inverse's at ``2r + 1``) and its sLCWA
    instances add the inverse triple ``(t, r^-1, h)`` of every train triple. The factory's ``mapped_triples``
    are the party's own, in its own relation ids, so everything else that reads them is unchanged.

    :param config: the KGE config (``reciprocal_relations``).
    :param triples_factory: the party's train triples (``kg_datasets`` makes none with inverse triples).
    :returns: ``triples_factory`` (the same object) without the key or where it already creates inverse
        triples; else the inverse-triples factory over the same ids.
    """
    if not config.reciprocal_relations or triples_factory.create_inverse_triples:
        return triples_factory
    return triples_factory.clone_and_exchange_triples(
        mapped_triples=triples_factory.mapped_triples, create_inverse_triples=True
    )


def relation_rows(model: Model, relations: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """The rows of ``model``'s relation tables that hold the graph's relations ``relations`` (its own ids).

    A model without inverse triples keeps relation ``r`` in row ``r``; a reciprocal one (built on
    :func:`model_triples_factory`'s inverse triples) in the row PyKEEN's ``relation_inverter`` maps ``r`` to,
    and ``r^-1`` in the next one (``inverse``).

    :param model: the PyKEEN model.
    :param relations: 1-D long tensor of the graph's relation ids.
    :param inverse: the rows of the inverse relations ``r^-1`` (reciprocal models only).
    :returns: 1-D long tensor of row ids, one per entry of ``relations`` (``relations`` itself for a model
        without inverse triples).
    :raises ValueError: for ``inverse`` on a model without inverse relations.
    """
    if not model.use_inverse_triples:
        if inverse:
            raise ValueError(f"{type(model).__name__} has no inverse relations (built without reciprocal-relations)")
        return relations
    return model.relation_inverter.map(batch=relations.reshape(-1, 1), index=0, invert=inverse).reshape(-1)


def build_model(config: KGEConfig, triples_factory: CoreTriplesFactory, device: torch.device | None = None) -> Model:
    """Instantiate the configured PyKEEN model with the configured loss (:func:`build_loss`; FedE's NSSA by
    default) on ``triples_factory``'s ids.

    The caller seeds (see :func:`seeded`); the model's own initializers run here. With ``reciprocal-relations``
    the model is built on :func:`model_triples_factory`'s inverse-triples factory (twice the relation rows).

    :param config: the KGE config.
    :param triples_factory: defines ``num_entities`` / ``num_relations`` of the model.
    :param device: where the model lives (CPU by default).
    :returns: the model, with exactly one entity embedding table (checked).
    :raises UnsupportedModelError: for unknown names, models without a single entity table, or a model that
        ignores inverse triples where ``reciprocal-relations`` asks for them.
    """
    _normalized_model_name(config.model)
    model_cls = model_resolver.lookup(config.model)
    model = model_resolver.make(
        model_cls,
        triples_factory=model_triples_factory(config, triples_factory),
        embedding_dim=config.embedding_dim,
        loss=build_loss(config),
        # seeding is done by the caller through ``seeded`` (a forked RNG), not globally by PyKEEN
        random_seed=NoRandomSeedNecessary,
        **_optional_component_kwargs(model_cls, config),
    )
    entities = entity_embedding(model)  # fail early for models FedE cannot federate
    if config.reciprocal_relations and not model.use_inverse_triples:
        raise UnsupportedModelError(f"{type(model).__name__} does not take inverse triples (reciprocal-relations)")
    if config.regularize_entities and entities.regularizer is None:  # DistMult's class: relations only
        entities.regularizer = regularizer_resolver.make(config.regularizer, **_regularizer_kwargs(config))
    # Set on the built tables rather than passed as each model's *_representations_kwargs: the models name
    # and shape those kwargs differently, and Representation.forward applies ``dropout`` the same for all.
    for table, p in (
        (entities, config.entity_dropout),
        *((r, config.relation_dropout) for r in relation_embeddings(model)),
    ):
        if p > 0:
            table.dropout = RealViewDropout(p)
    return model.to(device or torch.device("cpu"))


def entity_embedding(model: Model) -> Embedding:
    """The model's one entity embedding table (rows are entities in the model's id order).

    :raises UnsupportedModelError: if the entities are not exactly one :class:`pykeen.nn.Embedding`.
    """
    representations = list(model.entity_representations)
    if len(representations) != 1 or not isinstance(representations[0], Embedding):
        kinds = [type(r).__name__ for r in representations]
        raise UnsupportedModelError(
            f"{type(model).__name__} keeps its entities in {kinds}; FedE needs exactly one Embedding table"
        )
    return representations[0]


def relation_embeddings(model: Model) -> list[Embedding]:
    """The model's relation embedding tables (each indexed by relation id).

    :raises UnsupportedModelError: if a relation representation is not an :class:`Embedding`.
    """
    representations = list(model.relation_representations)
    if not all(isinstance(r, Embedding) for r in representations):
        kinds = [type(r).__name__ for r in representations]
        raise UnsupportedModelError(f"{type(model).__name__} relation representations {kinds} are not all Embeddings")
    return representations


def _tiny_factory(num_entities: int) -> CoreTriplesFactory:
    """A one-relation factory with ``num_entities`` ids (models need a factory to size tables)."""
    tail = 1 if num_entities > 1 else 0
    return CoreTriplesFactory.create(
        mapped_triples=torch.tensor([[0, 0, tail]], dtype=torch.long),
        num_entities=num_entities,
        num_relations=1,
    )


@functools.lru_cache(maxsize=64)
def _entity_dim_cached(config: KGEConfig) -> int:
    with seeded(0):
        model = build_model(config, _tiny_factory(2))
    return int(entity_embedding(model)._embeddings.weight.shape[1])


def entity_dim(config: KGEConfig) -> int:
    """Width of one entity row as stored and exchanged (``2 * embedding_dim`` for complex models)."""
    return _entity_dim_cached(config)


def initial_entity_table(config: KGEConfig, num_entities: int, seed: int) -> np.ndarray:
    """The model's own initial entity rows, what the server starts FedE with.

    :param config: the KGE config (model, dim).
    :param num_entities: rows of the table (the union of the clients' entities).
    :param seed: the seed of the initializer; the same seed gives the same table.
    :returns: float32 array, shape ``(num_entities, entity_dim(config))``.
    """
    if num_entities < 1:
        raise ValueError(f"num_entities must be >= 1, got {num_entities}")
    with seeded(seed):
        model = build_model(config, _tiny_factory(num_entities))
    table = entity_embedding(model)._embeddings.weight.detach().cpu().numpy()
    return np.ascontiguousarray(table, dtype=np.float32)
