"""SimSkip phase + downstream link prediction on a FINISHED run folder, in this process.

This is the "refine only" path: it reads what a KGE run left in its folder and runs the same
steps the federated phase runs through Flower (:func:`client.kge.refinement.run_refinement`
performs the rounds of FedAvg over the encoder/head weights without transport), then the
downstream protocols per client (:func:`client.kge.comparison.evaluate_client_rows`), then
the report (:func:`server.report.write_report`). It needs the clients' data and private outputs,
so it is for simulation / single-machine runs (``simskip-sim``) where both live in the folder.

Inputs in ``RUN_DIR`` (as ``simskip-sim`` writes them):

* ``config.json``: ``run_config`` (with ``client-data-root`` and ``client-output-root``) and ``kge``;
* ``<client-data-root>/<k>/{train,valid,test}.txt``: client ``k``'s triples;
* ``<client-output-root>/<k>/entity_embeddings.npy`` + ``entities.tsv``: its best-round entity
  rows in local-id order (else the global ``entity_embeddings.npy`` + ``entities.tsv`` are used,
  e.g. for the collection setting), and ``relation_embeddings.npz`` (its trained relations,
  for the ``as-trained`` protocol and the trained-relation starts; left out when absent or not in
  the client's id space; and for the structure view when ``simskip-augmentations`` names
  ``row_view``, :mod:`client.kge.structure_view`, which then fails naming the client without them).

Outputs: ``simskip_metrics.jsonl`` (one row per SimSkip round), ``downstream.json`` (every
client's record: per protocol, seed and row the test metrics, valid curve and displacement, and
the valid-only choice of the refined setting), ``downstream_rr.npz`` (per-triple reciprocal
ranks), ``refined/<k>/<variant>.npy`` (every encoder's output, local-id order), and the report files.

Resume: the phase takes tens of minutes on FB15k-237 splits, so what it finishes is kept in
``refine_checkpoint/`` while it runs (the SimSkip rounds' outcome, then each client's downstream
record as it ends) and removed with the report. Run the same command again after a crash and it
goes on from there; a checkpoint written under another config is discarded, with a log line.

Usage: ``python -m server.downstream RUN_DIR [--set simskip-rounds=5 ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.kge.comparison import evaluate_client_rows
from client.kge.config import KGEConfig, add_set_option, parse_set_options
from client.kge.local_dp import LocalDpSpec, PartyAccountant
from client.kge.protocols import protocol_labels, relations_fit
from client.kge.refinement import RefinementConfig, run_refinement
from client.kge.run_config import simskip_releases
from client.kge.run_folder import FINAL_METRICS, atomic_write_text, save_npy_atomic
from client.kge.settings import FederationSettings
from client.kge.structure_view import StructureViewError, client_structure_view
from kg_datasets import load_client_folder
from server.checkpoint import REFINE_CHECKPOINT_DIR
from server.report import DOWNSTREAM_FILE, RANKS_FILE, SIMSKIP_METRICS_FILE, load_ranks, save_ranks, write_report

__all__ = ["RunFolderError", "load_client_inputs", "main", "refine_run_folder", "write_downstream_and_report"]


class RunFolderError(ValueError):
    """The run folder lacks what the refinement needs, or its files do not agree."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing (is this a finished run folder?)") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: malformed JSON: {error}") from None


def _read_labels(path: Path) -> list[str]:
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        ident, sep, label = line.partition("\t")
        if not sep or not ident.strip().isdigit() or int(ident) != len(labels):
            raise RunFolderError(f"{path}:{number}: expected '<id>\\t<label>' with ids 0, 1, 2, ... got {line!r}")
        labels.append(label)
    return labels


def load_client_inputs(run_dir: Path, run_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per client: ``{"graph", "rows", "relation_state"}`` from the run folder.

    :raises RunFolderError: naming the missing or disagreeing file.
    """
    data_root = Path(str(run_config.get("client-data-root") or run_dir / "data"))
    output_root = Path(str(run_config.get("client-output-root") or run_dir / "clients"))
    if not data_root.is_dir():
        raise RunFolderError(f"{data_root}: no client data folders (refine-only needs the clients' data)")
    names = sorted((p.name for p in data_root.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    if not names:
        raise RunFolderError(f"{data_root}: no client folders 0/, 1/, ...")
    global_table = global_index = None
    inputs = {}
    for name in names:
        graph = load_client_folder(data_root / name, client_id=int(name))
        own = output_root / name
        if (own / "entity_embeddings.npy").is_file():
            rows = np.load(own / "entity_embeddings.npy", allow_pickle=False)
            labels = _read_labels(own / "entities.tsv")
            if labels != graph.entity_labels:
                raise RunFolderError(
                    f"{own / 'entities.tsv'}: entity order differs from client {name}'s train entities"
                )
        else:
            if global_table is None:
                global_table = np.load(run_dir / "entity_embeddings.npy", allow_pickle=False)
                global_index = {label: i for i, label in enumerate(_read_labels(run_dir / "entities.tsv"))}
            missing = [label for label in graph.entity_labels if label not in global_index]
            if missing:
                raise RunFolderError(
                    f"{run_dir / 'entities.tsv'}: lacks {len(missing)} entities of client {name}, e.g. {missing[0]!r}"
                )
            rows = global_table[[global_index[label] for label in graph.entity_labels]]
        if rows.shape[0] != graph.num_entities or not np.isfinite(rows).all():
            raise RunFolderError(
                f"client {name}: entity rows of shape {rows.shape} (non-finite or not {graph.num_entities} rows)"
            )
        relation_state = None
        npz = own / "relation_embeddings.npz"
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as archive:
                relation_state = {key: archive[key] for key in archive.files}
        inputs[name] = {
            "graph": graph,
            "rows": np.ascontiguousarray(rows, dtype=np.float32),
            "relation_state": relation_state,
        }
    return inputs


def _encoder_dp(
    run_dir: Path, settings: FederationSettings, refinement: RefinementConfig, log: Any
) -> tuple[LocalDpSpec | None, dict[str, PartyAccountant] | None]:
    """``dp = local`` with a federated SimSkip phase: the encoder's release (``dp-clip-encoder``, the run's
    ``z``) and each client's accountant, continued from the KGE phase's releases that
    ``final_metrics.json`` records (``dp.parties``: releases and noise multiplier), else fresh (said in
    the log). ``(None, None)`` otherwise.

    :raises RunFolderError: ``dp-clip-encoder`` unset.
    """
    spec = settings.local_dp(simskip_releases(settings, refinement))
    if spec is None or not refinement.federate:
        return None, None
    if settings.dp_clip_encoder <= 0:
        raise RunFolderError("dp = local with a federated SimSkip phase needs dp-clip-encoder > 0 (--set)")
    encoder = LocalDpSpec(settings.dp_clip_encoder, spec.noise_multiplier, spec.delta, spec.target_epsilon)
    final = run_dir / FINAL_METRICS
    parties = (_read_json(final).get("dp") or {}).get("parties", {}) if final.is_file() else {}
    accountants = {}
    for name, spent in parties.items():
        accountants[name] = PartyAccountant(spec.delta)
        if int(spent.get("releases", 0)) > 0:
            accountants[name].record_release(float(spent["noise_multiplier"]), int(spent["releases"]))
    if not parties:
        log(f"dp = local: {final} records no KGE releases; the SimSkip phase's accountants start from zero")
    return encoder, accountants


def refine_run_folder(
    run_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    device: str | None = None,
    log: Any = print,
) -> dict[str, Path]:
    """Run the SimSkip phase, the downstream evaluation and the report on a finished run folder.

    :param run_dir: the folder of a finished KGE run.
    :param overrides: run-config values replacing the recorded ones (e.g. ``simskip-rounds``).
    :param device: training device of the downstream protocols (CUDA when present by default).
    :returns: the report's files.
    """
    run_dir = Path(run_dir).resolve()
    recorded = _read_json(run_dir / "config.json")
    run_config = {**recorded.get("run_config", {}), **dict(overrides or {})}
    kge_config = KGEConfig.from_run_config(recorded.get("kge", {}))
    refinement = RefinementConfig.from_run_config(run_config)
    if not refinement.enabled:
        raise RunFolderError("simskip-rounds is 0: nothing to refine")
    inputs = load_client_inputs(run_dir, run_config)
    started = time.perf_counter()
    rows_log: list[str] = []

    def on_round(record: dict[str, Any]) -> None:
        rows_log.append(json.dumps(record, sort_keys=True))
        atomic_write_text(run_dir / SIMSKIP_METRICS_FILE, "\n".join(rows_log) + "\n")
        log(
            f"[simskip round {record['round']}/{refinement.rounds}] {record['seconds']:.1f}s loss "
            + " ".join(f"{v}={x:.4f}" for v, x in record["simskip_loss_overall"].items())
        )

    key = {"run_config": run_config, "kge": kge_config.to_run_config(), "inputs": _input_digests(inputs)}
    checkpoint = _RefineCheckpoint(run_dir, key, log)
    refined = checkpoint.load_refined({name: item["rows"].shape for name, item in inputs.items()})
    if refined is None:
        checkpoint.remove()  # the clients' units were computed from the SimSkip outcome now replaced
        settings = FederationSettings.from_run_config(run_config)
        encoder_dp, accountants = _encoder_dp(run_dir, settings, refinement, log)
        result = run_refinement(
            {name: item["rows"] for name, item in inputs.items()},
            refinement,
            on_round_end=on_round,
            aggregation=settings.aggregation,
            aggregation_trim=settings.aggregation_trim,
            row_views=_row_views(inputs, kge_config, refinement) if refinement.uses_row_view else None,
            dp=encoder_dp,
            accountants=accountants,
        )
        refined = result.refined
        checkpoint.save_refined(refined, time.perf_counter() - started)
    simskip_seconds = checkpoint.simskip_seconds

    records: dict[str, dict[str, Any]] = {}
    ranks: dict[str, dict[str, np.ndarray]] = {}
    downstream_seconds = 0.0
    for name, item in inputs.items():
        restored = checkpoint.load_client(name)
        if restored is not None:
            records[name], ranks[name], seconds = restored
            downstream_seconds += seconds
            continue
        started = time.perf_counter()
        relation_state = item["relation_state"]
        if relation_state is not None and not relations_fit(item["graph"], kge_config, relation_state):
            log(f"client {name}: its relations do not fit its model (pooled id space): no as-trained protocol")
            relation_state = None
        records[name], ranks[name] = evaluate_client_rows(
            item["graph"],
            kge_config,
            item["rows"],
            refined[name],
            refinement,
            relation_state=relation_state,
            device=device,
            log=lambda line: log(f"[downstream] {line}"),
        )
        seconds = time.perf_counter() - started
        downstream_seconds += seconds
        checkpoint.save_client(name, records[name], ranks[name], seconds)
    written = write_downstream_and_report(
        run_dir,
        records,
        ranks,
        kge_config=kge_config,
        refinement=refinement,
        setting=str(run_config.get("setting", "?")),
        extra={
            "simskip_seconds": round(simskip_seconds, 3),
            "downstream_seconds": round(downstream_seconds, 3),
            "source": "refine-only",
            **({"restored_from_checkpoint": checkpoint.restored} if checkpoint.restored else {}),
        },
    )
    checkpoint.remove()
    return written


def _input_digests(inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per client, a SHA-1 of its rows and trained relations: a checkpoint unit of the same config
    but of other inputs (the KGE step trained again in the same folder) is never restored."""
    digests = {}
    for name, item in inputs.items():
        digest = hashlib.sha1(np.ascontiguousarray(item["rows"]).tobytes())
        for key, value in sorted((item["relation_state"] or {}).items()):
            digest.update(key.encode("utf-8"))
            digest.update(np.ascontiguousarray(value).tobytes())
        digests[name] = digest.hexdigest()
    return digests


class _RefineCheckpoint:
    """What an unfinished :func:`refine_run_folder` completed, in ``<run_dir>/refine_checkpoint/``.

    Written here rather than through :mod:`server.checkpoint` (the KGE rounds' checkpoint): the
    units are different (the SimSkip outcome, then one downstream record per client), each is
    written once, atomically, and a unit is used only when ``key`` (the run and KGE config and the
    inputs' digests) is the one it was written under. A unit's ``.json`` is written last and
    removed before its data is rewritten, so it never vouches for data of another call.

    :param run_dir: the run folder.
    :param key: what the units must have been written under (JSON-able).
    :param log: receives one line per restored or discarded unit.
    """

    def __init__(self, run_dir: Path, key: Mapping[str, Any], log: Any) -> None:
        self.folder = run_dir / REFINE_CHECKPOINT_DIR
        self.refined_dir = run_dir / "refined"
        self.key = json.loads(json.dumps(key, sort_keys=True))
        self.log = log
        self.simskip_seconds = 0.0
        #: ``{"simskip": True, "clients": [...], "seconds": s}``: the units this call restored instead
        #: of running, and the seconds they took in the earlier call(s).
        self.restored: dict[str, Any] = {}

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        if not path.is_file():
            return None
        try:
            unit = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            self.log(f"{path}: unreadable ({error}); running that step again")
            return None
        if not isinstance(unit, dict) or not {"key", "seconds"} <= set(unit):
            self.log(f"{path}: not a unit of this format; running that step again")
            return None
        if unit["key"] != self.key:
            self.log(f"{path}: written under another config; running that step again")
            return None
        return unit

    def load_refined(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, np.ndarray]] | None:
        """The SimSkip phase's ``{client: {variant: rows}}`` if an earlier call finished it."""
        unit = self._read("simskip.json")
        if unit is None:
            return None
        refined: dict[str, dict[str, np.ndarray]] = {}
        try:
            for name, variants in unit["variants"].items():
                refined[name] = {v: np.load(self.refined_dir / name / f"{v}.npy") for v in variants}
        except (OSError, ValueError, KeyError, AttributeError) as error:
            self.log(f"{self.folder / 'simskip.json'}: refined rows unreadable ({error}); running SimSkip again")
            return None
        if set(refined) != set(shapes) or any(r.shape != shapes[n] for n, v in refined.items() for r in v.values()):
            self.log(
                f"{self.folder / 'simskip.json'}: refined rows do not match the clients' rows; running SimSkip again"
            )
            return None
        self.simskip_seconds = float(unit["seconds"])
        self.restored["simskip"] = True
        self.restored["seconds"] = self.restored.get("seconds", 0.0) + self.simskip_seconds
        self.log(f"SimSkip phase restored from {self.folder} (ran {self.simskip_seconds:.1f}s in an earlier call)")
        return refined

    def save_refined(self, refined: Mapping[str, Mapping[str, np.ndarray]], seconds: float) -> None:
        """Write every encoder's output to ``refined/`` and then the unit that vouches for them."""
        (self.folder / "simskip.json").unlink(missing_ok=True)
        for name, variants in refined.items():
            for variant, rows in variants.items():
                save_npy_atomic(self.refined_dir / name / f"{variant}.npy", rows)
        self.simskip_seconds = seconds
        unit = {"key": self.key, "seconds": seconds, "variants": {n: sorted(v) for n, v in refined.items()}}
        atomic_write_text(self.folder / "simskip.json", json.dumps(unit) + "\n")

    def load_client(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray], float] | None:
        """Client ``name``'s downstream ``(record, reciprocal ranks, seconds)`` if an earlier call finished it."""
        unit = self._read(f"client-{name}.json")
        if unit is None:
            return None
        archive = self.folder / f"client-{name}.npz"
        try:
            if "record" not in unit or not archive.is_file():
                raise ValueError("no record or no ranks")
            # a client whose every protocol was skipped has no ranks: an archive without entries
            ranks = load_ranks(archive).get(name, {})
        except ValueError as error:  # ReportInputError is a ValueError
            self.log(f"{archive}: unreadable ({error}); running client {name} again")
            return None
        self.restored.setdefault("clients", []).append(name)
        self.restored["seconds"] = self.restored.get("seconds", 0.0) + float(unit["seconds"])
        self.log(f"client {name}: downstream record restored from {self.folder} ({unit['seconds']:.1f}s earlier)")
        return unit["record"], ranks, float(unit["seconds"])

    def save_client(
        self, name: str, record: Mapping[str, Any], ranks: Mapping[str, np.ndarray], seconds: float
    ) -> None:
        """Keep client ``name``'s finished downstream record (the ranks first, then the unit)."""
        (self.folder / f"client-{name}.json").unlink(missing_ok=True)
        save_ranks(self.folder / f"client-{name}.npz", {name: ranks})
        unit = {"key": self.key, "seconds": seconds, "record": record}
        atomic_write_text(self.folder / f"client-{name}.json", json.dumps(unit) + "\n")

    def remove(self) -> None:
        """Drop the folder once ``downstream.json`` and the report hold everything."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _row_views(
    inputs: Mapping[str, Mapping[str, Any]], kge_config: KGEConfig, refinement: RefinementConfig
) -> dict[str, Any]:
    """Each client's structure view (``simskip-augmentations`` names ``row_view``): its train
    triples, its rows and its own trained relations (``relation_embeddings.npz``).

    :raises RunFolderError: naming the client whose relations are missing or do not fit its model.
    """
    views = {}
    for name, item in inputs.items():
        try:
            views[name] = client_structure_view(
                item["graph"], kge_config, item["rows"], item["relation_state"], mix=refinement.structure_mix
            )
        except StructureViewError as error:
            raise RunFolderError(
                f"{error} (refine-only reads <client-output-root>/{name}/relation_embeddings.npz)"
            ) from None
    return views


def write_downstream_and_report(
    run_dir: str | Path,
    clients: Mapping[str, Mapping[str, Any]],
    ranks: Mapping[str, Mapping[str, np.ndarray]],
    *,
    kge_config: Any,
    refinement: Any,
    setting: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``downstream.json``, ``downstream_rr.npz`` and the report (tables + plots) into ``run_dir``.

    :param clients: ``{client: record}`` of :func:`client.kge.comparison.evaluate_client_rows`.
    :param ranks: ``{client: {rr_key: per-triple reciprocal ranks}}``.
    :param kge_config: the run's :class:`~client.kge.config.KGEConfig`.
    :param refinement: the run's :class:`~client.kge.refinement.RefinementConfig`.
    :param setting: the KGE setting (for the notes).
    :param extra: more fields of ``downstream.json`` (timings, source, and ``missing_clients``:
        ``{client: reason}`` of clients without a result, named in the notes).
    """
    run_dir = Path(run_dir)
    payload = {
        "clients": dict(clients),
        "refinement": refinement.to_run_config(),
        "kge": kge_config.to_run_config(),
        "setting": setting,
        **dict(extra or {}),
    }
    save_ranks(run_dir / RANKS_FILE, ranks)
    atomic_write_text(run_dir / DOWNSTREAM_FILE, json.dumps(payload, indent=2) + "\n")  # keys in table order
    settings = refinement.search_settings()
    notes = [
        f"KGE: {kge_config.model}, dim {kge_config.embedding_dim}, setting {setting}",
        (
            f"SimSkip: {refinement.rounds} rounds x {refinement.local_epochs} local epochs, "
            f"{'FedAvg of encoder+head' if refinement.federate else 'local-only'}; "
            f"{'scale-aware (rows standardized by their RMS)' if refinement.simskip.standardize else 'NOT scale-aware'}; "
            f"{refinement.downstream_seeds} seed(s)"
        ),
        (
            f"Refined rows: x + alpha (f(x) - x), the search setting ({len(settings)}: {settings}) and alpha "
            f"({[a for a in refinement.gate_grid if a > 0]}) chosen per client and protocol on VALID MRR "
            f"({kge_config.eval_protocol} protocol); perturbed: the unrefined rows moved in random directions by the refined "
            "rows' per-row displacement"
        ),
        (
            f"Protocols {protocol_labels(refinement.downstream_protocols, refinement.refit_init)}; trained ones stop after "
            f"{refinement.downstream_patience} checks without a better valid MRR, at most {refinement.refit_epochs} epochs; "
            "same seed, relation init and budget for every row"
        ),
        "SimSkip displacement (raw encoder output, mean ||f(x) - x|| / ||x||): "
        + "; ".join(
            f"client {name}: "
            + ", ".join(f"{variant} {value:.4f}" for variant, value in record.get("simskip_displacement", {}).items())
            for name, record in clients.items()
        ),
    ]
    skipped = {name: record.get("skipped") for name, record in clients.items() if record.get("skipped")}
    if skipped:
        notes.append(f"Skipped protocols: {skipped}")
    missing = dict((extra or {}).get("missing_clients") or {})
    if missing:
        notes.append(
            f"INCOMPLETE: no downstream result from client(s) {sorted(missing)}; every row and the "
            f"overall column cover the other clients only ({missing})"
        )
    return write_report(run_dir, notes=notes)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server.downstream RUN_DIR [--set KEY=VALUE ...]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m server.downstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="folder of a finished KGE run")
    add_set_option(parser, dest="sets", help="override a simskip-* / refit-* run-config value (repeatable)")
    args = parser.parse_args(argv)
    try:
        written = refine_run_folder(args.run_dir, parse_set_options(args.sets))
    except Exception as error:  # noqa: BLE001 - the command's boundary
        print(f"[refine-only] error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"[refine-only] wrote {', '.join(str(p) for p in written.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
