"""Sample quality: an independent clean-MNIST evaluator, accuracy and Fréchet distances.

The evaluator (`nets.Evaluator`, trained by `train.py evaluator` on clean training digits
only) is never the guidance classifier. Fréchet distances are computed in its penultimate
features (128-d) in float64.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxguide import checkpoint
from jaxguide.checks import check_int, check_pixels, invalid
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
            raise checkpoint.CheckpointError(f"{path}: not found (train.py evaluator writes it)")
        try:
            with np.load(path, allow_pickle=False) as f:
                stats = dict(f)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise checkpoint.CheckpointError(f"{path}: unreadable ({e})") from e
        try:
            _check_ref(stats, classes, overall=True)
        except (TypeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{path}: {e}") from e
        return stats

    def __call__(self, images) -> Evaluation:
        images = check_images(images, tuple(self.metadata["image_shape"]))
        preds, feats = [], []
        for lo in range(0, len(images), self.batch_size):
            p, f = self._fn(self.variables, jnp.asarray(images[lo:lo + self.batch_size]))
            preds.append(np.asarray(p))
            feats.append(np.asarray(f, np.float64))
        return Evaluation(np.concatenate(preds), np.concatenate(feats))


def check_images(images, image_shape: tuple[int, ...] | None) -> np.ndarray:
    """Validates images: (N, *image_shape) (None: any (N, H, W, C)), finite, in [−1, 1];
    returns float32."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1:] != (image_shape or x.shape[1:]) or len(x) == 0:
        shape = ", ".join(map(str, image_shape or "HWC"))
        raise invalid("images", f"shape {x.shape}", f"(N, {shape}) with N >= 1")
    if not jnp.issubdtype(x.dtype, jnp.floating):  # bfloat16 included
        raise invalid("images", f"dtype {x.dtype}", "floats in [-1, 1]")
    x = x.astype(np.float32)
    check_pixels("images", x)
    return x


def check_labels(labels, n: int, num_classes: int | None = None) -> np.ndarray:
    """Validates labels: integers (n,) in [0, num_classes) (>= 0 when None)."""
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise invalid("labels", f"{y.dtype}{y.shape}", f"integers of shape ({n},)")
    if y.size and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        accepted = "integers >= 0" if num_classes is None else f"[0, {num_classes - 1}]"
        raise invalid("labels", f"values in [{y.min()}, {y.max()}]", accepted)
    return y


def _class_labels(labels, n: int, num_classes: int | None = None) -> np.ndarray:
    """check_labels, and every class present at least twice (a covariance per class)."""
    y = check_labels(labels, n, num_classes)
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"labels: class {classes[counts.argmin()]} has 1 example, accepted >= 2 "
                         "per class (a covariance each)")
    return y


def guided_accuracy(predictions, labels,
                    num_classes: int | None = None) -> tuple[float, dict[int, float]]:
    """Fraction of samples whose predicted class (N,) is their requested label (N,): overall
    and per class; labels in [0, num_classes) (None: any integers >= 0)."""
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, 1)
    p = np.asarray(predictions)
    if p.ndim != 1 or len(p) < 1 or not np.issubdtype(p.dtype, np.integer):
        raise invalid("predictions", f"{p.dtype}{p.shape}",
                      "integer classes of shape (N,) with N >= 1 (predicted, not logits)")
    y = check_labels(labels, len(p), num_classes)
    per_class = {int(c): float(np.mean(p[y == c] == c)) for c in np.unique(y)}
    return float(np.mean(p == y)), per_class


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _finite_float64(name: str, value, form: str) -> np.ndarray:
    """`value` as a float64 array of finite numbers, else an error naming `name` and the `form`
    accepted (TypeError: not real numbers)."""
    try:
        arr = np.asarray(value)
    except ValueError:  # Ragged.
        arr = np.asarray(None)
    if arr.dtype.kind not in "biuf":  # Strings would be parsed, complex lose their imaginary part.
        raise invalid(name, f"{type(value).__name__} of dtype {arr.dtype}",
                      f"an array {form} of real numbers", TypeError)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contain NaN or inf, accepted finite values")
    return arr


def check_features(feats) -> np.ndarray:
    """Validates features: finite numbers (N, D), N >= 2, D >= 1; returns float64."""
    f = _finite_float64("features", feats, "(N, D)")
    if f.ndim != 2 or len(f) < 2 or f.shape[1] < 1:
        raise invalid("features", f"shape {f.shape}", "(N, D) with N >= 2, D >= 1")
    return f


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    f = check_features(feats)
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _check_stats(mu_name: str, mu, cov_name: str, cov) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian's finite mean (D,) and symmetric covariance (D, D) as float64 arrays."""
    mu, cov = _finite_float64(mu_name, mu, "(D,)"), _finite_float64(cov_name, cov, "(D, D)")
    if mu.ndim != 1 or len(mu) < 1:
        raise invalid(mu_name, f"shape {mu.shape}", "a mean (D,) with D >= 1")
    if cov.shape != (len(mu),) * 2:
        raise invalid(cov_name, f"shape {cov.shape}",
                      f"a covariance (D, D) = {(len(mu),) * 2} for {mu_name} of shape {mu.shape}")
    if not np.allclose(cov, cov.T):
        raise ValueError(f"{cov_name}: not symmetric, accepted a covariance matrix")
    if np.linalg.eigvalsh(cov).min() < -1e-6 * max(1.0, np.abs(cov).max()):
        raise ValueError(f"{cov_name}: has negative eigenvalues, accepted a PSD covariance matrix")
    return mu, cov


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^½ Σ_b Σ_a^½)^½).

    The symmetric form of the cross term keeps every square root that of a PSD matrix (no
    complex parts to discard); eigenvalues are clipped at 0 against rounding.
    """
    mu_a, cov_a = _check_stats("mu_a", mu_a, "cov_a", cov_a)
    mu_b, cov_b = _check_stats("mu_b", mu_b, "cov_b", cov_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"features: dimensions differ ({mu_a.shape} vs {mu_b.shape})")
    root_a = _sqrtm_psd(cov_a)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)))
    fd = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(fd, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """FD between Gaussians fitted to features (N_a, D) and (N_b, D), in float64."""
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def _check_ref(ref, classes, overall: bool = False) -> None:
    """Reference statistics: `mu_<c>`, `cov_<c>` for each c in classes (and `mu`, `cov`)."""
    if not isinstance(ref, Mapping):
        raise TypeError(f"ref: got {type(ref).__name__}, accepted a dict of reference "
                        "statistics (reference_stats or Evaluator.reference)")
    for suffix in [""] * overall + [f"_{c}" for c in classes]:
        mu, cov = f"mu{suffix}", f"cov{suffix}"
        if mu not in ref or cov not in ref:
            what = f"class {suffix[1:]}" if suffix else "all classes"
            raise ValueError(f"ref: has no {mu} and {cov} (the statistics of {what}), "
                             "accepted statistics of every class in labels")
        _check_stats(f"ref[{mu!r}]", ref[mu], f"ref[{cov!r}]", ref[cov])


def reference_stats(feats, labels) -> dict[str, np.ndarray]:
    """Feature statistics of a reference set, features (N, D) and labels (N,), overall and per
    class, as a flat dict of arrays (`mu`, `cov`, `mu_<c>`, `cov_<c>`) that `np.savez` can
    store."""
    f = check_features(feats)
    y = _class_labels(labels, len(f))
    out = dict(zip(("mu", "cov"), gaussian_stats(f)))
    for c in np.unique(y):
        out[f"mu_{c}"], out[f"cov_{c}"] = gaussian_stats(f[y == c])
    return out


def class_frechet_distance(feats, labels, ref: dict[str, np.ndarray]) -> float:
    """Mean over the classes present in `labels` (N,) of FD(samples of class c, reference
    class c), for features (N, D).

    A guide that collapses each class onto a few modes scores badly here even when the
    overall FD (which mixes classes) looks fine.
    """
    f = check_features(feats)
    y = _class_labels(labels, len(f))
    _check_ref(ref, np.unique(y))
    return float(np.mean([frechet_from_stats(*gaussian_stats(f[y == c]), ref[f"mu_{c}"],
                                             ref[f"cov_{c}"]) for c in np.unique(y)]))


def background_noise(images) -> float:
    """RMS distance from black (−1) of the background pixels of images (N, H, W, C): those of
    the 3-pixel border within 0.5 of −1 (strokes that reach the border left out); NaN if none.

    The noise a sampler leaves where a digit's background is black, which the evaluator's
    features barely see. 1000 real MNIST test digits: 0.009.
    """
    x = check_images(images, None)
    border = np.ones(x.shape[1:3], bool)
    border[3:-3, 3:-3] = False
    d = x[:, border] + 1.0
    d = d[np.abs(d) < 0.5]
    return float(np.sqrt(np.mean(np.square(d)))) if d.size else float("nan")


def evaluate_samples(evaluator: "Evaluator", images, labels, ref: dict[str, np.ndarray]) -> dict:
    """Accuracy (overall and per class), FD and class-FD of guided samples against `ref`, and
    their `background_noise`.

    Images (N, H, W, C) of the evaluator's shape and labels (N,) are checked, with `ref`,
    before the evaluator runs.
    """
    images = check_images(images, tuple(evaluator.metadata["image_shape"]))
    num_classes = evaluator.model.num_classes
    _check_ref(ref, np.unique(_class_labels(labels, len(images), num_classes)), overall=True)
    ev = evaluator(images)
    acc, per_class = guided_accuracy(ev.predictions, labels, num_classes)
    return {"accuracy": acc, "per_class_accuracy": per_class,
            "fd": frechet_from_stats(*gaussian_stats(ev.features), ref["mu"], ref["cov"]),
            "class_fd": class_frechet_distance(ev.features, labels, ref),
            "background_noise": background_noise(images), "n": len(ev.predictions)}
