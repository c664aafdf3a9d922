"""What the simulation asks Ray for: CPUs (one actor per client that trains at once) and GPU shares.

Used by :mod:`server.simulation` (``simskip-sim``) to fill Flower's backend config.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["auto_gpus_per_client", "cuda_gpu_visible", "ray_num_cpus"]


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
