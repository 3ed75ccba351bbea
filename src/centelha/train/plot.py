"""The loss curve of a run, and its other measures, as PNGs drawn from its JSONL log."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from centelha.atomic import atomic_write  # noqa: E402


def plot_loss(rows: list[dict], path: Path, baseline: float | None = None) -> None:
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", markersize=3)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


# Measures that are not losses, drawn on their own figure (DPO's rewards are logged per
# step as TRL names them; the held-out ones carry an `eval_` prefix).
NOT_METRICS = {"step", "loss", "lr", "tokens_per_s", "mfu", "val_loss", "val_ppl"}


def plot_metrics(rows: list[dict], path: Path) -> None:
    """Every other measure in the log (accuracy, F1, rewards) against the step; nothing is
    written when the log has none (pretraining)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in NOT_METRICS and isinstance(value, (int, float)):
                series.setdefault(key, []).append((row["step"], value))
    if not series:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key, points in sorted(series.items()):
        ax.plot(*zip(*points, strict=True), "o-" if len(points) < 30 else "-", label=key,
                markersize=3, linewidth=1)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
