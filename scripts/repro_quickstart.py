#!/usr/bin/env python
"""What changes the quick start's numbers from one machine to another: run it under emulated CPUs
and thread counts and record FedE's test MRR, valid MRR, best round and wall time (JSON).

Each variant is one ``simskip-sim --dataset UMLS --clients 3 --preset small-graph`` (the README's
quick start, SimSkip phase included) in a fresh run folder, with environment variables that
emulate another machine on this one:

* ``ATEN_CPU_CAPABILITY`` (``default`` | ``avx2`` | ``avx512``): the ATen (and Inductor) kernels a
  CPU with only that instruction set gets;
* ``MKL_ENABLE_INSTRUCTIONS`` (``SSE4_2`` | ``AVX2`` | ...): the widest code path MKL may take, as
  on a CPU without the wider ones;
* ``ONEDNN_MAX_CPU_ISA``: the same for oneDNN;
* ``--num-cpus-per-client``: torch threads per client (``OMP_NUM_THREADS``).

``SIMSKIP_NUMERICS=native`` runs as ``simskip-sim`` did before it pinned its numerics (the CPU's
own kernels); the ``pinned-*`` variants run with ``simskip-sim``'s default
(:func:`server.sim_resources.numerics_env`). The report holds per variant the environment, the
metrics of ``final_metrics.json``, the wall seconds, the 1-minute load average before and after,
and for the whole run the machine (CPU model and flags of interest, cores, torch's own CPU
capability) and the code (git commit, whether the tree differed from it, a SHA-256 of the
packages' sources).

Example (from the project root, on a machine nothing else uses)::

    nice -n 10 python scripts/repro_quickstart.py --out results/repro/quickstart-variants.json
    python scripts/repro_quickstart.py --variants native pinned --out /tmp/two.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
QUICK_START = ["--dataset", "UMLS", "--clients", "3", "--preset", "small-graph"]
PACKAGES = ("server", "client", "simskip_core", "kg_datasets")

_AVX2_CPU = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: name -> (environment, extra simskip-sim arguments, what it stands for)
VARIANTS: dict[str, tuple[dict[str, str], list[str], str]] = {
    "native": ({"SIMSKIP_NUMERICS": "native"}, [], "this CPU's own kernels (as before the pin)"),
    "native-repeat": ({"SIMSKIP_NUMERICS": "native"}, [], "the same again: run-to-run determinism"),
    "native-aten-avx2": (
        {"SIMSKIP_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "avx2"},
        [],
        "ATen kernels of an AVX2 CPU, MKL/oneDNN this CPU's",
    ),
    "native-mkl-avx2": (
        {"SIMSKIP_NUMERICS": "native", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        [],
        "MKL code path of an AVX2 CPU, ATen this CPU's",
    ),
    "native-avx2-cpu": (
        {"SIMSKIP_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "avx2", **_AVX2_CPU},
        [],
        "an AVX2 CPU without AVX-512 (ATen, MKL and oneDNN capped at AVX2)",
    ),
    "native-sse-cpu": (
        {
            "SIMSKIP_NUMERICS": "native",
            "ATEN_CPU_CAPABILITY": "default",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
        },
        [],
        "a CPU without AVX (ATen's scalar kernels, MKL/oneDNN at SSE4)",
    ),
    "native-2-threads": ({"SIMSKIP_NUMERICS": "native"}, ["--num-cpus-per-client", "2"], "2 torch threads per client"),
    "native-mkl-avx512": (
        {"SIMSKIP_NUMERICS": "native", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
        [],
        "MKL code path of a first AVX-512 generation CPU (no VNNI/BF16/AMX), ATen this CPU's",
    ),
    "pinned": ({}, [], "simskip-sim's default: kernels pinned to AVX2 paths, 1 thread per client"),
    "pinned-repeat": ({}, [], "the same again: run-to-run determinism"),
    "pinned-avx2-cpu": (_AVX2_CPU, [], "pinned, on an emulated AVX2 CPU without AVX-512"),
    "pinned-mkl-avx512": (
        {"MKL_ENABLE_INSTRUCTIONS": "AVX512"},
        [],
        "pinned, with the user's own MKL_ENABLE_INSTRUCTIONS=AVX512: does it override MKL_CBWR?",
    ),
    "pinned-2-threads": ({}, ["--num-cpus-per-client", "2"], "pinned, 2 torch threads per client"),
}


def _cpu() -> dict[str, Any]:
    """CPU model, logical cores and the instruction-set flags that change kernel choice."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "flags": [flag for flag in wanted if flag in flags],
    }


def _torch_info() -> dict[str, Any]:
    """torch's version and the CPU capability it picks here (a child process: no env leaks)."""
    code = "import torch; print(torch.__version__); print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    lines = done.stdout.split()
    return {"version": lines[0], "cpu_capability": lines[1]} if len(lines) == 2 else {"error": done.stderr[-300:]}


def _code() -> dict[str, Any]:
    """The git commit, whether the packages differ from it, and a SHA-256 over their sources."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "packages_differ_from_commit": bool(git("status", "--porcelain", "--", *PACKAGES)),
        "packages_sha256": digest.hexdigest(),
    }


def run_variant(name: str, work_dir: Path, timeout: float) -> dict[str, Any]:
    """Run the quick start as variant ``name`` in ``work_dir/name``; return its record."""
    env_extra, args, what = VARIANTS[name]
    run_dir = work_dir / name
    command = [sys.executable, "-m", "server.simulation", *QUICK_START, *args, "--quiet", "--run-dir", str(run_dir)]
    env = {k: v for k, v in os.environ.items() if k not in ("SIMSKIP_NUMERICS", *VARIANTS_ENV_KEYS)}
    env.update(env_extra)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    record: dict[str, Any] = {
        "variant": name,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
        "what": what,
        "env": env_extra,
        "args": args,
        "returncode": done.returncode,
        "wall_seconds": round(wall, 1),
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
    }
    final = run_dir / "final_metrics.json"
    if done.returncode != 0 or not final.is_file():
        record["error"] = (done.stderr or done.stdout)[-1000:]
        return record
    metrics = json.loads(final.read_text())
    record.update(
        {
            "test_mrr": metrics["test_overall"]["mrr"],
            "valid_mrr": metrics["best_valid_overall"]["mrr"],
            "best_round": metrics["best_round"],
            "rounds_run": metrics["rounds_run"],
            "test_mrr_per_client": {client: m["mrr"] for client, m in sorted(metrics["test"].items())},
        }
    )
    return record


#: every variable a variant may set: cleared from the inherited environment first
VARIANTS_ENV_KEYS = sorted(
    {key for env, _, _ in VARIANTS.values() for key in env}
    | {"ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS"}
)


def _groups(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Variants with identical test and valid MRR, keyed by ``test/valid`` (how many outcomes there are)."""
    groups: dict[str, list[str]] = {}
    for record in records:
        if "test_mrr" in record:
            key = f"test {record['test_mrr']:.6f} / valid {record['valid_mrr']:.6f} / best round {record['best_round']}"
            groups.setdefault(key, []).append(record["variant"])
    return groups


def main(argv: list[str] | None = None) -> int:
    """Run the variants, write the report, print one line per variant; 1 when any run failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    parser.add_argument("--work-dir", type=Path, default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--note", default="", help="free text stored in the report (e.g. what the code is)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the records of an existing --out for the variants not run now (each record keeps its own time)",
    )
    args = parser.parse_args(argv)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="repro-quickstart-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    records = []
    for name in args.variants:
        if (work_dir / name).exists():
            shutil.rmtree(work_dir / name)
        record = run_variant(name, work_dir, args.timeout)
        records.append(record)
        shown = (
            f"test MRR {record['test_mrr']:.4f} valid {record['valid_mrr']:.4f} best round {record['best_round']}"
            if "test_mrr" in record
            else f"FAILED ({record['error'].strip().splitlines()[-1:]})"
        )
        print(f"{name}: {shown} in {record['wall_seconds']} s", flush=True)
    if args.update and args.out.is_file():
        earlier = json.loads(args.out.read_text())
        now = {record["variant"] for record in records}
        kept = [record for record in earlier.get("variants", []) if record["variant"] not in now]
        records = sorted(kept + records, key=lambda r: list(VARIANTS).index(r["variant"]))
    report = {
        "command": "simskip-sim " + " ".join(QUICK_START),
        "script": "scripts/repro_quickstart.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "note": args.note,
        "started_utc": started,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_at_end": list(os.getloadavg()),
        "cpu": _cpu(),
        "torch": _torch_info(),
        "code": _code(),
        "variants": records,
        "outcomes": _groups(records),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
