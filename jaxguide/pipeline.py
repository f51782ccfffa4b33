"""Guided generation from model checkpoints: the library side of `sample.py`.

    from jaxguide import generate, load_pipeline, save_grid

    pipe = load_pipeline("checkpoints")
    labels = jnp.arange(10)
    images = generate(jax.random.key(0), pipe, labels, scale=0.5, guidance="free")  # 50 steps
    save_grid(images, labels, "grid.png", ncol=10)  # And save_gif for a trajectory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxguide import checkpoint
from jaxguide.checks import check_choice, check_target_labels, invalid, is_real
from jaxguide.data import DATASETS, DatasetSpec, get_dataset
from jaxguide.nets import apply_fn
from jaxguide.samplers import DEFAULT_GRID, GRIDS, METHODS, evaluation_times, sample
from jaxguide.scores import classifier_free_guidance, classifier_guidance, score_from_eps
from jaxguide.sde import VPSDE

DEFAULT_STEPS = 50  # Reverse-SDE steps of a sampler chosen without its steps.
# The defaults per guidance ("both" takes "free"'s), the measured best (docs/results.md,
# docs/performance.md): the weight, and the sampler, its steps and its time grid.
DEFAULT_SCALES = {"classifier": 4.0, "free": 0.75}
DEFAULT_SAMPLING = {"classifier": ("euler_maruyama", 50, "uniform"),
                    "free": ("dpm_solver_3m_sde", 10, "logsnr")}
GUIDANCE = ("classifier", "free", "both")


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A denoiser's score and a noisy classifier, ready to compose.

    score_fn(x, t) -> (B, H, W, C), the unconditional score; log_prob_fn(x, t) ->
    (B, num_classes); eps_fn(x, t, y) -> (B, H, W, C), the noise prediction of a
    class-conditional denoiser (y in 0..num_classes, num_classes the null class), else None.
    dataset: what the models were trained on (`data.DATASETS`; checkpoints that do not say
    are MNIST's). default_scales and default_sampling: the guidance weights and the
    (sampler, steps, grid) to sample with, per guidance ("classifier", "free"):
    DEFAULT_SCALES and DEFAULT_SAMPLING, or those tuned for this denoiser (its metadata's
    "guidance_scales" and "sampling").
    """

    sde: VPSDE
    score_fn: Partial
    log_prob_fn: Partial
    num_classes: int
    image_shape: tuple[int, ...]
    metadata: dict[str, Any]
    eps_fn: Partial | None = None
    dataset: DatasetSpec = DATASETS["mnist"]
    default_scales: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SCALES))
    default_sampling: dict[str, tuple[str, int, str]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SAMPLING))

    @property
    def conditional(self) -> bool:
        return self.eps_fn is not None


def load_pipeline(checkpoint_dir: str | Path, denoiser: str = "denoiser",
                  classifier: str = "classifier") -> Pipeline:
    """Loads `<checkpoint_dir>/<denoiser>` and `<checkpoint_dir>/<classifier>`."""
    for name, value in (("checkpoint_dir", checkpoint_dir), ("denoiser", denoiser),
                        ("classifier", classifier)):
        if not isinstance(value, (str, os.PathLike)):
            raise invalid(name, repr(value), "a path", TypeError)
    root = Path(checkpoint_dir)
    if not root.is_dir():
        raise checkpoint.CheckpointError(f"checkpoint_dir {root}: not found")
    for name in (denoiser, classifier):
        if not (root / name).is_dir():  # train.py writes each model to <workdir>/model.
            raise checkpoint.CheckpointError(f"checkpoint_dir {root}: has no {name}/; accepted a "
                                             f"folder holding {denoiser}/ and {classifier}/ models")
    den_model, den_vars, den_meta = checkpoint.load_model(root / denoiser, task="denoiser")
    cls_model, cls_vars, cls_meta = checkpoint.load_model(root / classifier, task="classifier")
    den_k = getattr(den_model, "num_classes", None)
    den = _trained_for(den_meta, den_k or cls_model.num_classes)
    cls = _trained_for(cls_meta, cls_model.num_classes)
    for field in den:
        if den[field] != cls[field]:
            raise checkpoint.CheckpointError(
                f"{root}: the denoiser was trained with {field} {den[field]!r}, the classifier "
                f"with {cls[field]!r}; accepted models trained alike")
    try:
        dataset = get_dataset(den["dataset"])
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{root}: {e}") from e
    tuned = den_meta.get("guidance_scales", {})
    if not (isinstance(tuned, dict) and set(tuned) <= set(DEFAULT_SCALES)
            and all(is_real(v) and 0 <= v < math.inf for v in tuned.values())):
        raise checkpoint.CheckpointError(f"{root / denoiser}: guidance_scales: got {tuned!r}; "
                                         "accepted {'classifier': s, 'free': w}, numbers >= 0")
    tuned_sampling = den_meta.get("sampling", {})
    if not (isinstance(tuned_sampling, dict) and set(tuned_sampling) <= set(DEFAULT_SAMPLING)
            and all(_is_sampling(v) for v in tuned_sampling.values())):
        raise checkpoint.CheckpointError(
            f"{root / denoiser}: sampling: got {tuned_sampling!r}; accepted {{'classifier' or "
            "'free': [sampler, steps >= 1, grid]}")
    sde = VPSDE(**den_meta["sde"])
    eps_fn = apply_fn(den_model, den_vars)
    return Pipeline(
        sde=sde,
        score_fn=score_from_eps(eps_fn, sde),  # A conditional denoiser: its null class.
        log_prob_fn=apply_fn(cls_model, cls_vars),
        num_classes=int(cls_model.num_classes),
        image_shape=tuple(den_meta["image_shape"]),
        metadata={"denoiser": den_meta, "classifier": cls_meta},
        eps_fn=eps_fn if den_k is not None else None,
        dataset=dataset,
        default_scales={**DEFAULT_SCALES, **{k: float(v) for k, v in tuned.items()}},
        default_sampling={**DEFAULT_SAMPLING,
                          **{k: tuple(v) for k, v in tuned_sampling.items()}},
    )


def _is_sampling(value) -> bool:
    """[sampler, steps, grid], as a denoiser's metadata may name its tuned sampling."""
    return (isinstance(value, (list, tuple)) and len(value) == 3 and value[0] in METHODS
            and isinstance(value[1], int) and not isinstance(value[1], bool) and value[1] >= 1
            and value[2] in GRIDS)


def _trained_for(meta: dict, num_classes: int) -> dict:
    """What a denoiser and a classifier must share (checkpoints from before datasets: MNIST)."""
    return {"sde": meta["sde"], "image_shape": meta["image_shape"],
            "dataset": meta.get("dataset", "mnist"), "classes": num_classes}


def guided_score(pipe: Pipeline, labels, scale, guidance: str = "classifier",
                 classifier_scale=None, interval=None) -> Partial:
    """The score that `generate` samples from (see there); labels and scales are traced."""
    if guidance == "classifier":
        return classifier_guidance(pipe.score_fn, pipe.log_prob_fn, labels, scale,
                                   num_classes=pipe.num_classes, interval=interval)
    score_fn = classifier_free_guidance(pipe.eps_fn, pipe.sde, labels, scale, interval=interval)
    if guidance == "both":
        score_fn = classifier_guidance(score_fn, pipe.log_prob_fn, labels, classifier_scale,
                                       num_classes=pipe.num_classes, interval=interval)
    return score_fn


def sampling(guidance: str, method: str | None = None, n_steps: int | None = None,
             grid: str | None = None, defaults=DEFAULT_SAMPLING) -> tuple[str, int, str]:
    """(method, n_steps, grid) with the Nones filled in: no method, the guidance's `defaults`
    (a pipeline's `default_sampling`; its steps and grid where those are None); a method
    given, DEFAULT_STEPS and the method's DEFAULT_GRID."""
    if method is None:
        method, steps, default_grid = defaults["classifier" if guidance == "classifier"
                                               else "free"]
    else:  # A bad method is left for `sample` to name.
        steps, default_grid = DEFAULT_STEPS, DEFAULT_GRID.get(method if isinstance(method, str)
                                                              else None)
    return method, steps if n_steps is None else n_steps, default_grid if grid is None else grid


def network_evaluations(pipe: Pipeline, scale: float, *, guidance: str = "classifier",
                        interval=None, n_steps: int | None = None, method: str | None = None,
                        grid: str | None = None, **sampler_kwargs) -> dict[str, int]:
    """What `generate` (same arguments, scalar scales) computes per image: {"nfe": denoiser
    evaluations (a guided classifier-free call counts 2), "classifier_nfe": classifier
    gradients}."""
    method, n_steps, grid = sampling(guidance, method, n_steps, grid, pipe.default_sampling)
    ts = evaluation_times(pipe.sde, n_steps, method, grid, sampler_kwargs.get("t_min", 1e-3))
    lo, hi = (0.0, np.inf) if interval is None else interval
    guided = (ts >= np.float32(lo)) & (ts <= np.float32(hi))
    nfe = ts.size
    if guidance != "classifier" and scale:
        nfe += int(guided.sum())  # The unconditional half of each guided call.
    return {"nfe": nfe, "classifier_nfe": int(guided.sum()) if guidance != "free" else 0}


def generate(key: jax.Array, pipe: Pipeline, labels, scale, *, guidance: str = "classifier",
             classifier_scale=None, interval=None, method: str | None = None,
             n_steps: int | None = None, grid: str | None = None, indices=None,
             record_every: int | None = None, **sampler_kwargs):
    """Class-guided samples, clipped to [−1, 1].

    Args:
      labels: (B,) target classes, B >= 1.
      scale: () or (B,), the weight of the chosen guidance: the classifier scale s
        ("classifier", 0 = unguided) or the classifier-free weight w ("free" and "both";
        0 = the conditional denoiser alone).
      guidance: "classifier" (the unconditional score + s ∇ₓ log q(y | x, t)), "free"
        (classifier-free: needs a class-conditional denoiser) or "both" (classifier-free
        with weight `scale`, plus the classifier's term with scale `classifier_scale`).
      interval: (t_lo, t_hi): guidance only there; outside, the unguided score
        ("classifier") or the conditional denoiser alone ("free" and "both", whose two
        terms are both off there).
      method, n_steps, grid: the sampler (`samplers.METHODS`), its steps and time grid;
        None: the guidance's `pipe.default_sampling`, as sample.py's (see `sampling`).
      indices: (B,) global sample indices (noise of image i depends only on key and i).
      sampler_kwargs: the rest of `sample`'s options, e.g. `mesh=make_mesh()` to split the
        batch over devices; `x0_clip` defaults to 1 here (images lie in [−1, 1]).

    Returns:
      images (B, H, W, C), or (images, trajectory (F, B, H, W, C)) with `record_every`.
    """
    labels = _check_generate_args(pipe, labels, guidance, classifier_scale)
    score_fn = guided_score(pipe, labels, scale, guidance, classifier_scale, interval)
    method, n_steps, grid = sampling(guidance, method, n_steps, grid, pipe.default_sampling)
    out = sample(key, score_fn, pipe.sde, (labels.shape[0],) + pipe.image_shape, n_steps=n_steps,
                 method=method, grid=grid, indices=indices, record_every=record_every,
                 **{"x0_clip": 1.0, **sampler_kwargs})
    if record_every:
        return jnp.clip(out[0], -1, 1), jnp.clip(out[1], -1, 1)
    return jnp.clip(out, -1, 1)


def _check_generate_args(pipe, labels, guidance, classifier_scale) -> jax.Array:
    """generate's own arguments (the scores and the sampler check theirs); labels as int32."""
    if not isinstance(pipe, Pipeline):
        raise invalid("pipe", type(pipe).__name__, "a Pipeline (load_pipeline)", TypeError)
    labels = check_target_labels(labels, pipe.num_classes)
    if labels.ndim != 1 or not labels.shape[0]:
        raise invalid("labels", f"shape {labels.shape}", "a 1-D sequence of at least one class "
                      f"index in 0..{pipe.num_classes - 1}")
    check_choice("guidance", guidance, GUIDANCE if pipe.conditional else ("classifier",))
    if (guidance == "both") != (classifier_scale is not None):
        raise invalid("classifier_scale", f"{classifier_scale!r} with guidance {guidance!r}",
                      "a scale >= 0 with 'both' only")
    return labels
