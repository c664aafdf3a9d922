"""Seconds per local epoch of this project's trainer on one client, alone or against PyKEEN's stock loop (JSON).

The trainer is :class:`~client.kge.training.LocalTrainer`.

Usage (from the project root)::

    python scripts/bench_epoch.py --data ../shared/data/FB15k-237-Fed3 --client 0 --epochs 1

Any KGE run-config key can be overridden with ``--set key=value`` (e.g. ``--set model=RotatE``), after
``--preset NAME``. The figures are the wall and CPU time of ``LocalTrainer.train`` only (data loading
and model construction are timed separately), plus the process's peak RSS and the 1-minute load
average (wall time is only meaningful on a quiet machine).

``--against-pykeen`` compares, on the same client graph and in the same process, each recipe
(``--recipe NAME=key=value,key=value``, on top of ``--preset`` / ``--set``; ``preset=NAME`` inside a
recipe applies that preset first) trained ``--epochs`` epochs by this project's ``LocalTrainer`` with
the same model trained by PyKEEN's stock loop (:data:`PYKEEN_COUNTERPARTS`: ``SLCWATrainingLoop`` with
the ``basic`` sampler for the sampled-negative regimes, ``LCWATrainingLoop`` for a loss over all
entities). Both sides start from the same initial weights (the trainer's, built from the recipe's
seed), with the same model class and kwargs, the same loss (:func:`client.kge.models.build_loss`), the
same optimizer and learning rate, the same batch size, the same number of negatives per positive and
corrupted sides, filtered negatives when the recipe filters, the same torch threads; PyKEEN gets its
batch size (no automatic batch-size or sub-batch search), no evaluation inside the loop and no tqdm.
For each recipe and seed (``--seeds N``: the recipe's seed, +1, ...) the report holds the seconds of
every epoch of each side (wall and CPU), the positives and negatives each side's loss saw per epoch
(counted at the loss), and both models' filtered valid metrics after the last epoch (this project's
evaluator, the recipe's protocol); then per recipe the median seconds per epoch of each side, the
ratio PyKEEN / ours, and the valid MRR's mean and standard deviation over seeds per side. What differs
unavoidably between the two sides is listed in ``differences``.

``--time-to-pykeen-valid`` adds time to the same accuracy: per recipe and seed, after both fixed-epoch
runs, a fresh ``LocalTrainer`` from the same initial weights trains one epoch at a time, validated after
each, until its valid MRR reaches that seed's PyKEEN valid MRR or ``--max-epochs`` (default
:data:`DEFAULT_MAX_EPOCHS_FACTOR` x ``--epochs``). Each seed's ``ours_to_pykeen_valid`` holds the epochs
and training seconds (wall and CPU; validation timed apart) ours needed, PyKEEN's training seconds for its
``--epochs`` and the ratio PyKEEN / ours, or, not reached, the best valid MRR within the cap; each recipe's
``time_to_pykeen_valid`` sums the seeds. Example (UMLS, seconds)::

    python scripts/bench_epoch.py --data UMLS --num-clients 3 --client 0 --epochs 3 --seeds 2 --against-pykeen \\
        --recipe distmult=model=DistMult,loss=crossentropy,num-negs-per-pos=64 --out /tmp/epoch-umls.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.kge.config import add_set_option
from server.sim_resources import cpu_model

if TYPE_CHECKING:  # the heavy imports wait until the arguments are checked
    import torch
    from pykeen.models import Model
    from pykeen.training import TrainingLoop
    from pykeen.triples import CoreTriplesFactory

    from client.kge.config import KGEConfig

__all__ = [
    "DIFFERENCES",
    "PYKEEN_COUNTERPARTS",
    "LossCounter",
    "RecipeError",
    "check_counterpart",
    "compare",
    "main",
    "parse_recipe",
    "pykeen_loop",
    "recipe_run_config",
    "train_to_valid_mrr",
]

#: PyKEEN's default filterer of ``filtered=True`` (its ``BasicNegativeSampler``'s), used on the PyKEEN
#: side unless ``--pykeen-filterer`` names another (e.g. the recipe's ``sortedkey``).
PYKEEN_DEFAULT_FILTERER = "bloom"

#: Two valid MRR means are "within seed noise" when they differ by at most this many standard errors
#: of the difference (``sqrt(std_ours^2 / n + std_pykeen^2 / n)``, sample std over ``n >= 2`` seeds).
NOISE_STANDARD_ERRORS = 2.0


class RecipeError(ValueError):
    """A ``--recipe`` that is not ``NAME=key=value[,key=value...]``, or a recipe name given twice."""


# --- recipes ----------------------------------------------------------------------------------


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``"distmult=model=DistMult,loss=crossentropy"`` -> ``("distmult", {"model": "DistMult", ...})``.

    Items are separated by commas; an item without ``=`` continues the previous value (so
    ``corruption-scheme=head,tail`` keeps its comma). Values are read as ``--set`` values (TOML
    numbers and booleans, else strings). ``preset=NAME`` is kept as the ``preset`` entry.

    :raises RecipeError: naming the recipe for an empty name, no ``=`` after the name, or a first
        item without ``=``.
    """
    from client.kge.config import parse_set_options

    name, sep, body = text.partition("=")
    if not sep or not name.strip() or not body.strip():
        raise RecipeError(f"--recipe expects NAME=key=value[,key=value...], got {text!r}")
    items: list[str] = []
    for piece in body.split(","):
        if "=" in piece:
            items.append(piece.strip())
        elif items:
            items[-1] += "," + piece.strip()
        else:
            raise RecipeError(f"--recipe {name.strip()!r}: {piece!r} is not key=value")
    return name.strip(), parse_set_options(items)


def recipe_run_config(base_preset: str | None, base_sets: Sequence[str], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe's run config: ``--preset``, then ``--set``, then the recipe's ``preset``, then its keys.

    :raises client.kge.config.ConfigError: for an unknown preset name.
    """
    from client.kge.config import parse_set_options
    from client.kge.presets import preset

    values = preset(base_preset) | parse_set_options(base_sets)
    own = dict(recipe)
    return values | preset(own.pop("preset", None)) | own


# --- counting and timing -----------------------------------------------------------------------


class LossCounter:
    """Counts what a loss module scores, per epoch: positives, negatives sampled and negatives kept.

    Wraps the loss instance's ``process_slcwa_scores`` / ``process_lcwa_scores`` (both training loops
    of this comparison hand every batch's scores to one of them): for sLCWA a batch's positives are
    its positive scores, the sampled negatives the batch filter's entries (or the negative scores
    without a filter), the kept ones the negative scores the loss receives; for LCWA the positives are
    the label matrix's ones and the negatives its zeros. A Python call and a few ``numel`` per batch.
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        self.epochs: list[dict[str, int]] = []
        self.new_epoch()
        for method in ("process_slcwa_scores", "process_lcwa_scores"):
            setattr(loss, method, self._counted(method, getattr(loss, method)))

    def new_epoch(self) -> None:
        """Start counting a new epoch."""
        self.epochs.append({"positives": 0, "negatives_sampled": 0, "negatives_kept": 0})

    def _counted(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts = self.epochs[-1]
            if method == "process_slcwa_scores":
                negatives = kwargs["negative_scores"]
                batch_filter = kwargs.get("batch_filter")
                counts["positives"] += int(kwargs["positive_scores"].shape[0])
                counts["negatives_sampled"] += int((negatives if batch_filter is None else batch_filter).numel())
                counts["negatives_kept"] += int(negatives.numel())
            else:
                labels = kwargs["labels"]
                positives = int(labels.sum())
                counts["positives"] += positives
                counts["negatives_sampled"] += int(labels.numel()) - positives
                counts["negatives_kept"] += int(labels.numel()) - positives
            return original(*args, **kwargs)

        return counted


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _epoch_clock_callback(counter: LossCounter) -> Any:
    """A PyKEEN ``TrainingCallback`` marking (wall, CPU) at the end of every epoch (after PyKEEN's own
    per-epoch ``gc.collect``) and starting the counter's next epoch."""
    from pykeen.training.callbacks import TrainingCallback

    class EpochClock(TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.marks = [_clock()]
            self.first_batch: tuple[float, float] | None = None

        def pre_batch(self, **kwargs: Any) -> None:
            if self.first_batch is None:
                self.first_batch = _clock()

        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
            self.marks.append(_clock())
            counter.new_epoch()

    return EpochClock()


def _weights_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 of a model's state (names and float32 bytes, in name order): the same start on both sides."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- PyKEEN's stock loops ----------------------------------------------------------------------


def _stock_slcwa(model: Model, factory: CoreTriplesFactory, config: KGEConfig, filterer: str) -> TrainingLoop:
    """PyKEEN's ``SLCWATrainingLoop`` with its ``basic`` sampler: ``num_negs_per_pos`` negatives drawn
    per positive over the recipe's corrupted sides, filtered by ``filterer`` when the recipe filters."""
    from pykeen.training import SLCWATrainingLoop

    sampler_kwargs: dict[str, Any] = {
        "num_negs_per_pos": config.num_negs_per_pos,
        "corruption_scheme": config.corruption_sides,
        "filtered": config.filtered_negatives,
    }
    if config.filtered_negatives:
        sampler_kwargs["filterer"] = filterer
    return SLCWATrainingLoop(
        model=model,
        triples_factory=factory,
        optimizer=config.optimizer,
        optimizer_kwargs={"lr": config.learning_rate},
        negative_sampler="basic",
        negative_sampler_kwargs=sampler_kwargs,
        automatic_memory_optimization=False,  # no sub-batch / slice probing: the batch size is given
    )


def _stock_lcwa(model: Model, factory: CoreTriplesFactory, config: KGEConfig, filterer: str) -> TrainingLoop:
    """PyKEEN's ``LCWATrainingLoop``: every (head, relation) pair scored against all entities."""
    from pykeen.training import LCWATrainingLoop

    return LCWATrainingLoop(
        model=model,
        triples_factory=factory,
        optimizer=config.optimizer,
        optimizer_kwargs={"lr": config.learning_rate},
        automatic_memory_optimization=False,
    )


#: PyKEEN's stock loop for each of this project's training regimes (``training-loop``, normalized as
#: :data:`client.kge.regimes.training_regime_resolver` does). A new regime adds its counterpart here
#: and its unavoidable differences to :data:`DIFFERENCES`.
PYKEEN_COUNTERPARTS: dict[str, Callable[[Model, CoreTriplesFactory, KGEConfig, str], TrainingLoop]] = {
    "slcwa": _stock_slcwa,
    "sharednegatives": _stock_slcwa,
    "lcwa": _stock_lcwa,
}

#: What differs between the two sides besides the loop itself, for every regime ("*") and per regime.
DIFFERENCES: dict[str, tuple[str, ...]] = {
    "*": (
        (
            "Both sides start from the same initial weights (the trainer's, built from the recipe's seed; "
            "PyKEEN's re-initialization at its first train call is skipped) but draw different random "
            "batches and negatives: the valid MRRs differ by training noise, not by initialization."
        ),
        (
            "Ours is timed as one LocalTrainer.train(1) call per epoch (each call pays the loop's set-up: "
            "data loader, filterer, PyKEEN's gc.collect); PyKEEN runs one train(num_epochs=E) call whose "
            "epochs are timed by a post_epoch callback (its set-up falls in epoch 1 only). This favours PyKEEN."
        ),
        (
            "Same process, ours first: the trainer's gc.freeze() after its first call shortens PyKEEN's "
            "per-epoch gc.collect too."
        ),
    ),
    "sharednegatives": (
        (
            "Same loss over the same number of negatives per positive, not the same negatives: ours draws "
            "num-negs-per-pos / len(sides) candidates per corrupted side once per batch and scores every "
            "positive of the batch against all of them (each positive gets both sides); PyKEEN's basic "
            "sampler draws num-negs-per-pos independent negatives per positive and splits the batch's "
            "negatives into contiguous blocks per side (repeat_interleave, then one block per side), so most "
            "positives' negatives all corrupt one side."
        ),
        (
            "Filtering: ours drops candidates that form a training triple with the positive (exact sorted-key "
            "filter); PyKEEN's sampler filters with --pykeen-filterer (its default, bloom, has ~0.1 % false "
            "positives)."
        ),
    ),
    "slcwa": (
        (
            "Ours is PyKEEN's SLCWATrainingLoop with the same basic sampler; the loops differ only by the "
            "filterer (the recipe's against --pykeen-filterer) and the timing/call pattern above."
        ),
    ),
    "lcwa": (
        (
            "LCWA batches are (head, relation) pairs with all their true tails, not triples: positives per "
            "epoch are the train triples, negatives all other entities of each pair."
        ),
    ),
}


def _regime_name(config: KGEConfig) -> str:
    from client.kge.regimes import training_regime_resolver

    return training_regime_resolver.normalize(config.training_loop)


def check_counterpart(config: KGEConfig) -> str:
    """The normalized name of ``config``'s regime, which has a PyKEEN counterpart.

    :raises client.kge.config.ConfigError: naming ``training-loop`` for a regime without one.
    """
    from client.kge.config import ConfigError

    regime = _regime_name(config)
    if regime not in PYKEEN_COUNTERPARTS:
        raise ConfigError(
            f"training-loop {config.training_loop!r} has no PyKEEN counterpart in bench_epoch.PYKEEN_COUNTERPARTS "
            f"(known: {sorted(PYKEEN_COUNTERPARTS)})"
        )
    return regime


def pykeen_loop(model: Model, factory: CoreTriplesFactory, config: KGEConfig, filterer: str) -> TrainingLoop:
    """PyKEEN's stock training loop for ``config``'s regime (:data:`PYKEEN_COUNTERPARTS`).

    :param model: the PyKEEN-side model (built by :func:`client.kge.models.build_model`).
    :param factory: the client's train triples.
    :param config: the recipe.
    :param filterer: the PyKEEN filterer of filtered negatives.
    :raises client.kge.config.ConfigError: for a regime without a counterpart.
    """
    return PYKEEN_COUNTERPARTS[check_counterpart(config)](model, factory, config, filterer)


@contextlib.contextmanager
def _initial_weights_kept(model: Model) -> Iterator[None]:
    """Skip PyKEEN's re-initialization at a first ``train`` call (the model holds the shared start)."""
    model.reset_parameters_ = lambda: model  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.reset_parameters_


def _loop_description(loop: TrainingLoop) -> dict[str, Any]:
    description: dict[str, Any] = {"loop": f"{type(loop).__module__}.{type(loop).__qualname__}"}
    if getattr(loop, "negative_sampler", None) is not None:  # PyKEEN's sLCWA loop (the hint it resolves per call)
        description["negative_sampler"] = str(loop.negative_sampler)
        description["negative_sampler_kwargs"] = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in (getattr(loop, "negative_sampler_kwargs", None) or {}).items()
        }
    for attribute in ("corruption_sides", "num_negatives", "filtered"):  # the shared-negatives loop's
        if hasattr(loop, attribute):
            value = getattr(loop, attribute)
            description[attribute] = list(value) if isinstance(value, tuple) else value
    description["optimizer"] = type(loop.optimizer).__name__
    description["learning_rate"] = loop.optimizer.param_groups[0]["lr"]
    description["loss"] = type(loop.loss).__name__
    return description


def _side_report(
    walls: list[float], cpus: list[float], losses: list[float], counter: LossCounter, valid: Mapping[str, float]
) -> dict[str, Any]:
    counts = counter.epochs[: len(walls)]
    return {
        "epoch_seconds": walls,
        "epoch_cpu_seconds": cpus,
        "median_epoch_seconds": statistics.median(walls),
        "median_epoch_cpu_seconds": statistics.median(cpus),
        "losses": losses,
        "positives_per_epoch": [c["positives"] for c in counts],
        "negatives_sampled_per_epoch": [c["negatives_sampled"] for c in counts],
        "negatives_kept_per_epoch": [c["negatives_kept"] for c in counts],
        "valid": dict(valid),
    }


def _timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    """``work()``'s result, wall seconds and CPU seconds (this process, all threads)."""
    wall, cpu = _clock()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _our_trainer(client: Any, config: KGEConfig, device: str | None) -> tuple[Any, dict[str, Any]]:
    """A fresh :class:`LocalTrainer` (its initial weights come from ``config.seed``) and a copy of them."""
    from client.kge.training import LocalTrainer

    trainer = LocalTrainer(client, config, device=device)
    initial = {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}
    return trainer, initial


def _run_ours(client: Any, config: KGEConfig, epochs: int, device: str | None) -> tuple[dict[str, Any], dict]:
    """Train ``epochs`` epochs with :class:`LocalTrainer`; returns the report and the initial weights."""
    trainer, initial = _our_trainer(client, config, device)
    counter = LossCounter(trainer.model.loss)
    walls, cpus, losses = [], [], []
    for epoch in range(epochs):
        if epoch:
            counter.new_epoch()
        epoch_losses, wall, cpu = _timed(lambda: trainer.train(1))
        losses += epoch_losses
        walls.append(wall)
        cpus.append(cpu)
    valid, evaluation_seconds, _ = _timed(lambda: trainer.evaluate("valid"))
    report = _side_report(walls, cpus, losses, counter, valid)
    report |= {
        "evaluation_seconds": evaluation_seconds,
        "initial_weights_sha256": _weights_sha256(initial),
        **_loop_description(trainer.loop),
        "peak_rss_mib_after": _peak_rss_mib(),
    }
    return report, initial


def _pykeen_seed(config: KGEConfig, client_id: int) -> int:
    import numpy as np

    # a stream of its own: not the trainer's per-epoch seeds (the sides draw different batches)
    return int(np.random.SeedSequence([config.seed, client_id + 1, 7_919]).generate_state(1)[0])


def _run_pykeen(
    client: Any, config: KGEConfig, initial: Mapping[str, Any], epochs: int, device: str | None, filterer: str
) -> dict[str, Any]:
    """Train ``epochs`` epochs with PyKEEN's stock loop from ``initial`` weights, in one ``train`` call."""
    from client.kge.evaluation import evaluate_client
    from client.kge.models import build_model, model_triples_factory, seeded
    from client.kge.training import resolve_device

    torch_device = resolve_device(device)
    # with reciprocal-relations PyKEEN's loop trains on the inverse-triples factory the model is built on
    factory = model_triples_factory(config, client.train)
    with seeded(_pykeen_seed(config, int(client.client_id)), torch_device):
        model = build_model(config, factory, torch_device)
        model.load_state_dict(dict(initial))
        initial_sha = _weights_sha256(model.state_dict())
        loop = pykeen_loop(model, factory, config, filterer)
        counter = LossCounter(model.loss)
        clock = _epoch_clock_callback(counter)
        train_kwargs = {
            "batch_size": config.batch_size,  # given: no automatic batch-size search
            "use_tqdm": False,
            "num_workers": 0,
            "pin_memory": torch_device.type == "cuda",
            "checkpoint_directory": tempfile.gettempdir(),  # PyKEEN makes it on every call; nothing written
        }
        with _initial_weights_kept(model), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Training instances are always shuffled", category=DeprecationWarning
            )
            clock.marks = [_clock()]
            losses = loop.train(
                triples_factory=factory,
                num_epochs=epochs,
                continue_training=False,
                callbacks=[clock],
                **train_kwargs,
            )
    marks = clock.marks
    walls = [later[0] - earlier[0] for earlier, later in itertools.pairwise(marks)]
    cpus = [later[1] - earlier[1] for earlier, later in itertools.pairwise(marks)]
    started = time.perf_counter()
    valid = evaluate_client(
        model,
        client,
        split="valid",
        protocol=config.eval_protocol,
        batch_size=config.eval_batch_size,
        device=torch_device,
    )
    report = _side_report(walls, cpus, [float(loss) for loss in losses or []], counter, valid)
    first_batch = clock.first_batch or marks[-1]
    report |= {
        "evaluation_seconds": time.perf_counter() - started,
        "setup_seconds_in_epoch_1": first_batch[0] - marks[0][0],
        "initial_weights_sha256": initial_sha,
        **_loop_description(loop),
        "filterer": filterer if config.filtered_negatives else None,
        "train_kwargs": {key: value for key, value in train_kwargs.items() if key != "checkpoint_directory"},
        "peak_rss_mib_after": _peak_rss_mib(),
    }
    return report


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def _summary(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per side: median seconds per epoch over every epoch of every seed, valid MRR mean / std over
    seeds; the ratios PyKEEN / ours and whether the MRR means lie within seed noise."""
    sides: dict[str, Any] = {}
    for side in ("ours", "pykeen"):
        runs = [run[side] for run in per_seed.values() if "error" not in run[side]]
        walls = [s for run in runs for s in run["epoch_seconds"]]
        cpus = [s for run in runs for s in run["epoch_cpu_seconds"]]
        sides[side] = {
            "seconds_per_epoch": statistics.median(walls) if walls else None,
            "cpu_seconds_per_epoch": statistics.median(cpus) if cpus else None,
            "valid_mrr": _mean_std([run["valid"]["mrr"] for run in runs]),
            "valid_mrr_per_seed": [run["valid"]["mrr"] for run in runs],
        }
    ours, theirs = sides["ours"], sides["pykeen"]
    ratio = cpu_ratio = None
    if ours["seconds_per_epoch"] and theirs["seconds_per_epoch"] is not None:
        ratio = theirs["seconds_per_epoch"] / ours["seconds_per_epoch"]
    if ours["cpu_seconds_per_epoch"] and theirs["cpu_seconds_per_epoch"] is not None:
        cpu_ratio = theirs["cpu_seconds_per_epoch"] / ours["cpu_seconds_per_epoch"]
    difference = within = None
    n = min(len(ours["valid_mrr_per_seed"]), len(theirs["valid_mrr_per_seed"]))
    if n and ours["valid_mrr"]["mean"] is not None and theirs["valid_mrr"]["mean"] is not None:
        difference = ours["valid_mrr"]["mean"] - theirs["valid_mrr"]["mean"]
        if n > 1:
            error = math.sqrt((ours["valid_mrr"]["std"] ** 2 + theirs["valid_mrr"]["std"] ** 2) / n)
            within = abs(difference) <= NOISE_STANDARD_ERRORS * error
    return {
        **sides,
        "ratio": ratio,  # pykeen seconds per epoch / ours (wall)
        "cpu_ratio": cpu_ratio,
        "at_least_2x": None if ratio is None else ratio >= 2.0,
        "valid_mrr_difference": difference,  # ours - pykeen (means over seeds)
        "valid_mrr_within_seed_noise": within,  # None with one seed
    }


# --- time to PyKEEN's valid MRR ----------------------------------------------------------------

#: ``--max-epochs``' default: this many times ``--epochs``.
DEFAULT_MAX_EPOCHS_FACTOR = 10

#: How ``--time-to-pykeen-valid`` measures, stated in its report.
TIME_TO_PYKEEN_VALID_RULE = (
    "Per recipe and seed, after both fixed-epoch runs: a fresh LocalTrainer from the same seed (the same initial "
    "weights, whose per-epoch seeds replay the fixed run's epochs) trains one epoch at a time and is validated "
    "after each (this project's evaluator, the recipe's protocol) until its valid MRR >= the same seed's PyKEEN "
    "valid MRR after --epochs, or --max-epochs. Training seconds count the train(1) calls only; validation is "
    "timed apart. ratio = PyKEEN's training seconds over its --epochs / ours to the target (None when not reached)."
)


def train_to_valid_mrr(
    client: Any, config: KGEConfig, target: float, max_epochs: int, device: str | None
) -> dict[str, Any]:
    """Train a fresh :class:`LocalTrainer` one epoch at a time, validating after each, until its valid MRR
    reaches ``target`` (``mrr >= target``) or ``max_epochs`` epochs are done.

    The trainer starts from ``config.seed``'s initial weights, as :func:`_run_ours` does for the same config.
    Only the ``train(1)`` calls are training time; each validation is timed apart.

    :param client: a party's graph (train, valid, test factories; ``client_id``; ``num_entities``).
    :param config: the recipe at one seed.
    :param target: the valid MRR to reach.
    :param max_epochs: the cap on epochs (>= 1).
    :param device: where to train and evaluate.
    :returns: ``target_valid_mrr``, ``max_epochs``, ``reached``, ``epochs`` (to the target, ``None`` when not
        reached), ``epochs_run``, ``train_seconds`` / ``train_cpu_seconds`` (every epoch run),
        ``validation_seconds`` / ``validation_cpu_seconds`` (every validation), ``best_valid_mrr`` and
        ``best_epoch``, per epoch ``epoch_seconds``, ``epoch_cpu_seconds``, ``validation_seconds_per_epoch``,
        ``valid_mrr_per_epoch`` and ``losses``, ``valid`` (the last validation's metrics) and
        ``initial_weights_sha256``.
    :raises ValueError: for ``max_epochs < 1``.
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    trainer, initial = _our_trainer(client, config, device)
    walls, cpus, losses, validation_walls, validation_cpus, mrrs = [], [], [], [], [], []
    valid: Mapping[str, float] = {}
    while len(mrrs) < max_epochs and not (mrrs and mrrs[-1] >= target):
        epoch_losses, wall, cpu = _timed(lambda: trainer.train(1))
        valid, validation_wall, validation_cpu = _timed(lambda: trainer.evaluate("valid"))
        losses += epoch_losses
        walls.append(wall)
        cpus.append(cpu)
        validation_walls.append(validation_wall)
        validation_cpus.append(validation_cpu)
        mrrs.append(float(valid["mrr"]))
    reached = mrrs[-1] >= target
    best = max(range(len(mrrs)), key=mrrs.__getitem__)
    return {
        "target_valid_mrr": target,
        "max_epochs": max_epochs,
        "reached": reached,
        "epochs": len(mrrs) if reached else None,
        "epochs_run": len(mrrs),
        "train_seconds": sum(walls),
        "train_cpu_seconds": sum(cpus),
        "validation_seconds": sum(validation_walls),
        "validation_cpu_seconds": sum(validation_cpus),
        "best_valid_mrr": mrrs[best],
        "best_epoch": best + 1,
        "epoch_seconds": walls,
        "epoch_cpu_seconds": cpus,
        "validation_seconds_per_epoch": validation_walls,
        "valid_mrr_per_epoch": mrrs,
        "losses": losses,
        "valid": dict(valid),
        "initial_weights_sha256": _weights_sha256(initial),
    }


def _outcome(run: Mapping[str, Any]) -> str:
    """One line of a seed's time-to-target result."""
    if run["reached"]:
        return (
            f"reached in {run['epochs']} epochs: {run['train_seconds']:.2f} s of training against PyKEEN's "
            f"{run['pykeen_train_seconds']:.2f} s for {run['pykeen_epochs']} epochs ({run['ratio']:.2f}x)"
        )
    return (
        f"not reached within the cap of {run['max_epochs']} epochs: best valid MRR {run['best_valid_mrr']:.4f} "
        f"(epoch {run['best_epoch']}) against PyKEEN's {run['target_valid_mrr']:.4f}"
    )


def _ours_to_pykeen_valid(
    client: Any, config: KGEConfig, runs: Mapping[str, Any], max_epochs: int, device: str | None
) -> dict[str, Any]:
    """:func:`train_to_valid_mrr` to the same seed's PyKEEN valid MRR, with PyKEEN's training seconds and
    the ratio; an ``error`` entry when either fixed-epoch side failed or this run does."""
    pykeen = runs["pykeen"]
    if "error" in pykeen or "error" in runs["ours"]:
        return {"error": "not run: no PyKEEN valid MRR to reach"}
    try:
        run = train_to_valid_mrr(client, config, float(pykeen["valid"]["mrr"]), max_epochs, device)
    except Exception as error:  # noqa: BLE001 - a diverged recipe is reported, the others still run
        return {"error": f"{type(error).__name__}: {error}"}
    seconds, cpu_seconds = sum(pykeen["epoch_seconds"]), sum(pykeen["epoch_cpu_seconds"])
    run |= {
        "pykeen_epochs": len(pykeen["epoch_seconds"]),
        "pykeen_train_seconds": seconds,
        "pykeen_train_cpu_seconds": cpu_seconds,
        "ratio": seconds / run["train_seconds"] if run["reached"] and run["train_seconds"] else None,
        "cpu_ratio": cpu_seconds / run["train_cpu_seconds"] if run["reached"] and run["train_cpu_seconds"] else None,
        "same_start_as_pykeen": run["initial_weights_sha256"] == pykeen["initial_weights_sha256"],
    }
    return run | {"outcome": _outcome(run)}


def _time_to_pykeen_valid_summary(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per recipe: each seed's epochs, ratio and best valid MRR; over seeds, the ratio of the summed
    training seconds (PyKEEN / ours) when every seed reached its target, else ``None``."""
    runs = {seed: run["ours_to_pykeen_valid"] for seed, run in per_seed.items()}
    done = [run for run in runs.values() if "error" not in run]
    reached = [run for run in done if run["reached"]]
    every = bool(runs) and len(reached) == len(runs)

    def total(key: str) -> float:
        return sum(run[key] for run in reached)

    return {
        "seeds_reached": len(reached),
        "all_reached": every,
        "epochs_per_seed": {seed: run.get("epochs") for seed, run in runs.items()},
        "best_valid_mrr_per_seed": {seed: run.get("best_valid_mrr") for seed, run in runs.items()},
        "ratio_per_seed": {seed: run.get("ratio") for seed, run in runs.items()},
        "outcome_per_seed": {seed: run.get("outcome", run.get("error")) for seed, run in runs.items()},
        "train_seconds": total("train_seconds") if every else None,
        "pykeen_train_seconds": total("pykeen_train_seconds") if every else None,
        "ratio": total("pykeen_train_seconds") / total("train_seconds") if every else None,
        "cpu_ratio": total("pykeen_train_cpu_seconds") / total("train_cpu_seconds") if every else None,
    }


def compare(
    client: Any,
    recipes: Mapping[str, KGEConfig],
    *,
    epochs: int,
    seeds: int,
    device: str | None,
    filterer: str,
    on_recipe: Callable[[dict[str, Any]], None] | None = None,
    max_epochs_to_pykeen_valid: int | None = None,
) -> dict[str, Any]:
    """Train every recipe with both loops on ``client`` (see the module docstring).

    :param client: a party's graph (train, valid, test factories; ``client_id``; ``num_entities``).
    :param recipes: name -> config.
    :param epochs: epochs per side and seed.
    :param seeds: seeds per recipe: the recipe's ``seed``, +1, ...
    :param device: where both sides train and evaluate.
    :param filterer: the PyKEEN side's filterer of filtered negatives.
    :param on_recipe: called with the recipes measured so far after each recipe (to keep partial output).
    :param max_epochs_to_pykeen_valid: when given, each seed also gets :func:`train_to_valid_mrr` to its
        PyKEEN valid MRR with this cap (``"ours_to_pykeen_valid"`` beside ``"ours"`` and ``"pykeen"``), and
        each recipe a ``"time_to_pykeen_valid"`` summary; ``None``: neither.
    :returns: ``{name: {"config", "regime", "differences", "seeds": {seed: {"ours", "pykeen"}}, "summary"}}``.
    :raises client.kge.config.ConfigError: for a regime without a PyKEEN counterpart (before any training).
    """
    for config in recipes.values():
        check_counterpart(config)
    results: dict[str, Any] = {}
    for name, base in recipes.items():
        regime = _regime_name(base)
        per_seed: dict[str, Any] = {}
        for offset in range(seeds):
            config = base.replace(seed=base.seed + offset)
            runs: dict[str, Any] = {}
            try:
                runs["ours"], initial = _run_ours(client, config, epochs, device)
            except Exception as error:  # noqa: BLE001 - a diverged recipe is reported, the others still run
                runs["ours"] = {"error": f"{type(error).__name__}: {error}"}
                runs["pykeen"] = {"error": "not run: our side failed (no shared initial weights)"}
            else:
                try:
                    runs["pykeen"] = _run_pykeen(client, config, initial, epochs, device, filterer)
                except Exception as error:  # noqa: BLE001
                    runs["pykeen"] = {"error": f"{type(error).__name__}: {error}"}
            if max_epochs_to_pykeen_valid is not None:
                runs["ours_to_pykeen_valid"] = _ours_to_pykeen_valid(
                    client, config, runs, max_epochs_to_pykeen_valid, device
                )
            per_seed[str(config.seed)] = runs
        differences = list(DIFFERENCES["*"]) + list(DIFFERENCES.get(regime, ()))
        if not base.keep_optimizer_state and epochs > 1:
            differences.append(
                "keep-optimizer-state is false: ours starts a fresh optimizer every epoch (one train call "
                "each), PyKEEN keeps one over its single call."
            )
        results[name] = {
            "config": base.to_run_config(),
            "regime": regime,
            "differences": differences,
            "seeds": per_seed,
            "summary": _summary(per_seed),
        }
        if max_epochs_to_pykeen_valid is not None:
            results[name]["time_to_pykeen_valid"] = _time_to_pykeen_valid_summary(per_seed)
        if on_recipe is not None:
            on_recipe(results)
    return results


# --- the command -------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import numpy
    import pykeen
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pykeen": pykeen.get_version() if hasattr(pykeen, "get_version") else pykeen.__version__,
        "numpy": numpy.__version__,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset name or folder (as kg_datasets.load_federated)")
    parser.add_argument("--num-clients", type=int, default=None, help="clients, for a single-graph source")
    parser.add_argument("--client", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--preset", default=None, help="a run-config preset (client.kge.presets.PRESETS), before --set")
    add_set_option(parser, help="KGE run-config override (every recipe's base)")
    parser.add_argument(
        "--against-pykeen",
        action="store_true",
        help="train each recipe with this project's trainer and with PyKEEN's stock loop; compare",
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
        help="a recipe of --against-pykeen (repeatable): run-config keys on top of --preset/--set; "
        "preset=NAME applies a preset first (default: one recipe 'default' of --preset/--set)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="--against-pykeen: seeds per recipe (seed, seed+1, ...)")
    parser.add_argument(
        "--pykeen-filterer",
        default=PYKEEN_DEFAULT_FILTERER,
        help="--against-pykeen: the PyKEEN side's filterer for recipes with filtered negatives "
        f"(default: PyKEEN's own, {PYKEEN_DEFAULT_FILTERER})",
    )
    parser.add_argument(
        "--time-to-pykeen-valid",
        action="store_true",
        help="--against-pykeen: also train each recipe and seed with this project's trainer, validating every "
        "epoch, until its valid MRR reaches PyKEEN's after --epochs (or --max-epochs); report the training "
        "seconds of both sides and their ratio",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help=f"--time-to-pykeen-valid: the cap on our epochs (default {DEFAULT_MAX_EPOCHS_FACTOR} x --epochs)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON output file (written atomically); else stdout")
    return parser


def _load_client(args: argparse.Namespace) -> Any:
    """Party ``--client`` of ``--data``.

    :raises kg_datasets.errors.KGDataError: for data that does not load, or no such party (naming both).
    """
    from kg_datasets import load_federated
    from kg_datasets.errors import KGDataError

    kg = load_federated(args.data, num_clients=args.num_clients)
    if not 0 <= args.client < len(kg.clients):
        raise KGDataError(
            f"--client {args.client}: {args.data} has {len(kg.clients)} parties (0 to {len(kg.clients) - 1})"
        )
    return kg.clients[args.client]


def _plain(args: argparse.Namespace, config: KGEConfig, loaded: tuple[Any, float]) -> dict[str, Any]:
    """One trainer, ``--epochs`` timed ``train(1)`` calls (the script's original measurement)."""
    import torch

    from client.kge.training import LocalTrainer

    client, load_seconds = loaded

    started = time.perf_counter()
    trainer = LocalTrainer(client, config, device=args.device)
    build_seconds = time.perf_counter() - started

    epoch_seconds, epoch_cpu_seconds, losses = [], [], []
    for _ in range(args.epochs):
        epoch_losses, wall, cpu = _timed(lambda: trainer.train(1))
        losses += epoch_losses
        epoch_seconds.append(wall)
        epoch_cpu_seconds.append(cpu)

    return {
        "data": str(args.data),
        "client": args.client,
        "train_triples": int(client.train.num_triples),
        "num_entities": int(client.num_entities),
        "config": config.to_run_config(),
        "device": str(trainer.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_seconds": load_seconds,
        "build_seconds": build_seconds,
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        # CPU seconds of this process (all threads): robust to other load on a shared machine
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "losses": losses,
        "peak_rss_mib": _peak_rss_mib(),
        "load_average_1min": os.getloadavg()[0],
    }


def _against_pykeen(
    args: argparse.Namespace,
    recipes: Mapping[str, KGEConfig],
    command: str,
    out: Path | None,
    loaded: tuple[Any, float],
) -> dict[str, Any]:
    import torch

    from client.kge.run_folder import emit_json
    from client.kge.training import resolve_device

    header: dict[str, Any] = {
        "mode": "against-pykeen",
        "command": command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "load_average_start": list(os.getloadavg()),
    }
    client, load_seconds = loaded
    header |= {
        "data": str(args.data),
        "client": args.client,
        "train_triples": int(client.train.num_triples),
        "valid_triples": int(client.valid.num_triples),
        "num_entities": int(client.num_entities),
        "load_seconds": load_seconds,
        "device": str(resolve_device(args.device)),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "pykeen_filterer": args.pykeen_filterer,
        "noise_rule": f"|mean_ours - mean_pykeen| <= {NOISE_STANDARD_ERRORS} * sqrt((std_ours^2 + std_pykeen^2) / n)",
    }
    max_epochs = _max_epochs(args)
    if max_epochs is not None:
        header["time_to_pykeen_valid"] = {"max_epochs": max_epochs, "rule": TIME_TO_PYKEEN_VALID_RULE}

    def partial(results: dict[str, Any]) -> None:
        if out is not None:  # keep what is measured if a later recipe is interrupted
            emit_json(header | {"recipes": results, "partial": True}, out)

    results = compare(
        client,
        recipes,
        epochs=args.epochs,
        seeds=args.seeds,
        device=args.device,
        filterer=args.pykeen_filterer,
        on_recipe=partial,
        max_epochs_to_pykeen_valid=max_epochs,
    )
    report = header | {
        "recipes": results,
        "ratios": {name: result["summary"]["ratio"] for name, result in results.items()},
    }
    if max_epochs is not None:
        report["time_to_pykeen_valid_ratios"] = {
            name: result["time_to_pykeen_valid"]["ratio"] for name, result in results.items()
        }
    return report | {"peak_rss_mib": _peak_rss_mib(), "load_average_end": list(os.getloadavg())}


def _max_epochs(args: argparse.Namespace) -> int | None:
    """The cap of ``--time-to-pykeen-valid``'s run (``None``: no such run)."""
    if not args.time_to_pykeen_valid:
        return None
    return DEFAULT_MAX_EPOCHS_FACTOR * args.epochs if args.max_epochs is None else args.max_epochs


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and write one JSON object (``--out``, atomically; else stdout)."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1:
        parser.error("--epochs and --seeds must be >= 1")
    if args.recipe and not args.against_pykeen:
        parser.error("--recipe needs --against-pykeen")
    if args.time_to_pykeen_valid and not args.against_pykeen:
        parser.error("--time-to-pykeen-valid needs --against-pykeen")
    if args.max_epochs is not None and not args.time_to_pykeen_valid:
        parser.error("--max-epochs needs --time-to-pykeen-valid")
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    from client.kge.config import ConfigError, KGEConfig
    from client.kge.run_folder import check_script_outputs, emit_json

    check_script_outputs(parser, inputs=[args.data], files={"--out": args.out})
    try:
        base = KGEConfig.from_run_config(recipe_run_config(args.preset, args.set, {}))
        recipes: dict[str, KGEConfig] = {} if args.recipe else {"default": base}
        for text in args.recipe:
            name, values = parse_recipe(text)
            if name in recipes:
                raise RecipeError(f"--recipe {name!r} given twice")
            recipes[name] = KGEConfig.from_run_config(recipe_run_config(args.preset, args.set, values))
            check_counterpart(recipes[name])
    except (RecipeError, ConfigError) as error:
        parser.error(str(error))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from kg_datasets.errors import KGDataError

    started = time.perf_counter()
    try:
        loaded = (_load_client(args), time.perf_counter() - started)
    except KGDataError as error:  # the data given (unreadable, no --num-clients for one graph, no such --client)
        parser.error(str(error))
    if args.against_pykeen:
        command = shlex.join(["python", "scripts/bench_epoch.py", *argv])
        report = _against_pykeen(args, recipes, command, args.out, loaded)
    else:
        report = _plain(args, base, loaded)
    emit_json(report, args.out)
    if args.out is not None:
        shown = {key: report[key] for key in ("ratios", "time_to_pykeen_valid_ratios") if key in report}
        print(json.dumps(shown if len(shown) > 1 else report.get("ratios", report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
