"""The client side of the SimSkip refinement phase, and its configuration.

After federated KGE training each client refines the entity rows it holds with
:mod:`simskip_core` (contrastive training of a skip-connected encoder, Liu et al. ESWC 2024).
With ``simskip-federate = true`` the server averages the encoder and projection-head weights
over the clients (FedAvg weighted by the number of rows, :func:`client.kge.weights.fedavg_named`)
after every round of ``simskip-local-epochs`` epochs; with ``false`` each client keeps its own
weights (the local-only ablation). The refined rows are ``f(rows)`` of the final encoder.

A client round is stateless (:func:`fit_round`): it builds a fresh :class:`SimSkipTrainer`,
loads the round's starting weights and fits. This is what a Flower client needs (each message
may run in a fresh process), and it is FedAvg's usual client: a fresh optimizer every round.
The augmentation/shuffle seed is derived from (``simskip-seed``, client, round), so a replayed
round is identical and clients/rounds draw different views.

Structure view: where a variant's ``simskip-augmentations`` names ``row_view``, the caller
passes the client's structure view (:func:`client.kge.structure_view.client_structure_view`,
built in the client's process from its own train triples, rows and trained relations) as
``row_view`` to :func:`fit_round` (``row_views`` per client to :func:`run_refinement`); the
variants that do not name it train exactly as before.

Variants: ``refined`` uses the configured encoder; every further search setting ``k``
(``simskip-search``) and seed ``j`` (``downstream-seeds``) trains its own encoder
``refined@k.j`` (:meth:`RefinementConfig.variant_name`; SimSkip seed ``simskip-seed + j``), and with
``simskip-no-skip-ablation = true`` ``refined-no-skip`` (the paper's ablation ``f(x) = g(x)``) per
seed, all side by side in the same rounds, so one run reports them all. Weights travel as one flat
named list with ``<variant>/`` prefixes (:func:`pack_variants`).

The phase's configuration, :class:`RefinementConfig`, and its run-config keys are in
:mod:`client.kge.refinement_config` (re-exported here); the whole run config is split by
:func:`client.kge.run_config.load_run_configs` (re-exported here as well).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from client.kge.local_dp import LocalDpSpec, PartyAccountant, json_epsilon, release_weights
from client.kge.refinement_config import (
    DEFAULT_GATE_GRID,
    NO_SKIP_VARIANT,
    REFINED_VARIANT,
    REFINEMENT_KEYS,
    RefinementConfig,
    RefinementConfigError,
    parse_gate_grid,
)
from client.kge.run_config import load_run_configs
from client.kge.weights import fedavg_named
from simskip_core import ROW_VIEW, RowViewProvider, SimSkipTrainer

__all__ = [
    "DEFAULT_GATE_GRID",
    "NO_SKIP_VARIANT",
    "REFINED_VARIANT",
    "REFINEMENT_KEYS",
    "RefinementConfig",
    "RefinementConfigError",
    "RefinementInputError",
    "RefinementResult",
    "RoundUpdate",
    "client_seed_key",
    "fit_round",
    "initial_weights",
    "load_run_configs",
    "pack_variants",
    "parse_gate_grid",
    "round_record",
    "run_refinement",
    "transform_rows",
    "unpack_variants",
]

NamedArrays = list[tuple[str, np.ndarray]]


class RefinementInputError(ValueError):
    """A client's entity rows cannot be refined (shape, dtype, non-finite, too few rows)."""


# ----------------------------------------------------------------------------- weights
def pack_variants(weights: Mapping[str, Sequence[tuple[str, np.ndarray]]]) -> NamedArrays:
    """``{variant: [(name, array)]}`` -> one flat list of ``("<variant>/<name>", array)``."""
    return [(f"{variant}/{name}", array) for variant, named in weights.items() for name, array in named]


def unpack_variants(flat: Sequence[tuple[str, np.ndarray]], variants: Sequence[str]) -> dict[str, NamedArrays]:
    """Inverse of :func:`pack_variants`; every expected variant must be present.

    :raises RefinementInputError: for an entry without a known ``<variant>/`` prefix or a missing variant.
    """
    out: dict[str, NamedArrays] = {variant: [] for variant in variants}
    for name, array in flat:
        variant, sep, rest = name.partition("/")
        if not sep or variant not in out:
            raise RefinementInputError(
                f"weight entry {name!r} has no known variant prefix (expected one of {list(variants)})"
            )
        out[variant].append((rest, array))
    missing = [variant for variant, named in out.items() if not named]
    if missing:
        raise RefinementInputError(f"no weights for variant(s) {missing}")
    return out


def initial_weights(entity_dim: int, config: RefinementConfig) -> dict[str, NamedArrays]:
    """The starting encoder + head weights of every variant, from ``simskip-seed``.

    :param entity_dim: width of the rows to refine (``2 * embedding_dim`` for complex models).
    """
    return {
        variant: SimSkipTrainer(entity_dim, cfg.replace(device="cpu")).get_weights()
        for variant, cfg in config.variants().items()
    }


# ----------------------------------------------------------------------------- client round
def client_seed_key(client_id: str | int) -> int:
    """A stable non-negative int for a client name (for seeding)."""
    text = str(client_id)
    return int(text) if text.isdigit() else zlib.crc32(text.encode("utf-8"))


def _round_seed(base_seed: int, client_id: str | int, server_round: int) -> int:
    sequence = np.random.SeedSequence([int(base_seed), client_seed_key(client_id), int(server_round)])
    return int(sequence.generate_state(1)[0] % (2**31))


def _check_rows(rows: Any, client_id: str | int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[0] < 2 or rows.shape[1] < 1:
        raise RefinementInputError(f"client {client_id}: entity rows must be (n >= 2, dim), got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.floating):
        raise RefinementInputError(f"client {client_id}: entity rows dtype {rows.dtype} is not a real float type")
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise RefinementInputError(
            f"client {client_id}: entity row(s) {np.flatnonzero(bad)[:10].tolist()} hold NaN or inf"
        )
    return np.ascontiguousarray(rows, dtype=np.float32)


@dataclass
class RoundUpdate:
    """One client's result of one SimSkip round.

    :param weights: variant -> trained encoder + head weights.
    :param num_rows: the number of entity rows refined (the FedAvg weight).
    :param losses: variant -> mean NT-Xent loss of each local epoch.
    :param seconds: wall time of the round's fitting.
    """

    weights: dict[str, NamedArrays]
    num_rows: int
    losses: dict[str, list[float]]
    seconds: float = 0.0


def fit_round(
    rows: np.ndarray,
    start_weights: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    config: RefinementConfig,
    *,
    client_id: str | int,
    server_round: int,
    row_view: RowViewProvider | None = None,
) -> RoundUpdate:
    """Train every variant ``config.local_epochs`` epochs on ``rows``, from ``start_weights``.

    :param rows: float (n, entity_dim) entity rows of this client (local-id order); complex
        models' rows are real pairs already, refined as real columns.
    :param start_weights: variant -> the round's starting weights (server average, or the
        client's own previous weights in the local-only ablation).
    :param config: the phase config.
    :param client_id: seeds the views together with ``server_round``.
    :param server_round: 1-based round number.
    :param row_view: the client's view of its rows for the variants whose augmentations name
        ``row_view`` (:func:`client.kge.structure_view.client_structure_view` of these ``rows``);
        required exactly when :attr:`RefinementConfig.uses_row_view`, ignored by the other variants.
    :raises RefinementInputError: for bad rows, missing variants, or ``row_view`` named without a view.
    """
    rows = _check_rows(rows, client_id)
    if row_view is None and config.uses_row_view:
        raise RefinementInputError(
            f"client {client_id}: simskip-augmentations names {ROW_VIEW!r}, but no row view was given "
            "(pass row_view=client.kge.structure_view.client_structure_view(...) of the client's rows)"
        )
    started = time.perf_counter()
    weights, losses = {}, {}
    for variant, cfg in config.variants().items():
        if variant not in start_weights:
            raise RefinementInputError(f"client {client_id}: no starting weights for variant {variant!r}")
        trainer = SimSkipTrainer(rows.shape[1], cfg.replace(seed=_round_seed(cfg.seed, client_id, server_round)))
        trainer.set_weights(list(start_weights[variant]))
        view = row_view if ROW_VIEW in cfg.augmentations else None
        losses[variant] = trainer.fit(rows, epochs=config.local_epochs, row_view=view)
        weights[variant] = trainer.get_weights()
    return RoundUpdate(weights, int(rows.shape[0]), losses, time.perf_counter() - started)


def transform_rows(
    rows: np.ndarray,
    weights: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    config: RefinementConfig,
    *,
    client_id: str | int = 0,
) -> dict[str, np.ndarray]:
    """The refined rows ``f(rows)`` of every variant's final encoder: float32, shape of ``rows``."""
    rows = _check_rows(rows, client_id)
    refined = {}
    for variant, cfg in config.variants().items():
        trainer = SimSkipTrainer(rows.shape[1], cfg)
        trainer.set_weights(list(weights[variant]))
        refined[variant] = np.ascontiguousarray(trainer.transform(rows), dtype=np.float32)
    return refined


# ----------------------------------------------------------------------------- in-process driver
@dataclass
class RefinementResult:
    """Outcome of :func:`run_refinement`.

    :param refined: client -> variant -> refined rows (float32, shape of the client's rows).
    :param weights: client -> variant -> the final weights the client transformed with.
    :param history: one dict per round: ``{"round", "simskip_loss": {client: {variant: last epoch loss}},
        "simskip_loss_overall": {variant: row-weighted mean}, "seconds"}``.
    """

    refined: dict[str, dict[str, np.ndarray]]
    weights: dict[str, dict[str, NamedArrays]]
    history: list[dict[str, Any]]


def run_refinement(
    rows_by_client: Mapping[str, np.ndarray],
    config: RefinementConfig,
    *,
    on_round_end: Callable[[dict[str, Any]], None] | None = None,
    aggregation: str = "mean",
    aggregation_trim: float = 0.25,
    row_views: Mapping[str, RowViewProvider] | None = None,
    dp: LocalDpSpec | None = None,
    accountants: MutableMapping[str, PartyAccountant] | None = None,
) -> RefinementResult:
    """Run the whole SimSkip phase in this process (the same rounds Flower runs, without transport).

    Used by the "refine only" command on a finished run folder and by the tests; the Flower
    strategy performs exactly these steps with messages.

    :param rows_by_client: client name -> its entity rows (all of the same width).
    :param config: the phase config (``rounds >= 1``).
    :param on_round_end: receives each round's history dict.
    :param aggregation: the rule of the encoder weights' average (``aggregation``,
        :func:`client.kge.weights.fedavg_named`), clients in name order as the strategy has them.
    :param aggregation_trim: the fraction cut from each end by ``trimmed-mean``.
    :param row_views: client name -> its structure view (``row_view`` of :func:`fit_round`), where
        the config names the ``row_view`` augmentation.
    :param dp: ``dp = local`` with a federated phase: the encoder's release (``clip`` = ``dp-clip-encoder``,
        the run's ``z``), as the Flower party does (:func:`client.party_dp.release_encoder`): each client's
        weights are released against the round's global weights before they are averaged, counted in
        its accountant; each round's history row then has ``"dp"`` (client -> epsilon, releases).
        Ignored by the local-only ablation (no weights leave a client).
    :param accountants: client name -> its accountant, continued (e.g. from the KGE phase's releases)
        and updated in place; a client without one gets a fresh one at ``dp.delta``.
    """
    if not rows_by_client:
        raise RefinementInputError("no client rows to refine")
    widths = {name: np.shape(rows)[1] if np.ndim(rows) == 2 else None for name, rows in rows_by_client.items()}
    if len(set(widths.values())) != 1 or None in widths.values():
        raise RefinementInputError(f"clients' entity rows differ in width or are not 2-D: {widths}")
    dim = next(iter(widths.values()))
    start = initial_weights(int(dim), config)
    current = dict.fromkeys(rows_by_client, start)
    history = []
    for server_round in range(1, config.rounds + 1):
        started = time.perf_counter()
        updates = {
            name: fit_round(
                rows,
                current[name],
                config,
                client_id=name,
                server_round=server_round,
                row_view=(row_views or {}).get(name),
            )
            for name, rows in rows_by_client.items()
        }
        released: dict[str, dict[str, float]] = {}
        if config.federate and dp is not None:
            accountants = accountants if accountants is not None else {}
            for name, update in updates.items():
                accountant = accountants.setdefault(name, PartyAccountant(dp.delta))
                update.weights = _release_encoder(update.weights, current[name], dp)
                accountant.record_release(dp.noise_multiplier)
                # null, not Infinity, in the JSON rows (z = 0: no privacy)
                released[name] = {"epsilon": json_epsilon(accountant.epsilon), "releases": accountant.releases}
        if config.federate:
            averaged = {
                variant: fedavg_named(
                    [(u.weights[variant], u.num_rows) for u in updates.values()], aggregation, aggregation_trim
                )
                for variant in config.variants()
            }
            current = dict.fromkeys(rows_by_client, averaged)
        else:
            current = {name: update.weights for name, update in updates.items()}
        record = round_record(server_round, updates, time.perf_counter() - started)
        if released:
            record["dp"] = released
        history.append(record)
        if on_round_end is not None:
            on_round_end(record)
    refined = {
        name: transform_rows(rows, current[name], config, client_id=name) for name, rows in rows_by_client.items()
    }
    return RefinementResult(refined=refined, weights=current, history=history)


def _release_encoder(
    trained: Mapping[str, NamedArrays], downloaded: Mapping[str, NamedArrays], dp: LocalDpSpec
) -> dict[str, NamedArrays]:
    """One client's weights released (:func:`client.kge.local_dp.release_weights`, every variant together)."""
    flat, start = pack_variants(trained), dict(pack_variants(downloaded))
    released, _ = release_weights(flat, [(name, start[name]) for name, _ in flat], dp.clip, dp.noise_multiplier)
    out: dict[str, NamedArrays] = {variant: [] for variant in trained}
    for key, array in released:
        variant, _, name = key.partition("/")
        out[variant].append((name, array.astype(np.float32)))
    return out


def round_record(server_round: int, updates: Mapping[str, RoundUpdate], seconds: float) -> dict[str, Any]:
    """The history row of one SimSkip round (shared by the in-process driver and the strategy)."""
    per_client = {
        name: {variant: float(losses[-1]) for variant, losses in u.losses.items()} for name, u in updates.items()
    }
    total = sum(u.num_rows for u in updates.values())
    variants = sorted({v for losses in per_client.values() for v in losses})
    overall = {
        variant: sum(per_client[name][variant] * u.num_rows for name, u in updates.items()) / total
        for variant in variants
    }
    return {
        "phase": "simskip",
        "round": int(server_round),
        "simskip_loss": per_client,
        "simskip_loss_overall": overall,
        "num_rows": {name: u.num_rows for name, u in updates.items()},
        "seconds": round(float(seconds), 4),
    }
