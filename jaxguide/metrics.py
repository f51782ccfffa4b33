"""Sample quality: an independent clean-MNIST evaluator, accuracy and Fréchet distances.

The evaluator (`nets.Evaluator`, trained by `train.py evaluator` on clean training digits
only) is never the guidance classifier. Fréchet distances are computed in its penultimate
features (128-d) in float64.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxguide import checkpoint
from jaxguide.checks import check_int, check_pixels
from jaxguide.compiler import jit


REFERENCE_FILE = checkpoint.REFERENCE_FILE


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Evaluator outputs for N images: predicted labels (N,), features (N, D) float64."""

    predictions: np.ndarray
    features: np.ndarray


class Evaluator:
    """A loaded evaluator checkpoint: `evaluator(images)` → Evaluation."""

    def __init__(self, path: str | Path, batch_size: int = 500):
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.model, self.variables, self.metadata = checkpoint.load_model(path, task="evaluator")
        self.path = Path(path)
        self._fn = jit(self._outputs)

    def _outputs(self, variables, x):
        feats = self.model.apply(variables, x, method=type(self.model).features)
        logits = self.model.apply(variables, x)
        return jnp.argmax(logits, -1), feats

    def reference(self, classes=()) -> dict[str, np.ndarray]:
        """Test-set feature statistics stored beside the checkpoint (REFERENCE_FILE), checked
        to hold those of every class in `classes`."""
        path = self.path / REFERENCE_FILE
        if not path.is_file():
            raise checkpoint.CheckpointError(f"{path}: not found (run benchmarks/quality.py "
                                             "with --data-dir to compute it)")
        try:
            with np.load(path, allow_pickle=False) as f:
                stats = dict(f)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise checkpoint.CheckpointError(f"{path}: unreadable ({e})") from e
        wanted = ["mu", "cov"] + [f"{s}_{c}" for c in classes for s in ("mu", "cov")]
        missing = [k for k in wanted if k not in stats]
        if missing:
            raise checkpoint.CheckpointError(f"{path}: has no {missing[0]}; expected the "
                                             "statistics mu, cov and mu_<c>, cov_<c> per class")
        return stats

    def __call__(self, images) -> Evaluation:
        images = check_images(images)
        preds, feats = [], []
        for lo in range(0, len(images), self.batch_size):
            p, f = self._fn(self.variables, jnp.asarray(images[lo:lo + self.batch_size]))
            preds.append(np.asarray(p))
            feats.append(np.asarray(f, np.float64))
        return Evaluation(np.concatenate(preds), np.concatenate(feats))


def check_images(images) -> np.ndarray:
    """Validates images: (N, 28, 28, 1), finite, in [−1, 1]; returns float32."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1) or len(x) == 0:
        raise ValueError(f"images: got shape {x.shape}, accepted (N, 28, 28, 1) with N >= 1")
    if not jnp.issubdtype(x.dtype, jnp.floating):  # bfloat16 included
        raise ValueError(f"images: got dtype {x.dtype}, accepted floats in [-1, 1]")
    x = x.astype(np.float32)
    check_pixels("images", x)
    return x


def check_labels(labels, n: int, num_classes: int = 10) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: got {y.dtype}{y.shape}, accepted integers of shape ({n},)")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels: got values in [{y.min()}, {y.max()}], accepted [0, {num_classes - 1}]")
    return y


def guided_accuracy(predictions, labels, num_classes: int = 10) -> tuple[float, dict[int, float]]:
    """Fraction of samples classified as their requested label: overall and per class."""
    p = np.asarray(predictions)
    y = check_labels(labels, len(p), num_classes)
    per_class = {int(c): float(np.mean(p[y == c] == c)) for c in np.unique(y)}
    return float(np.mean(p == y)), per_class


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features: got shape {f.shape}, accepted (N, D) with N >= 2")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½).

    The symmetric form of the cross term keeps every square root that of a PSD matrix (no
    complex parts to discard); eigenvalues are clipped at 0 against rounding.
    """
    if np.shape(mu_a) != np.shape(mu_b) or np.shape(cov_a) != np.shape(cov_b):
        raise ValueError(f"features: dimensions differ ({np.shape(mu_a)} vs {np.shape(mu_b)})")
    root_a = _sqrtm_psd(cov_a)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    fd = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(fd, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """FD between Gaussians fitted to features (N_a, D) and (N_b, D), in float64."""
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def reference_stats(feats, labels) -> dict[str, np.ndarray]:
    """Feature statistics of a reference set, overall and per class, as a flat dict of arrays
    (`mu`, `cov`, `mu_<c>`, `cov_<c>`) that `np.savez` can store."""
    labels = np.asarray(labels)
    out = dict(zip(("mu", "cov"), gaussian_stats(feats)))
    for c in np.unique(labels):
        out[f"mu_{c}"], out[f"cov_{c}"] = gaussian_stats(np.asarray(feats)[labels == c])
    return out


def class_frechet_distance(feats, labels, ref: dict[str, np.ndarray]) -> float:
    """Mean over the classes present in `labels` of FD(samples of class c, reference class c).

    A guide that collapses each class onto a few modes scores badly here even when the
    overall FD (which mixes classes) looks fine.
    """
    feats, labels = np.asarray(feats), np.asarray(labels)
    return float(np.mean([frechet_from_stats(*gaussian_stats(feats[labels == c]),
                                             ref[f"mu_{c}"], ref[f"cov_{c}"])
                          for c in np.unique(labels)]))


def evaluate_samples(evaluator: "Evaluator", images, labels, ref: dict[str, np.ndarray]) -> dict:
    """Accuracy (overall and per class), FD and class-FD of guided samples against `ref`."""
    ev = evaluator(images)
    acc, per_class = guided_accuracy(ev.predictions, labels)
    return {"accuracy": acc, "per_class_accuracy": per_class,
            "fd": frechet_from_stats(*gaussian_stats(ev.features), ref["mu"], ref["cov"]),
            "class_fd": class_frechet_distance(ev.features, labels, ref), "n": len(ev.predictions)}
