#!/usr/bin/env python
"""Benchmarks of SimSkip refinement (run by hand; JSON on stdout).

Modes:

``speed`` (default)
    Refine a random 14,541 x 128 float32 matrix (FB15k-237's entity count) for 20 epochs on CPU
    and report seconds per epoch and peak RSS. Target: <= 1 s per epoch on 2 CPU cores.

``digits-sweep``
    The validation sweep behind ``SimSkipConfig``'s defaults: scikit-learn's digits data, the
    test split (``test_size=0.25, random_state=0``, stratified) set aside and never touched;
    a validation split (25 % of train, ``random_state=1``) carved from the train part. Pixels are
    standardized on the remaining train rows, SimSkip is fitted on those rows, and a
    logistic-regression probe trained on them is scored on the validation rows, for the input and
    for each candidate config over several seeds.

``digits-test``
    The final check with the chosen defaults on the held-out test split: input vs refined vs the
    no-skip ablation (what ``tests/test_simskip_digits.py`` asserts).

Examples::

    python scripts/bench_simskip.py speed --epochs 20 --threads 2
    python scripts/bench_simskip.py digits-sweep --threads 1 --seeds 0 1 2 --val-splits 1 2 3
    python scripts/bench_simskip.py digits-test
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import numpy as np
import torch

from simskip_core import SimSkipConfig, SimSkipTrainer


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_speed(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows, dim = args.rows, args.dim
    X = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    overrides = {"device": "cpu", "epochs": args.epochs, **({"batch_size": args.batch_size} if args.batch_size else {})}
    config = SimSkipConfig().replace(**overrides)
    trainer = SimSkipTrainer(dim, config)
    start = time.perf_counter()
    losses = trainer.fit(X)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.transform(X)
    transform_seconds = time.perf_counter() - start
    per_epoch = trainer.epoch_seconds
    return {
        "mode": "speed",
        "rows": rows,
        "dim": dim,
        "epochs": args.epochs,
        "batch_size": config.batch_size,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_epoch_mean": fit_seconds / max(1, args.epochs),
        "seconds_per_epoch_median": float(np.median(per_epoch)) if per_epoch else None,
        "seconds_per_epoch_max": max(per_epoch) if per_epoch else None,
        "fit_seconds": fit_seconds,
        "transform_seconds": transform_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "target_seconds_per_epoch": 1.0,
        "meets_target": fit_seconds / max(1, args.epochs) <= 1.0,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }


# --------------------------------------------------------------------------- digits
def digits_splits(val_seed: int = 1) -> dict[str, np.ndarray]:
    """The fixed digits splits: train / test (held out) and train-sub / validation (from train).

    :param val_seed: ``random_state`` of the validation carve-out (the test split never changes).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    X_sub, X_val, y_sub, y_val = train_test_split(
        X_train, y_train, test_size=0.25, random_state=val_seed, stratify=y_train
    )
    return {
        "X_train": X_train,
        "y_train": y_train,
        "X_test": X_test,
        "y_test": y_test,
        "X_sub": X_sub,
        "y_sub": y_sub,
        "X_val": X_val,
        "y_val": y_val,
    }


def probe_accuracy(X_fit: np.ndarray, y_fit: np.ndarray, X_eval: np.ndarray, y_eval: np.ndarray) -> float:
    """Test accuracy of a logistic-regression probe (fixed settings, no tuning)."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=5000)
    probe.fit(X_fit, y_fit)
    return float(probe.score(X_eval, y_eval))


def refined_accuracy(config: SimSkipConfig, X_fit, y_fit, X_eval, y_eval, details: dict | None = None) -> float:
    """Standardize on ``X_fit``, fit SimSkip on ``X_fit`` only, probe on the refined rows.

    :param details: if given, receives ``relative_change`` (``||f(Z) - Z|| / ||Z||`` on the
        evaluation rows) and the first and last epoch losses.
    """
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_fit)
    Z_fit, Z_eval = scaler.transform(X_fit).astype(np.float32), scaler.transform(X_eval).astype(np.float32)
    trainer = SimSkipTrainer(Z_fit.shape[1], config)
    losses = trainer.fit(Z_fit)
    refined_eval = trainer.transform(Z_eval)
    if details is not None:
        details.update(
            relative_change=float(np.linalg.norm(refined_eval - Z_eval) / np.linalg.norm(Z_eval)),
            first_loss=losses[0] if losses else None,
            last_loss=losses[-1] if losses else None,
        )
    return probe_accuracy(trainer.transform(Z_fit), y_fit, refined_eval, y_eval)


def input_accuracy(X_fit, y_fit, X_eval, y_eval) -> float:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_fit)
    return probe_accuracy(scaler.transform(X_fit), y_fit, scaler.transform(X_eval), y_eval)


SWEEP: list[dict[str, Any]] = [
    {},
    {"epochs": 20},
    {"epochs": 100},
    {"epochs": 200},
    {"lr": 3e-4},
    {"lr": 3e-3},
    {"temperature": 0.1},
    {"temperature": 0.2},
    {"temperature": 1.0},
    {"mask_prob": 0.0},
    {"mask_prob": 0.1},
    {"mask_prob": 0.4},
    {"noise_std": 0.0},
    {"noise_std": 0.05},
    {"noise_std": 0.3},
    {"noise_std": 0.5},
    {"hidden_dim": 256},
    {"num_layers": 3},
    {"projection_dim": 16},
    {"projection_dim": 64},
    {"batch_size": 128},
    {"batch_size": 256},
    {"weight_decay": 0.0},
    {"weight_decay": 1e-4},
    {"skip": False},
]


def bench_digits_sweep(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    splits = [digits_splits(val_seed) for val_seed in args.val_splits]
    fit_vals = [(d["X_sub"], d["y_sub"], d["X_val"], d["y_val"]) for d in splits]
    base = SimSkipConfig(device="cpu")
    candidates = [json.loads(c) for c in args.candidates] if args.candidates else SWEEP
    results = []
    for changes in candidates:
        config = base.replace(**changes)
        # One accuracy per (validation split, seed): the mean smooths the +-1-sample noise of
        # a 337-row validation set.
        accs = [refined_accuracy(config.replace(seed=seed), *fit_val) for fit_val in fit_vals for seed in args.seeds]
        results.append(
            {
                "changes": changes,
                "val_acc_mean": float(np.mean(accs)),
                "val_acc_min": float(min(accs)),
                "val_accs": accs,
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    input_accs = [input_accuracy(*fit_val) for fit_val in fit_vals]
    return {
        "mode": "digits-sweep",
        "base_config": base.to_dict(),
        "seeds": args.seeds,
        "val_splits": args.val_splits,
        "val_input_accs": input_accs,
        "val_input_acc_mean": float(np.mean(input_accs)),
        "results": sorted(results, key=lambda r: -r["val_acc_mean"]),
    }


def bench_digits_test(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data = digits_splits()
    fit_test = (data["X_train"], data["y_train"], data["X_test"], data["y_test"])
    config = SimSkipConfig(device="cpu")
    start = time.perf_counter()
    details: dict[str, Any] = {}
    refined = refined_accuracy(config, *fit_test, details=details)
    seconds = time.perf_counter() - start
    return {
        "mode": "digits-test",
        "config": config.to_dict(),
        "test_input_acc": input_accuracy(*fit_test),
        "test_refined_acc": refined,
        "test_no_skip_acc": refined_accuracy(config.replace(skip=False), *fit_test),
        "refine_and_probe_seconds": seconds,
        **details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="speed", choices=["speed", "digits-sweep", "digits-test"])
    parser.add_argument("--rows", type=int, default=14541)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="default: SimSkipConfig's")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--val-splits", type=int, nargs="+", default=[1], help="random_state of each validation carve-out"
    )
    parser.add_argument("--candidates", nargs="*", help="JSON dicts of config changes (digits-sweep)")
    args = parser.parse_args(argv)
    run = {"speed": bench_speed, "digits-sweep": bench_digits_sweep, "digits-test": bench_digits_test}[args.mode]
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
