"""The epsilon of ``dp = local`` for a grid of noise multipliers and round counts, as JSON.

Each cell is what a party's accountant (:class:`client.kge.local_dp.PartyAccountant`: Google's
``dp-accounting`` RDP accountant, Gaussian with multiplier ``z / 2``, no amplification) reports
after ``T`` releases with noise multiplier ``z`` (noise std ``z * dp-clip``), at ``delta``. It also
writes the noise multiplier :func:`client.kge.local_dp.calibrate_noise_multiplier` picks for a few
target epsilons, and one check setting with the hand formula, the exact value (T Gaussians are one
with ``mu = sqrt(T) / s``) and Mironov's looser bound beside the accountant's. No training: it runs
in about a second.

    python scripts/dp_table.py --out results/privacy/dp-epsilon-table.json

``scripts/gen_docs.py`` renders the JSON into ``docs/how-to/differential-privacy.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from client.kge.local_dp import ACCOUNTANT_NAME, accountant_multiplier, calibrate_noise_multiplier, epsilon_for
from client.kge.run_folder import atomic_write_text

NOISE_MULTIPLIERS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
ROUNDS = (10, 20, 50, 100)
TARGETS = (1.0, 4.0, 8.0)
CALIBRATION_ROUNDS = (50, 100)
#: the design's check setting: accountant multiplier s = z / 2 = 5, T = 50
CHECK = (10.0, 50)


def hand_epsilon(s: float, releases: int, delta: float, orders: Sequence[float]) -> float:
    """min over ``orders`` of ``T a / (2 s^2) + log1p(-1/a) - (ln delta + ln a) / (a - 1)``."""
    a = np.asarray([order for order in orders if order > 1], dtype=np.float64)
    return float(np.min(releases * a / (2 * s * s) + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)))


def dp_table(delta: float) -> dict[str, Any]:
    """The table, the calibrations and the check, JSON-ready."""
    from dp_accounting import get_epsilon_gaussian
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

    z, releases = CHECK
    s = accountant_multiplier(z)
    return {
        "accountant": ACCOUNTANT_NAME,
        "library": f"dp-accounting {version('dp-accounting')}",
        "delta": delta,
        "sensitivity": "2 x dp-clip (whole-update clipping, any two datasets of a party); accountant multiplier z / 2",
        "epsilon": {str(z): {str(t): epsilon_for(z, t, delta) for t in ROUNDS} for z in NOISE_MULTIPLIERS},
        "calibrated_noise_multiplier": {
            str(target): {str(t): calibrate_noise_multiplier(target, t, delta) for t in CALIBRATION_ROUNDS}
            for target in TARGETS
        },
        "check": {
            "noise_multiplier": z,
            "accountant_multiplier": s,
            "releases": releases,
            "accountant": epsilon_for(z, releases, delta),
            "hand_formula": hand_epsilon(s, releases, delta, DEFAULT_RDP_ORDERS),
            "exact": float(get_epsilon_gaussian(s / math.sqrt(releases), delta)),
            "mironov": releases / (2 * s * s) + math.sqrt(2 * releases * math.log(1 / delta)) / s,
        },
        "command": "python scripts/dp_table.py " + " ".join(sys.argv[1:]),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dp_table.py",
        description="Epsilon of dp = local per noise multiplier and round count, as JSON.",
        epilog="example: python scripts/dp_table.py --out results/privacy/dp-epsilon-table.json",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    parser.add_argument("--delta", type=float, default=1e-5, help="the delta of every epsilon (default 1e-5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.delta < 1:
        parser.error(f"--delta must be in (0, 1), got {args.delta}")
    text = json.dumps(dp_table(args.delta), indent=2, sort_keys=True) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
