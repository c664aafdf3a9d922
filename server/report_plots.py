"""The PNG plots of a run's report: ``valid_mrr.png`` (KGE phase: overall and per-client validation
MRR per round, from ``metrics.jsonl``), ``simskip_loss.png`` (SimSkip phase: NT-Xent loss per round,
from ``simskip_metrics.jsonl``) and ``refined_vs_unrefined.png`` (per protocol, the overall test MRR
gain over the unrefined rows of each other row, in points, with its 95 % paired-bootstrap interval;
from a :func:`server.results_table.build_results_table` table). Written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from client.kge.comparison import ROWS
from client.kge.run_folder import atomic_write_bytes
from server.results_table import GAIN_BASELINE, OVERALL, sorted_clients

__all__ = ["PLOT_FILES", "write_plots"]

#: The plots :func:`write_plots` may write, in the order a reader looks at them.
PLOT_FILES = ("valid_mrr.png", "simskip_loss.png", "refined_vs_unrefined.png")


def _save_figure(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def write_plots(
    out_dir: str | Path,
    *,
    kge_rows: Sequence[Mapping[str, Any]] = (),
    simskip_rows: Sequence[Mapping[str, Any]] = (),
    table: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the PNG plots whose data are given; return ``{plot name: path}`` of those written.

    :param kge_rows: ``metrics.jsonl`` rows; validated ones carry ``valid_overall`` and ``valid``.
    :param simskip_rows: ``simskip_metrics.jsonl`` rows (``simskip_loss_overall``, ``simskip_loss``).
    :param table: a :func:`build_results_table` result.
    """
    import matplotlib  # heavy (matplotlib): only writing the plots needs it

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written: dict[str, Path] = {}
    validated = [r for r in kge_rows if r.get("valid_overall")]
    if validated:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(
            [r["round"] for r in validated],
            [r["valid_overall"]["mrr"] for r in validated],
            "o-",
            label="overall",
            linewidth=2,
        )
        clients = sorted_clients(sorted({c for r in validated for c in (r.get("valid") or {})}))
        for client in clients:
            points = [(r["round"], r["valid"][client]["mrr"]) for r in validated if client in (r.get("valid") or {})]
            ax.plot(*zip(*points), "--", alpha=0.7, label=f"client {client}")
        ax.set(xlabel="KGE round", ylabel="valid MRR", title="Validation MRR per round")
        ax.legend()
        _save_figure(fig, out / "valid_mrr.png")
        plt.close(fig)
        written["valid_mrr"] = out / "valid_mrr.png"
    if simskip_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        variants = sorted({v for r in simskip_rows for v in r.get("simskip_loss_overall", {})})
        rounds = [r["round"] for r in simskip_rows]
        for variant in variants:
            ax.plot(
                rounds,
                [r["simskip_loss_overall"].get(variant) for r in simskip_rows],
                "o-",
                linewidth=2,
                label=f"{variant} (overall)",
            )
            for client in sorted_clients(sorted({c for r in simskip_rows for c in r.get("simskip_loss", {})})):
                ax.plot(
                    rounds,
                    [r["simskip_loss"].get(client, {}).get(variant) for r in simskip_rows],
                    ":",
                    alpha=0.6,
                    label=f"{variant} client {client}",
                )
        ax.set(xlabel="SimSkip round", ylabel="NT-Xent loss (last local epoch)", title="SimSkip loss per round")
        ax.legend(fontsize="small")
        _save_figure(fig, out / "simskip_loss.png")
        plt.close(fig)
        written["simskip_loss"] = out / "simskip_loss.png"
    if table is not None and table.get("protocols"):
        labels = list(table["protocols"])
        rows = [
            row
            for row in ROWS
            if row != GAIN_BASELINE and any(row in table["protocols"][label]["rows"] for label in labels)
        ]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        width = 0.8 / max(1, len(rows))
        for ax, protocol in zip(axes, ("standard", "fede"), strict=True):
            for index, row in enumerate(rows):
                xs, means, errors = [], [], [[], []]
                for position, label in enumerate(labels):
                    interval = (
                        table["protocols"][label]["intervals"]
                        .get(OVERALL, {})
                        .get(f"{protocol}.mrr:{row}-{GAIN_BASELINE}")
                    )
                    if interval is not None:
                        xs.append(position + index * width)
                        means.append(interval["mean"])
                        errors[0].append(interval["mean"] - interval["lo"])
                        errors[1].append(interval["hi"] - interval["mean"])
                ax.bar(xs, means, width, yerr=errors, capsize=2, label=row)
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_xticks(
                [i + width * (len(rows) - 1) / 2 for i in range(len(labels))], labels, rotation=20, fontsize="small"
            )
            ax.set(
                xlabel="downstream protocol",
                ylabel="overall test MRR gain over unrefined (points, 95 % CI)",
                title=f"{protocol} protocol",
            )
        axes[0].legend(fontsize="small")
        _save_figure(fig, out / "refined_vs_unrefined.png")
        plt.close(fig)
        written["refined_vs_unrefined"] = out / "refined_vs_unrefined.png"
    return written
