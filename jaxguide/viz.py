"""Figures: sample grids, reverse-process GIFs, loss curves, classifier analyses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxguide.checks import check_int, invalid  # noqa: E402
from jaxguide.runtime import SOFTWARE, made_here  # noqa: E402, F401 (viz.made_here)


def _save_png(fig, path: str | Path, dpi: int) -> Path:
    """Writes `fig` as a PNG at exactly `path` (whatever its suffix), marked as made here."""
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": SOFTWARE})
    plt.close(fig)
    return Path(path)


def _check_images(name: str, images, form: str) -> np.ndarray:
    """`images` as a floating array (its own dtype) of shape `form` (e.g. "(N, H, W, C)"):
    every dimension >= 1, the last C = 1 (grey) or 3 (RGB), finite values; else a ValueError
    (TypeError: not floating numbers; uint8 images would all clip to white) naming `name`."""
    try:
        x = np.asarray(images)
    except ValueError:  # Ragged.
        x = np.asarray(None)
    if x.dtype.kind != "f":
        raise invalid(name, f"{type(images).__name__} of dtype {x.dtype}",
                      f"a numeric array {form} of floats in [-1, 1]", TypeError)
    if x.ndim != form.count(",") + 1 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise invalid(name, f"shape {x.shape}", f"{form} with C = 1 or 3, every dimension >= 1")
    return _check_finite(name, x)


def _check_finite(name: str, x: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contain NaN or inf, accepted finite values")
    return x


def _check_length(name: str, values, n: int, what: str) -> np.ndarray:
    """`values` as an array of shape (n,), one per `what`, else a ValueError naming it."""
    v = np.asarray(values)
    if v.shape != (n,):
        raise invalid(name, f"shape {v.shape}", f"({n},): one per {what}")
    return v


def plot_losses(records: list[dict], path: str | Path) -> Path:
    """Training loss (and held-out metrics) against step, from metrics.jsonl records."""
    if not all(isinstance(r, dict) and "step" in r for r in records):
        raise ValueError("records: accepted a list of dicts that each hold a 'step' (log lines)")
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
    return _save_png(fig, path, dpi=100)


def to_uint8(images) -> np.ndarray:
    """Images in [−1, 1], (..., H, W, C) → uint8 (..., H, W) for C = 1, (..., H, W, 3) for
    C = 3."""
    x = np.asarray(images)
    if x.dtype.kind != "f":
        raise invalid("images", f"dtype {x.dtype}", "floats in [-1, 1]", TypeError)
    if x.ndim < 3 or x.shape[-1] not in (1, 3):
        raise invalid("images", f"shape {x.shape}", "(..., H, W, C), C = 1 or 3")
    return _to_uint8(_check_finite("images", x))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    y = np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
    return y[..., 0] if y.shape[-1] == 1 else y


def tile(images, ncol: int, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) in [−1, 1] → one uint8 image of ceil(N / ncol) rows × ncol, padded:
    (rows, cols) for C = 1, (rows, cols, 3) for C = 3."""
    ncol = check_int("ncol", ncol, 1)
    pad = check_int("pad", pad, 0)
    return _tile(_to_uint8(_check_images("images", images, "(N, H, W, C)")), ncol, pad)


def _tile(imgs: np.ndarray, ncol: int, pad: int = 2) -> np.ndarray:
    """`tile` of checked uint8 images (N, H, W[, 3])."""
    n, h, w = imgs.shape[:3]
    nrow = -(-n // ncol)
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad) + imgs.shape[3:], 255,
                     np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncol)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return canvas


def save_grid(images, labels, path: str | Path, ncol: int, title: str | None = None,
              class_names=None) -> Path:
    """A labelled grid of images (N, H, W, C), labels (N,): each run of equal labels (images
    in label order) fills a block of rows of its own, ncol per row, headed by its label, or
    by class_names[label] when given."""
    ncol = check_int("ncol", ncol, 1)
    images = _check_images("images", images, "(N, H, W, C)")
    labels = _check_length("labels", labels, len(images), "image")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise invalid("labels", f"values in [{labels.min()}, {labels.max()}]",
                          f"[0, {len(class_names) - 1}] (class_names has {len(class_names)})")
    slots, blocks = _label_blocks(labels, ncol)
    names = [str(label) if class_names is None else class_names[label] for _, _, label in blocks]
    left = max(0.5, 0.1 + 0.08 * max(map(len, names)))  # Inches for the row headers.
    imgs = _to_uint8(images)
    n_rows, h = sum(rows for _, rows, _ in blocks), images.shape[1]
    placed = np.full((n_rows * ncol,) + imgs.shape[1:], 255, np.uint8)
    placed[slots] = imgs
    pad = 2
    canvas = _tile(placed, ncol, pad)  # One image: fast, unlike N subplots.
    head = 0.3 if title else 0.05  # Inches above the grid, whatever the number of rows.
    width, height = ncol * 0.75 + left + 0.1, n_rows * 0.75 + 0.05 + head
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, 0.05 / height, 1 - (left + 0.05) / width,
                       1 - (0.05 + head) / height))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    for (first, rows, _), name in zip(blocks, names):
        ax.text(-2 * pad, pad + first * (h + pad) + (rows * (h + pad) - pad) / 2, name,
                ha="right", va="center", fontsize=12 if class_names is None else 10)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save_png(fig, path, dpi=100)


def _label_blocks(labels: np.ndarray, ncol: int):
    """Where `save_grid` puts each image: (slot (N,) in a grid of ncol columns, blocks as
    (first row, rows, label) per run of equal labels, each run starting a new row)."""
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    slots, blocks, row = [], [], 0
    for start, n in zip(starts, np.diff(np.r_[starts, len(labels)])):
        slots.extend(row * ncol + np.arange(n))
        blocks.append((row, -(-n // ncol), labels[start]))
        row += blocks[-1][1]
    return np.asarray(slots, int), blocks


def save_gif(frames, path: str | Path, ncol: int, hold: int = 10, scale: int = 2,
             duration_ms: int = 120) -> Path:
    """Animates a trajectory (F, N, H, W, C) as a GIF of grids, holding the last frame.

    hold: extra copies of the last frame, 0..10 000; scale: pixel size, 1..64; duration_ms:
    per frame, 1..655 350 (GIF's limit).
    """
    from PIL import Image

    frames = _check_images("frames", frames, "(F, N, H, W, C)")
    hold, scale = check_int("hold", hold, 0, 10_000), check_int("scale", scale, 1, 64)
    duration_ms = check_int("duration_ms", duration_ms, 1, 655_350)
    ncol = check_int("ncol", ncol, 1)
    tiles = [Image.fromarray(_tile(_to_uint8(f), ncol)) for f in frames]
    tiles = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in tiles]
    tiles += [tiles[-1]] * hold
    tiles[0].save(path, format="GIF", save_all=True, append_images=tiles[1:],
                  duration=duration_ms, loop=0, comment=SOFTWARE)
    return Path(path)


def plot_classifier_over_time(ts, x_ts, probs, path: str | Path, true_label: int) -> Path:
    """Bar charts of q(y | x_t, t) (T, K) above the noised images x_t (T, H, W, C), for times
    ts (T,)."""
    x_ts = _check_images("x_ts", x_ts, "(T, H, W, C)")
    n = len(x_ts)
    ts = _check_length("ts", ts, n, "image in x_ts")
    probs = np.asarray(probs)
    if probs.ndim != 2 or len(probs) != n or probs.shape[1] < 1:
        raise invalid("probs", f"shape {probs.shape}", f"({n}, K), K >= 1: a row per image of x_ts")
    _check_finite("probs", probs)
    true_label = check_int("true_label", true_label, 0, probs.shape[1] - 1)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6))
    for i in range(n):
        colors = ["C3" if k == true_label else "C0" for k in range(probs.shape[1])]
        axes[0, i].bar(np.arange(probs.shape[1]), probs[i], color=colors)
        axes[0, i].set(ylim=(0, 1), xticks=range(0, probs.shape[1], 3), yticks=[])
        axes[0, i].tick_params(labelsize=6)
        axes[0, i].set_title(f"t={ts[i]:.2f}", fontsize=7)
        axes[1, i].imshow(_to_uint8(x_ts[i]), cmap="gray")
        axes[1, i].axis("off")
    fig.suptitle(f"noisy classifier q(y | x_t, t) for a digit {true_label} (red)", fontsize=9)
    fig.tight_layout()
    return _save_png(fig, path, dpi=110)


def plot_gradient_maps(ts, x_ts, grads, path: str | Path, labels) -> Path:
    """Noised images x_t (T, H, W, C) above ∇ₓ log q(y | x_t, t) maps (R, T, H, W, C) (summed
    over channels), one row of maps per target class in `labels` (R,), for times ts (T,)."""
    x_ts = _check_images("x_ts", x_ts, "(T, H, W, C)")
    grads = _check_images("grads", grads, "(R, T, H, W, C)")
    n, r = len(x_ts), len(grads)
    ts = _check_length("ts", ts, n, "image in x_ts")
    labels = _check_length("labels", labels, r, "row of grads")
    if grads.shape[1:] != x_ts.shape:
        raise invalid("grads", f"shape {grads.shape}", f"(R, *x_ts.shape) = {(r, *x_ts.shape)}")
    fig, axes = plt.subplots(1 + r, n, figsize=(1.1 * n, 1.2 * (1 + r)), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_to_uint8(x_ts[i]), cmap="gray")
        axes[0, i].set_title(f"t={ts[i]:.2f}", fontsize=7)
        for j in range(r):
            g = np.asarray(grads[j, i]).sum(-1)
            lim = np.abs(g).max() or 1.0
            axes[1 + j, i].imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("x_t", fontsize=8)
    for j, y in enumerate(labels):
        axes[1 + j, 0].set_ylabel(f"∇ log q({y}|x_t)", fontsize=7)
    fig.tight_layout()
    return _save_png(fig, path, dpi=110)


def plot_accuracy_vs_scale(scales, accuracies, path: str | Path, subtitle: str = "") -> Path:
    """Evaluator accuracy of guided samples (S,) in [0, 1] against the guidance scales (S,)."""
    scales, accuracies = np.asarray(scales), np.asarray(accuracies)
    if scales.ndim != 1 or accuracies.shape != scales.shape:
        raise invalid("accuracies", f"shape {accuracies.shape} for scales of shape {scales.shape}",
                      "one accuracy per scale, (S,)")
    if not np.all((accuracies >= 0) & (accuracies <= 1)):
        raise invalid("accuracies", str(accuracies), "values in [0, 1]")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(scales, accuracies, marker="o")
    ax.set(xlabel="guidance scale s", ylabel="evaluator accuracy", ylim=(0, 1.02),
           title=f"guided-sample accuracy\n{subtitle}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_png(fig, path, dpi=110)
