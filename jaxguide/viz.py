"""Figures: sample grids, reverse-process GIFs, loss curves, classifier analyses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_losses(records: list[dict], path: str | Path) -> Path:
    """Training loss (and held-out metrics) against step, from metrics.jsonl records."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = {}
    for r in records:
        for k, v in r.items():
            if k.startswith("eval/"):
                evals.setdefault(k, []).append((r["step"], v))
    fig, axes = plt.subplots(1, 1 + bool(evals), figsize=(5 + 5 * bool(evals), 3.5), squeeze=False)
    if train:
        axes[0, 0].plot(*zip(*train), lw=0.8)
    axes[0, 0].set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    for k, pts in evals.items():
        axes[0, 1].plot(*zip(*pts), marker="o", ms=3, label=k[5:])
    if evals:
        axes[0, 1].set(xlabel="step", title="held-out")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
