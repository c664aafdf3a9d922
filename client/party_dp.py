"""The party's side of ``dp = local`` in the Flower train handler (:mod:`client.client_app`).

:func:`release_upload` turns the rows the party trained into the rows it uploads: under
``dp = local`` through :func:`client.kge.local_dp.release_rows` (whole update clipped, Gaussian
noise, float64, before the cast to ``transfer-dtype``), counted by the party's own
:class:`~client.kge.local_dp.PartyAccountant`. The accountant is authoritative: it counts every
release the party makes, whether or not the server uses the reply. Its state lives in
``context.state`` (record :data:`DP_STATE`) and, where the party has an output folder, in
``<output>/`` :data:`DP_STATE_FILE` (written atomically before the reply leaves), so a restarted
party goes on counting instead of starting from zero; both are tagged with the server's
``federation-id``, and a state of another federation is not carried over: its file is kept as
``dp_accountant.<its federation id>.json`` (never overwritten; the party's log says so). A file that
cannot be read is a :class:`~client.kge.local_dp.LocalDpError` naming it, never a fresh start.

With ``dp-target-epsilon`` the accountant is also a privacy filter
(:func:`client.kge.local_dp.check_budget`): a release that would take the party past the target (e.g.
a resumed run re-running a round) is refused with
:class:`~client.kge.local_dp.PrivacyBudgetExceeded` before any noise is drawn.

:func:`release_encoder` does the same for the SimSkip phase's encoder + head weights (a federated
phase under ``dp = local``): the whole update against the downloaded global weights, clipped to
``dp-clip-encoder``, the same ``z``, counted by the same accountant (one release per SimSkip round). With
``dp-target-epsilon``, ``z`` is calibrated over ``num-server-rounds`` plus the SimSkip rounds
(:func:`client.kge.run_config.simskip_releases`), for the rows and the weights alike.

What the party tells the server (train reply metrics): ``dp-epsilon`` and ``dp-releases`` (so
far, this release included), ``dp-noise-multiplier`` and ``dp-delta``, all data-independent. The
update's norm and whether it was clipped depend on the data: they go to the party's own log only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from client.kge.local_dp import LocalDpError, LocalDpSpec, PartyAccountant, check_budget, release_rows, release_weights
from client.kge.refinement_config import RefinementConfig
from client.kge.run_folder import atomic_write_text
from client.kge.settings import FederationSettings
from client.party_log import note

__all__ = ["DP_STATE", "DP_STATE_FILE", "release_encoder", "release_upload"]

#: ``context.state`` config record of the party's accountant: ``federation-id``, ``state`` (JSON).
DP_STATE = "dp-accountant"
#: The same, as a file in the party's output folder (kept across a SuperNode restart).
DP_STATE_FILE = "dp_accountant.json"


def _read_state_file(path: Path) -> dict[str, Any]:
    """``dp_accountant.json``: its ``federation-id`` and ``state``.

    :raises LocalDpError: naming ``path``, when it is not such a JSON object.
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LocalDpError(f"{path}: the party's DP accountant cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("federation-id"), str) or "state" not in saved:
        raise LocalDpError(f"{path}: not a DP accountant file (expected an object with 'federation-id' and 'state')")
    return saved


def _load_accountant(context: Context, out: Path | None, federation_id: str, delta: float) -> PartyAccountant:
    """The party's accountant of this federation: from ``context.state``, else its file, else new. A file of
    another federation is kept as ``dp_accountant.<its id>.json`` (:func:`_supersede`).

    :raises LocalDpError: the file (named) cannot be read, or its state cannot be loaded.
    """
    path = out / DP_STATE_FILE if out is not None else None
    saved: dict[str, Any] | None = None
    source = f"context.state[{DP_STATE!r}]"
    if DP_STATE in context.state.config_records:
        record = context.state.config_records[DP_STATE]
        if str(record["federation-id"]) == federation_id:
            saved = {"federation-id": federation_id, "state": str(record["state"])}
    if saved is None and path is not None and path.is_file():
        on_file = _read_state_file(path)
        if on_file["federation-id"] == federation_id:
            saved, source = on_file, str(path)
        else:
            _supersede(out, path, on_file["federation-id"], federation_id)
    if saved is None:
        return PartyAccountant(delta)
    state = saved["state"]
    try:
        return PartyAccountant.from_json(state if isinstance(state, str) else json.dumps(state), delta)
    except (LocalDpError, AttributeError, TypeError) as err:
        raise LocalDpError(f"{source}: the party's DP accountant cannot be loaded: {err}") from None


def _supersede(out: Path | None, path: Path, old: str, federation_id: str) -> None:
    """Keep the accountant file of an earlier federation ``old`` as ``dp_accountant.<old>.json`` before this
    federation's replaces it, and log it (a new federation's epsilon starts from 0; the earlier one's
    releases are another federation's budget, recorded, never overwritten)."""
    safe = "".join(c for c in old if c.isalnum() or c in "-_") or "unknown"
    kept = path.with_name(f"dp_accountant.{safe}.json")
    path.replace(kept)
    note(out, f"dp: {path.name} of federation {old} kept as {kept.name}; federation {federation_id} starts its own")


def _store_accountant(context: Context, out: Path | None, federation_id: str, accountant: PartyAccountant) -> None:
    context.state[DP_STATE] = ConfigRecord({"federation-id": federation_id, "state": accountant.to_json()})
    if out is not None:
        payload = {"federation-id": federation_id, "state": accountant.state_dict(), "spent": accountant.spent()}
        atomic_write_text(out / DP_STATE_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def release_upload(
    context: Context,
    downloaded: np.ndarray,
    trained: np.ndarray,
    *,
    out: Path | None,
    federation_id: str,
    server_round: int,
) -> tuple[np.ndarray, dict[str, float | int]]:
    """The rows this party uploads, and the DP metrics of its reply.

    :param downloaded: exactly the rows the server sent this round (as received, before training).
    :param trained: the rows after local training.
    :param out: the party's output folder (``None``: none; the accountant then lives in
        ``context.state`` only).
    :returns: ``(rows, metrics)``: under ``dp = none`` the trained rows and no metrics; under
        ``dp = local`` the released rows (float64, to be cast to the wire dtype by the caller) and
        ``dp-epsilon``, ``dp-releases``, ``dp-noise-multiplier``, ``dp-delta``.
    """
    spec = _spec(context)
    if spec is None:
        return trained, {}
    accountant = _load_accountant(context, out, federation_id, spec.delta)
    check_budget(accountant, spec, f"round {server_round}")  # before any noise is drawn
    release = release_rows(trained, downloaded, spec.clip, spec.noise_multiplier)
    return release.rows, _count(context, out, federation_id, accountant, spec, release, f"round {server_round}")


def _spec(context: Context) -> LocalDpSpec | None:
    """This run's ``dp = local`` parameters, ``z`` calibrated (if so) over every release of the run."""
    from client.kge.run_config import simskip_releases

    settings = FederationSettings.from_run_config(context.run_config)
    if settings.dp != "local":
        return None
    return settings.local_dp(simskip_releases(settings, RefinementConfig.from_run_config(context.run_config)))


def _count(
    context: Context,
    out: Path | None,
    federation_id: str,
    accountant: PartyAccountant,
    spec: LocalDpSpec,
    release: Any,
    what: str,
) -> dict[str, float | int]:
    """Count one release in the party's accountant, store it before the reply leaves, log it; the reply's metrics."""
    accountant.record_release(spec.noise_multiplier)
    _store_accountant(context, out, federation_id, accountant)  # before the reply leaves
    note(
        out,
        f"{what}: dp release, update norm {release.norm:.4g}"
        + (f" clipped to {spec.clip:g}" if release.clipped else f" (clip {spec.clip:g})")
        + f", noise std {spec.noise_multiplier * spec.clip:.4g}; epsilon {accountant.epsilon:.4g} at delta "
        f"{spec.delta:g} after {accountant.releases} releases",
    )
    return {
        "dp-epsilon": float(accountant.epsilon),
        "dp-releases": int(accountant.releases),
        "dp-noise-multiplier": float(spec.noise_multiplier),
        "dp-delta": float(spec.delta),
    }


def release_encoder(
    context: Context,
    downloaded: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    trained: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    *,
    out: Path | None,
    federation_id: str,
    server_round: int,
) -> tuple[dict[str, list[tuple[str, np.ndarray]]], dict[str, float | int]]:
    """The encoder + head weights this party uploads in a federated SimSkip round, and the DP metrics.

    :param downloaded: variant -> exactly the global weights the server sent this round.
    :param trained: variant -> the weights after local training (same variants, names and shapes).
    :returns: ``(weights, metrics)``: under ``dp = none`` the trained weights and no metrics; under
        ``dp = local`` the released weights (float32; every variant's update clipped together to
        ``dp-clip-encoder``, noise ``z`` times it) and the metrics of :func:`release_upload`.
    """
    spec = _spec(context)
    if spec is None:
        return {variant: list(named) for variant, named in trained.items()}, {}
    encoder = LocalDpSpec(
        FederationSettings.from_run_config(context.run_config).dp_clip_encoder,
        spec.noise_multiplier,
        spec.delta,
        spec.target_epsilon,
    )
    accountant = _load_accountant(context, out, federation_id, spec.delta)
    check_budget(accountant, encoder, f"SimSkip round {server_round} (encoder)")
    flat_trained = [(f"{v}/{n}", a) for v, named in trained.items() for n, a in named]
    flat_downloaded = [
        (f"{v}/{n}", np.asarray(dict(downloaded[v])[n])) for v, named in trained.items() for n, _ in named
    ]
    released, release = release_weights(flat_trained, flat_downloaded, encoder.clip, encoder.noise_multiplier)
    weights: dict[str, list[tuple[str, np.ndarray]]] = {variant: [] for variant in trained}
    for key, array in released:
        variant, _, name = key.partition("/")
        weights[variant].append((name, array.astype(np.float32)))
    metrics = _count(
        context, out, federation_id, accountant, encoder, release, f"SimSkip round {server_round} (encoder)"
    )
    return weights, metrics
