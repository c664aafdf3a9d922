"""What the simulation asks Ray for (CPUs: one actor per client that trains at once; GPU shares;
no forwarding of the actors' output to the console) and the numerics its processes run with.

Used by :mod:`server.simulation` (``simskip-sim``) to fill Flower's backend config and the
environment of the SuperLink and everything it starts (ServerApp, Ray, the ClientApp actors).

Numerics (:func:`numerics_env`): the same run gives the same numbers on every x86-64 CPU with
AVX2 only when every kernel sums in the same order. Three libraries choose their kernels by the
CPU they find: ATen's vectorised kernels (and Inductor's generated code) by
``ATEN_CPU_CAPABILITY``, MKL's BLAS by its own dispatch (``MKL_CBWR`` fixes it), oneDNN by
``ONEDNN_MAX_CPU_ISA``; and intra-op threads split reductions (``OMP_NUM_THREADS``). By default
``simskip-sim`` pins all four (AVX2 code paths, ``--num-cpus-per-client`` threads per client);
``SIMSKIP_NUMERICS=native`` leaves the kernels to the CPU. Measured in
``results/repro/quickstart-variants.json`` (``scripts/repro_quickstart.py``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "NUMERICS_ENV",
    "PINNED_KERNELS",
    "auto_gpus_per_client",
    "cpu_has_avx2",
    "cuda_gpu_visible",
    "numerics_env",
    "ray_num_cpus",
]

#: Environment variable choosing the numerics of a simulation: ``pinned`` (default) or ``native``.
NUMERICS_ENV = "SIMSKIP_NUMERICS"
NUMERICS_CHOICES = ("pinned", "native")
#: The kernel choice ``pinned`` fixes on x86-64: AVX2 code paths in ATen (and Inductor), MKL
#: (conditional numerical reproducibility) and oneDNN, whatever wider ISA the CPU offers.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU lists the ``avx2`` flag (Linux ``/proc/cpuinfo``; ``False`` when unreadable).

    Asking ATen for AVX2 kernels on a CPU without AVX2 would stop the process on an illegal
    instruction, so :func:`numerics_env` pins the kernels only where this holds.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and " avx2 " in f" {line.split(':', 1)[-1]} " for line in text.splitlines())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numerics_env(
    num_cpus_per_client: int,
    environ: Mapping[str, str] | None = None,
    machine: str | None = None,
    has_avx2: bool | None = None,
) -> dict[str, str]:
    """Environment of the simulation's processes that makes a run's numbers machine-independent.

    ``OMP_NUM_THREADS`` = ``num_cpus_per_client`` always (Ray sets the same in its actors only when
    the variable is unset, so a shell's value would otherwise change how reductions are split);
    with ``SIMSKIP_NUMERICS=pinned`` (the default) on x86-64 also :data:`PINNED_KERNELS`, each
    unless ``environ`` sets that variable itself (an explicit choice wins).

    :param num_cpus_per_client: Ray CPUs, and so torch threads, of one virtual client.
    :param environ: the environment to complete (default ``os.environ``).
    :param machine: ``platform.machine()`` (given by tests).
    :param has_avx2: whether the CPU has AVX2 (default: :func:`cpu_has_avx2`); without it the
        kernels are left to the CPU (a CPU without AVX2 cannot run the pinned code paths).
    :raises ValueError: on an unknown ``SIMSKIP_NUMERICS`` value.
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(NUMERICS_ENV, "pinned").strip().lower() or "pinned"
    if choice not in NUMERICS_CHOICES:
        raise ValueError(f"{NUMERICS_ENV} must be one of {', '.join(NUMERICS_CHOICES)}, got {choice!r}")
    env = {"OMP_NUM_THREADS": str(int(num_cpus_per_client))}
    x86 = (machine or platform.machine()).lower() in ("x86_64", "amd64")
    if choice == "pinned" and x86 and (cpu_has_avx2() if has_avx2 is None else has_avx2):
        env.update({key: value for key, value in PINNED_KERNELS.items() if key not in environ})
    return env


def ray_num_cpus(num_clients: int, num_cpus_per_client: int = 1, concurrent_clients: int | None = None) -> int:
    """The CPU count Ray is told: room for ``concurrent_clients`` (default: every client) at once.

    Flower's Ray backend starts one actor per ``num-cpus-per-client`` CPUs Ray sees, and Ray sees
    the machine's cores by default: 16 actors for 3 clients on 16 cores (13 of them idle, each a
    process), 2 for 3 clients on 2 cores. In the second case the third client's message waits
    for the first free actor, and a round takes the sum of two clients' training on one core:
    measured on FB15k-237-Fed3 (3 clients, 2 cores, ``results/bench_round/fed3-sim-*.json``), the
    rounds took the same wall time with 3 actors sharing the cores (32.9-35.7 s against 32.7-36.4 s
    with 2), but the queue showed as 7.4-9.3 s of "framework" per round (23-26 %) against
    0.3-1.8 s (0.9-4.9 %) with all three running, and a queued client starts its round timeout late. So by default every client gets an actor;
    ``concurrent_clients`` lowers that where memory is short (each actor holds its client's model).

    :param num_clients: virtual clients in the federation.
    :param num_cpus_per_client: Ray CPUs (torch threads) of one client.
    :param concurrent_clients: clients that may train at once (>= 1; ``None``: ``num_clients``).
    :raises ValueError: on a count below 1.
    """
    concurrent = num_clients if concurrent_clients is None else concurrent_clients
    if min(num_clients, num_cpus_per_client, concurrent) < 1:
        raise ValueError(
            f"clients, CPUs per client and concurrent clients must be >= 1, got "
            f"{num_clients}, {num_cpus_per_client}, {concurrent}"
        )
    return min(concurrent, num_clients) * num_cpus_per_client


def cuda_gpu_visible() -> bool:
    """Whether this process can train on a CUDA GPU (torch is imported only where a GPU device exists)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if not any(Path("/dev").glob("nvidia[0-9]*")):  # no NVIDIA device: skip torch's import (1-2 s)
        return False
    import torch  # heavy, and only on a machine with an NVIDIA device

    return bool(torch.cuda.is_available())


def auto_gpus_per_client(
    num_clients: int, concurrent_clients: int | None = None, gpu_visible: bool | None = None
) -> float:
    """Ray GPUs per virtual client when none are asked for: one visible GPU shared by the clients
    that train at once (1/3 each for 3), none without a GPU.

    Ray runs a client that asks for no GPU with ``CUDA_VISIBLE_DEVICES`` empty, so without a share
    a GPU machine would train on its CPU.

    :param gpu_visible: the answer of :func:`cuda_gpu_visible` (looked up when ``None``).
    """
    if not (cuda_gpu_visible() if gpu_visible is None else gpu_visible):
        return 0.0
    return 1.0 / ray_num_cpus(num_clients, 1, concurrent_clients)  # one actor per client that trains at once
