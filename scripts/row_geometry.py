"""How SimSkip moved a run folder's entity rows: norms, cosine and displacement, per client, as JSON.

For each client of a refined run folder (``refine_run_folder`` or a grid cell) it compares the
client's unrefined rows ``x`` (as :func:`server.downstream.load_client_inputs` reads them) with every
saved refined table ``refined/<k>/refined@<setting>.<seed>.npy`` (``refined.npy`` is setting 0,
seed 0; the encoder's output, before the gate alpha), and writes per table the mean of ``|f(x)| / |x|``, of ``cos(x, f(x))`` and of
``|f(x) - x| / |x|``, the quantiles of both norms, and the correlation of the two norms across rows.

Why it exists: a rescaling that is the same for every row leaves the ranks of bilinear models
(DistMult, ComplEx) unchanged, so a gain there must come from directions or from norms that change
unevenly; these numbers say which.

    python scripts/row_geometry.py runs/grid/FB15k-237-Fed3/DistMult/fede \\
        --out results/grid/FB15k-237-Fed3/DistMult/row_geometry.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.kge.run_folder import atomic_write_text
from server.downstream import load_client_inputs

QUANTILES = (0.1, 0.5, 0.9)


def row_geometry(x: np.ndarray, refined: np.ndarray) -> dict[str, Any]:
    """Norm ratio, cosine, relative displacement (means over rows) of ``refined`` against ``x``.

    :param x: the unrefined rows, shape ``(n, d)``.
    :param refined: the refined rows, the same shape.
    :raises ValueError: when the shapes differ.
    """
    if x.shape != refined.shape:
        raise ValueError(f"refined rows of shape {refined.shape} against unrefined rows of shape {x.shape}")
    x, refined = x.astype(np.float64), refined.astype(np.float64)
    norm_x, norm_r = np.linalg.norm(x, axis=1), np.linalg.norm(refined, axis=1)
    tiny = np.finfo(np.float64).tiny
    return {
        "rows": int(x.shape[0]),
        "norm_ratio": float(np.mean(norm_r / np.maximum(norm_x, tiny))),
        "cosine": float(np.mean((x * refined).sum(axis=1) / np.maximum(norm_x * norm_r, tiny))),
        "displacement": float(np.mean(np.linalg.norm(refined - x, axis=1) / np.maximum(norm_x, tiny))),
        "norm_correlation": float(np.corrcoef(norm_x, norm_r)[0, 1]) if x.shape[0] > 1 else None,
        "norm_quantiles": {
            "unrefined": dict(zip(map(str, QUANTILES), np.quantile(norm_x, QUANTILES).tolist(), strict=True)),
            "refined": dict(zip(map(str, QUANTILES), np.quantile(norm_r, QUANTILES).tolist(), strict=True)),
        },
    }


def run_folder_geometry(run_dir: Path) -> dict[str, Any]:
    """Per client, per saved refined table: :func:`row_geometry`."""
    config_file = run_dir / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    inputs = load_client_inputs(run_dir, config.get("run_config", {}))
    clients = {}
    for name, entry in inputs.items():
        tables = sorted((run_dir / "refined" / name).glob("refined*.npy"))
        if not tables:
            raise FileNotFoundError(f"{run_dir / 'refined' / name}: no refined tables (run refine_run_folder first)")
        clients[name] = {t.stem: row_geometry(entry["rows"], np.load(t, allow_pickle=False)) for t in tables}
    return {"run": str(run_dir), "clients": clients}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a refined run folder (a grid cell's folder)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    text = json.dumps(run_folder_geometry(args.run_dir), indent=2, sort_keys=True) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
        print(f"row_geometry: wrote {args.out}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
