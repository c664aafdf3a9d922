"""The one documented configuration of local KGE training.

Flower's run config (``[tool.flwr.app.config]`` in ``pyproject.toml`` plus ``--run-config``
overrides) uses kebab-case keys; :meth:`KGEConfig.from_run_config` maps them onto the snake_case
fields below. Keys that belong to the federation rather than to KGE training are listed in
:data:`KNOWN_NON_KGE_KEYS` and skipped; any other unknown key fails, naming it, so that a typo
never silently falls back to a default.

Defaults: FedE's model, loss and local schedule (Chen et al., IJCKG 2021: TransE, dim 128, 3 local
epochs of batch 512 at Adam lr 1e-3, 256 filtered negatives per positive, self-adversarial
negative sampling loss with temperature 1.0 and margin (gamma) 10), in the shared-negatives
regime, with validation every round and a stop after 3 checks without a better MRR.

Named presets of these keys (``--preset NAME``): :mod:`client.kge.presets`.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from client.kge.early_stopping import STOPPING_RULES
from client.kge.refinement_config import REFINEMENT_REGISTRY_KEYS
from client.kge.registry import OTHER_KEYS, ConfigError, Key, coerce, key_field, keys_of, type_ok
from client.kge.settings import FEDERATION_KEYS
from simskip_core.errors import shown

__all__ = [
    "KGE_KEYS",
    "KNOWN_NON_KGE_KEYS",
    "LOSSES",
    "PAPER_MODELS",
    "ConfigError",
    "KGEConfig",
    "add_set_option",
    "parse_set_options",
    "to_kebab",
    "to_snake",
]

#: The four models of FedE's paper (Chen et al., 2021), in its order: the grid's models, and the
#: order of its table and of the benchmarks that compare models.
PAPER_MODELS = ("TransE", "RotatE", "DistMult", "ComplEx")

#: The values of the ``loss`` key: names of PyKEEN's ``pykeen.losses.loss_resolver`` whose sLCWA scoring
#: (``process_slcwa_scores``) takes pre-filtered negatives, which both training loops pass, and which need
#: no parameter beyond ``margin`` / ``adversarial_temperature`` (:func:`client.kge.models.build_loss`).
LOSSES: tuple[str, ...] = (
    "nssa",
    "adversarialbcewithlogits",
    "bcewithlogits",
    "softplus",
    "crossentropy",
    "marginranking",
    "softmarginranking",
)

#: Run-config keys :meth:`KGEConfig.from_run_config` skips: those of the other owners in the registry
#: (:mod:`client.kge.registry`: the federation's, the refinement phase's, and the keys no dataclass reads).
KNOWN_NON_KGE_KEYS: frozenset[str] = frozenset(
    key.name for key in (*OTHER_KEYS, *FEDERATION_KEYS, *REFINEMENT_REGISTRY_KEYS)
)


def to_kebab(name: str) -> str:
    """``local_epochs`` -> ``local-epochs``."""
    return name.replace("_", "-")


def to_snake(key: str) -> str:
    """``local-epochs`` -> ``local_epochs``."""
    return key.replace("-", "_")


@dataclass(frozen=True)
class KGEConfig:
    """Hyper-parameters of one party's local KGE training and of the validation schedule.

    :param model: a PyKEEN model name resolved by ``pykeen.models.model_resolver`` (``TransE``,
        ``RotatE``, ``DistMult``, ``ComplEx``, or any model whose entities are one embedding table).
    :param embedding_dim: the model's ``embedding_dim``; complex models (RotatE, ComplEx) store
        ``2 * embedding_dim`` floats per entity row (see :func:`client.kge.models.entity_dim`).
    :param local_epochs: epochs each client trains per round (FedE: 3).
    :param batch_size: positive triples per training batch (FedE: 512; always passed: PyKEEN's automatic
        batch-size search is slow and conservative on CPU).
    :param learning_rate: the optimizer's learning rate (FedE: 1e-3).
    :param lr_decay: exponential learning-rate decay per local epoch, per party: the party's epoch ``e``
        (0-based, counting every epoch the party has trained, across rounds and resumes) trains at
        ``learning_rate * lr_decay ** e`` (:func:`client.kge.regimes.scheduled_learning_rate`), in both training
        loops and whether or not ``keep_optimizer_state`` keeps the optimizer. In ``(0, 1]``; 1 (the default) is
        a constant learning rate (the optimizer is then never touched).
    :param optimizer: a torch optimizer name resolved by ``class_resolver``'s optimizer resolver.
    :param keep_optimizer_state: keep one optimizer (Adam moments) per client across rounds, as
        FedE's code does; ``False`` starts a fresh optimizer every :meth:`LocalTrainer.train` call.
    :param num_negs_per_pos: negatives per positive triple (FedE: 256).
    :param negative_sampler: a PyKEEN negative sampler name (``basic`` corrupts heads and tails).
    :param corruption_scheme: comma-separated sides the ``basic`` sampler corrupts (``head``,
        ``relation``, ``tail``). FedE's public code corrupts tails only and evaluates tails only:
        ``corruption-scheme = "tail"`` with ``eval-protocol = "fede"`` follows it; the default
        corrupts both entity sides, matching the standard (both-sides) evaluation.
    :param filtered_negatives: drop sampled negatives that are known train triples.
    :param filterer: filterer for ``filtered_negatives``: ``sortedkey`` (exact, vectorized;
        :mod:`client.kge.filtering`), or PyKEEN's ``bloom`` (~0.1 % false positives, slower) or
        ``pythonset`` (exact, a Python loop).
    :param loss: the training loss, one of :data:`LOSSES` (names of PyKEEN's
        ``pykeen.losses.loss_resolver``; built by :func:`client.kge.models.build_loss`), the same in both
        training loops. ``nssa`` (the default): FedE's self-adversarial negative sampling loss with
        ``margin`` (by FedE's rule, :func:`client.kge.models.nssa_margin`) and
        ``adversarial_temperature``. ``crossentropy`` is the softmax cross-entropy of each positive
        against its (filtered) negatives; in the ``sharednegatives`` loop one softmax holds the
        negatives of every corrupted side together (the positive at index 0, then the head- and the
        tail-corrupted candidates), as PyKEEN's ``basic`` sampler mixes both sides in one row too.
        A loss that takes a margin gets ``margin`` as given (NSSA only: FedE's rule); an adversarial one
        gets ``adversarial_temperature``; the others take neither.
    :param adversarial_temperature: self-adversarial sampling temperature (alpha), of the adversarial
        losses (``nssa``, ``adversarialbcewithlogits``).
    :param margin: the loss's margin, for losses that take one. For ``nssa`` it is FedE's gamma:
        as in FedE's code it is applied to distance-based interactions only (TransE, RotatE, ...);
        semantic-matching interactions (DistMult, ComplEx, ...) score without gamma there, so margin
        0 is used for them (see :data:`client.kge.models.MARGIN_FREE_MODELS`). The pairwise losses
        (``marginranking``, ``softmarginranking``) take it as given (PyKEEN's default is 1).
    :param entity_constrainer: ``none`` (FedE: no entity normalization; aggregated rows stay as
        averaged), ``model-default`` (PyKEEN's own, e.g. TransE's unit L2 norm), or a PyKEEN
        constrainer name (``normalize``, ``clamp_norm``, ...). Applied where the model accepts one.
    :param regularizer: ``none`` (FedE), ``model-default`` (e.g. DistMult's Lp), or a PyKEEN
        regularizer name. Applied where the model accepts one, to the representations PyKEEN's model
        class gives it to (DistMult: relation rows only; ComplEx, TransE: entity and relation rows;
        RotatE: entity rows).
    :param regularizer_weight: the weight of a named regularizer's term (PyKEEN's own default 1.0,
        with which ``lp`` over unnormalized 256-dim rows collapses training:
        ``results/tune/umls-distmult-lp-check/``). Not used by ``none`` and ``model-default``
        (which keeps the model's own kwargs, e.g. DistMult's weight 0.1).
    :param regularizer_p: the ``p`` of a named regularizer that takes one (``lp``, ``powersum``):
        2 is L2, 3 is N3 (Lacroix et al., 2018). Not used by ``none`` and ``model-default``.
    :param regularize_entities: also apply the named ``regularizer`` (its weight and ``p``) to the
        entity rows of a model whose class regularizes only its relation rows (DistMult); a model
        whose entity rows the regularizer already covers is unchanged. Needs a named regularizer.
    :param entity_dropout: the probability with which each coordinate of an entity row is zeroed (and the
        rest scaled by ``1 / (1 - p)``) where training looks the row up (PyKEEN's ``Representation``
        ``dropout``, after its regularizer has seen the row); evaluation, the exchanged rows and SimSkip see the
        rows without it. LibKGE's FB15k-237 DistMult and ComplEx recipes rely on it (entity dropout 0.37-0.46,
        relation 0.28-0.36, with negligible Lp weights). In ``[0, 1)``; 0 (the default) adds no dropout.
    :param relation_dropout: the same for relation rows (every relation table of the model).
    :param reciprocal_relations: LibKGE's ``reciprocal_relations_model``, built on PyKEEN's inverse triples: the
        model is built on the party's train triples re-created with ``create_inverse_triples=True``
        (:func:`client.kge.models.model_triples_factory`), so every relation ``r`` has a second row ``r^-1`` in
        each relation table; tails of ``(h, r, ?)`` are scored with ``r`` and heads of ``(?, r, t)`` as the
        tails of ``(t, r^-1, ?)`` (PyKEEN's ``predict_t`` / ``predict_h``), in training, evaluation and
        SimSkip's downstream protocols alike. The relation tables (twice as many rows) stay private; the
        exchanged entity rows are unchanged. ``sharednegatives`` scores each corrupted side against its own
        positive (``(h, r, t)`` for tails, ``(t, r^-1, h)`` for heads) and averages the sides' losses, so
        ``corruption-scheme = "tail"`` trains the forward rows only; ``slcwa`` is PyKEEN's sLCWA loop on the
        inverse-triples factory: forward and inverse triples, each corrupted as ``corruption-scheme`` says
        (``tail`` then trains both directions, as PyKEEN's pipeline with inverse triples does).
    :param training_loop: the local training regime, a key of
        :data:`client.kge.regimes.training_regime_resolver`: ``slcwa`` (PyKEEN's sLCWA loop,
        FedE's regime) or ``sharednegatives`` (the default; sLCWA whose ``num_negs_per_pos`` negatives,
        split over the corrupted sides, are shared by the whole batch and scored as a distance
        matrix / matrix product: ~7-10x cheaper per epoch on CPU; heads/tails only, ``basic``
        uniform sampling).
    :param seed: base random seed; the same seed gives the same initial table and training.
    :param eval_every: validate every this many rounds (FedE: 5).
    :param patience: stop after this many validations without a better MRR (FedE: 15).
    :param stopping: ``overall`` (the default): one tracker of the overall valid MRR (weighted by
        valid triples) stops the run and picks one best round for every party; ``per-party``: each
        party's own tracker (same ``patience``) picks its own best round, and the federation trains
        on until every party's tracker has stopped (:mod:`client.kge.early_stopping`,
        ``docs/concepts/stopping.md``; the in-process runners and the Flower apps alike).
    :param eval_protocol: ``standard`` (both sides) or ``fede`` (tail only, FedE's code); see
        :mod:`client.kge.evaluation`.
    :param eval_batch_size: triples scored at once during evaluation.
    :param track_test: also evaluate the test split whenever valid is evaluated and report it under
        ``test-`` prefixed metric names (for time-to-accuracy curves; never used for choices).
    """

    model: str = key_field("TransE", help="a PyKEEN model name (model_resolver)", model_defining=True)
    embedding_dim: int = key_field(128, help="the model's embedding_dim", model_defining=True)
    local_epochs: int = key_field(3, help="epochs each client trains per round", model_defining=True)
    batch_size: int = key_field(512, help="positive triples per training batch", model_defining=True)
    learning_rate: float = key_field(1e-3, help="the optimizer's learning rate", model_defining=True)
    lr_decay: float = key_field(
        1.0,
        help="exponential learning-rate decay per local epoch: a party's epoch e (0-based, counted across rounds) "
        "trains at learning-rate * lr-decay ** e (1: constant)",
        model_defining=True,
    )
    optimizer: str = key_field("adam", help="a torch optimizer name (class_resolver)", model_defining=True)
    keep_optimizer_state: bool = key_field(
        True, help="keep each client's optimizer state across rounds", model_defining=True
    )
    num_negs_per_pos: int = key_field(256, help="negatives per positive triple", model_defining=True)
    negative_sampler: str = key_field("basic", help="a PyKEEN negative sampler name", model_defining=True)
    corruption_scheme: str = key_field(
        "head,tail",
        help="sides the basic sampler corrupts",
        model_defining=True,
        choices=("head", "relation", "tail"),
        multiple=True,
    )
    filtered_negatives: bool = key_field(
        True, help="drop sampled negatives that are train triples", model_defining=True
    )
    filterer: str = key_field(
        "sortedkey", help="the filterer of filtered-negatives (PyKEEN filterer name)", model_defining=True
    )
    loss: str = key_field(
        "nssa",
        help=(
            "the training loss (PyKEEN loss_resolver name): nssa (FedE's self-adversarial loss, margin by "
            "FedE's rule), adversarialbcewithlogits (self-adversarial BCE), bcewithlogits, softplus "
            "(pointwise), crossentropy (softmax of the positive against its filtered negatives; with "
            "sharednegatives both corrupted sides share one softmax), marginranking, softmarginranking "
            "(pairwise, with margin as given)"
        ),
        model_defining=True,
        choices=LOSSES,
    )
    adversarial_temperature: float = key_field(
        1.0,
        help="self-adversarial sampling temperature (alpha) of nssa and adversarialbcewithlogits",
        model_defining=True,
    )
    margin: float = key_field(
        10.0,
        help="the loss's margin: nssa's gamma of distance-based models (0 for DistMult, ComplEx, ...), "
        "the pairwise losses' margin as given",
        model_defining=True,
    )
    entity_constrainer: str = key_field(
        "none", help="none, model-default or a PyKEEN constrainer name", model_defining=True
    )
    regularizer: str = key_field("none", help="none, model-default or a PyKEEN regularizer name", model_defining=True)
    regularizer_weight: float = key_field(
        1.0,
        help="weight of a named regularizer's term (PyKEEN's default 1.0; unused by none and model-default)",
        model_defining=True,
    )
    regularizer_p: float = key_field(
        2.0,
        help="p of a named Lp / power-sum regularizer (2: L2, 3: N3; unused by none and model-default)",
        model_defining=True,
    )
    regularize_entities: bool = key_field(
        False,
        help="also apply the named regularizer to entity rows where the model regularizes relations only (DistMult)",
        model_defining=True,
    )
    entity_dropout: float = key_field(
        0.0, help="dropout on entity rows in training (LibKGE's entity_embedder.dropout; 0: none)", model_defining=True
    )
    relation_dropout: float = key_field(
        0.0,
        help="dropout on relation rows in training (LibKGE's relation_embedder.dropout; 0: none)",
        model_defining=True,
    )
    reciprocal_relations: bool = key_field(
        False,
        help="a second (inverse) row per relation: heads of (?, r, t) scored as tails of (t, r^-1, ?) "
        "(LibKGE's reciprocal_relations_model; PyKEEN's inverse triples)",
        model_defining=True,
    )
    training_loop: str = key_field(
        "sharednegatives", help="the local training regime (training_regime_resolver)", model_defining=True
    )
    seed: int = key_field(0, help="base random seed of the initial table and training", model_defining=True)
    eval_every: int = key_field(1, help="validate every this many rounds", model_defining=True)
    patience: int = key_field(
        3, help="stop after this many validations without a better MRR (a budget)", model_defining=False
    )
    stopping: str = key_field(
        "overall",
        help="what early stopping reads: overall (the weighted valid MRR; one best round for all) or per-party "
        "(each party's own valid MRR and best round; the run ends when every party has stopped)",
        model_defining=True,
        choices=STOPPING_RULES,
    )
    eval_protocol: str = key_field(
        "standard", help="both sides (standard) or tail only (fede)", model_defining=True, choices=("standard", "fede")
    )
    eval_batch_size: int = key_field(256, help="triples scored at once during evaluation", model_defining=False)
    track_test: bool = key_field(
        False, help="also evaluate test, under test- metric names (never used for choices)", model_defining=False
    )

    def __post_init__(self) -> None:
        for key in KGE_KEYS:
            value = getattr(self, to_snake(key.name))
            if not type_ok(value, key.type):
                raise ConfigError(
                    f"{key.name} must be {key.type.__name__}, got {shown(value)} ({type(value).__name__})"
                )
        for name in (
            "embedding_dim",
            "local_epochs",
            "batch_size",
            "num_negs_per_pos",
            "eval_every",
            "patience",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{to_kebab(name)} must be >= 1, got {shown(getattr(self, name))}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning-rate must be > 0, got {shown(self.learning_rate)}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr-decay must be in (0, 1], got {shown(self.lr_decay)}")
        if not self.adversarial_temperature >= 0:
            raise ConfigError(f"adversarial-temperature must be >= 0, got {shown(self.adversarial_temperature)}")
        if not self.margin >= 0:
            raise ConfigError(f"margin must be >= 0, got {shown(self.margin)}")
        sides = self.corruption_sides
        if not sides or not set(sides) <= {"head", "relation", "tail"} or len(set(sides)) != len(sides):
            raise ConfigError(
                "corruption-scheme must be a comma-separated subset of head,relation,tail; "
                f"got {shown(self.corruption_scheme)}"
            )
        if self.eval_protocol not in ("standard", "fede"):
            raise ConfigError(f"eval-protocol must be 'standard' or 'fede', got {shown(self.eval_protocol)}")
        for name in ("entity_dropout", "relation_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{to_kebab(name)} must be in [0, 1), got {shown(getattr(self, name))}")
        if self.regularize_entities and self.regularizer in ("none", "model-default"):
            raise ConfigError(
                "regularize-entities needs a named regularizer (e.g. powersum with regularizer-p 3: N3), "
                f"not regularizer {shown(self.regularizer)}"
            )
        for key in KGE_KEYS:  # every named choice (``loss``, ...): the key, the value and the choices
            key.check_choice(getattr(self, to_snake(key.name)))

    @property
    def corruption_sides(self) -> tuple[str, ...]:
        """``corruption_scheme`` as a tuple of side names."""
        return tuple(side.strip() for side in self.corruption_scheme.split(",") if side.strip())

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], extra_known_keys: Iterable[str] = ()) -> KGEConfig:
        """Build a config from Flower's kebab-case run config.

        :param run_config: ``context.run_config`` or any mapping with kebab-case keys.
        :param extra_known_keys: further non-KGE keys to skip besides :data:`KNOWN_NON_KGE_KEYS`.
        :returns: the config with the given values and defaults elsewhere.
        :raises ConfigError: naming every unknown key, or a value of the wrong type/range.
        """
        own = {to_kebab(spec.name): spec.name for spec in fields(cls)}
        skip = KNOWN_NON_KGE_KEYS | set(extra_known_keys)
        unknown = sorted(key for key in run_config if key not in own and key not in skip)
        if unknown:
            raise ConfigError(
                f"unknown run-config key(s) {unknown}; KGE keys are {sorted(own)}, "
                f"known federation keys are {sorted(skip)}"
            )
        values = {own[key]: _coerce(KGE_KEY_BY_NAME[key], value) for key, value in run_config.items() if key in own}
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        """The config as kebab-case run-config entries (what a run folder records)."""
        return {to_kebab(name): value for name, value in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> KGEConfig:
        """A copy with some fields changed (snake_case names)."""
        return dataclasses.replace(self, **changes)


#: The KGE keys of the registry (declared on :class:`KGEConfig`'s fields).
KGE_KEYS: tuple[Key, ...] = keys_of(KGEConfig, "kge")
KGE_KEY_BY_NAME: dict[str, Key] = {key.name: key for key in KGE_KEYS}


def _coerce(key: Key, value: Any) -> Any:
    """:func:`client.kge.registry.coerce` with the KGE owner's :class:`ConfigError`."""
    try:
        return coerce(value, key.type)
    except OverflowError:
        raise ConfigError(
            f"{key.name} must be float, got an integer too large for a float ({value.bit_length()} bits)"
        ) from None
    except TypeError:
        raise ConfigError(
            f"{key.name} must be {key.type.__name__}, got {shown(value)} ({type(value).__name__})"
        ) from None


def add_set_option(
    parser: argparse.ArgumentParser, *, dest: str = "set", help: str = "run-config override", default: Any = None
) -> None:
    """Add the repeatable ``--set KEY=VALUE`` option every command and script has (read with
    :func:`parse_set_options`).

    :param dest: the attribute the values go to (a list of ``KEY=VALUE`` strings).
    :param help: what the values set.
    :param default: the list when the option is not given (``None``: an empty list).
    """
    parser.add_argument(
        "--set", dest=dest, action="append", default=[] if default is None else default, metavar="KEY=VALUE", help=help
    )


def parse_set_options(items: Sequence[str]) -> dict[str, Any]:
    """``["local-epochs=2", "model=RotatE"]`` -> ``{"local-epochs": 2, "model": "RotatE"}``: the one
    ``--set`` parser of every command and script.

    Values are read as TOML (numbers, booleans, quoted strings); anything else is a string.

    :raises ConfigError: (a ``ValueError``) for an item without ``=``.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        # Found by tests/test_loader_fuzz.py: tomllib raises a bare ValueError (an integer of over
        # 4,300 digits) or RecursionError (deeply nested arrays) besides TOMLDecodeError, and
        # "3\nw = 1" parsed as 3, dropping the rest. A value is TOML only when it is the whole text.
        try:
            document = tomllib.loads(f"v = {raw}")
        except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
            document = {}
        values[key.strip()] = document["v"] if document.keys() == {"v"} else raw
    return values
