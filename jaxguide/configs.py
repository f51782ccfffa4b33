"""Training configurations: one frozen dataclass, presets by (task, name)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

from jaxguide.checks import (F32_MAX, F32_TINY, INT32_MAX, SEED_MAX, check_choice, check_int,
                             check_number, invalid)
from jaxguide.data import get_dataset
from jaxguide.sde import VPSDE

TASKS = ("denoiser", "classifier", "evaluator")
MODELS = {"denoiser": ("unet", "seed"), "classifier": ("resnet", "tutorial"),
          "evaluator": ("evaluator",)}
OLD_MODEL_NAMES = {"classifier": "tutorial"}  # Model names of earlier versions' checkpoints.
PRESETS = ("default", "tiny")

# Fields that change how a run is watched, not what it computes: they may differ on resume.
OPERATIONAL_FIELDS = ("log_every", "eval_every", "ckpt_every", "keep")
# Fields that matter only to a run's first step: a resumed run goes on from its checkpoint.
START_FIELDS = ("init_from",)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and its resumption).

    `init_from`, a model directory (`checkpoint.save_model`'s, e.g. a finished run's
    <workdir>/model), starts the run from its variables instead of from `key(seed)`: a
    finished run goes on with a new schedule in a new work dir.

    Every field is checked on construction (`replace` and `from_dict` included). Numbers
    may be Python or numpy scalars and are stored as Python ints and floats; model_kwargs
    may be a dict and is stored as sorted (name, value) pairs, lists as tuples.
    """

    task: str = "denoiser"
    dataset: str = "mnist"  # A name in data.DATASETS.
    model: str = "unet"
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.25
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    label_dropout: float = 0.0
    t_min: float = 1e-3
    beta_min: float = 0.01
    beta_max: float = 10.0
    T: float = 1.0
    seed: int = 0
    init_from: str | None = None
    log_every: int = 20
    eval_every: int = 400
    ckpt_every: int = 200
    keep: int = 2

    def __post_init__(self):
        check_choice("task", self.task, TASKS)
        get_dataset(self.dataset)
        self._set("model", OLD_MODEL_NAMES.get(self.model, self.model))
        _check_model(self.task, self.model)
        self._set("model_kwargs", _frozen_kwargs(self.model, self.model_kwargs))
        for name, lo, hi in (("steps", 1, INT32_MAX), ("batch_size", 1, INT32_MAX),
                             ("seed", 0, SEED_MAX), ("log_every", 1, None),
                             ("eval_every", 1, None), ("ckpt_every", 1, None), ("keep", 1, None)):
            self._set(name, check_int(name, getattr(self, name), lo, hi))
        finite = math.isfinite
        self._check_real("lr", "a number in [1.2e-38, 1) (> 0 in float32)",
                         lambda v: F32_TINY <= v < 1)
        self._check_real("weight_decay", "a finite number >= 0", lambda v: finite(v) and v >= 0)
        self._check_real("warmup_frac", "a number in [0, 1)", lambda v: 0 <= v < 1)
        self._check_real("grad_clip", "a number in [1.2e-38, 3.4e38] (float32), or None (no "
                         "clipping)", lambda v: F32_TINY <= v <= F32_MAX, optional=True)
        self._check_real("ema_decay", "a number in (0, 1), or None (no EMA)",
                         lambda v: 0 < v < 1, optional=True)
        self._check_real("label_dropout", "a number in [0, 1)", lambda v: 0 <= v < 1)
        if self.label_dropout and self.kwargs.get("num_classes") is None:
            raise invalid("label_dropout", f"{self.label_dropout} for an unconditional model",
                          "0, or a class-conditional model (model_kwargs num_classes)")
        init = self.init_from
        if init is not None and not isinstance(init, str):
            raise invalid("init_from", repr(init), "a model directory (a str) or None", TypeError)
        if init is not None and not init.strip():
            raise invalid("init_from", repr(init), "a model directory or None")
        self._check_real("beta_min", "a finite number > 0", lambda v: finite(v) and v > 0)
        self._check_real("beta_max", f"a finite number >= beta_min={self.beta_min}",
                         lambda v: finite(v) and v >= self.beta_min)
        self._check_real("T", "a finite number > 0", lambda v: finite(v) and v > 0)
        self._check_real("t_min", f"a number in [0, T={self.T})", lambda v: 0 <= v < self.T)
        VPSDE(self.beta_min, self.beta_max, self.T)  # The schedule as a whole.

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # The dataclass is frozen.

    def _check_real(self, name: str, accepted: str, ok: Callable[[float], bool],
                    optional: bool = False) -> None:
        """Sets field `name` to its value as a float, if `ok` (or it is an `optional` None)."""
        if not (optional and getattr(self, name) is None):
            self._set(name, check_number(name, getattr(self, name), accepted, ok))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_kwargs}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The inverse of `to_dict`."""
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Names and values of the fields (operational and start-only ones excepted) that
        differ; model_kwargs that make the same model (a default spelled out or not) do not."""
        from jaxguide.nets import make_model  # Local: jaxguide.nets imports this module.

        a, b = self.to_dict(), other.to_dict()
        if make_model(self.model, self.kwargs) == make_model(other.model, other.kwargs):
            b["model_kwargs"] = a["model_kwargs"]
        return [f"{k}: {json.dumps(a[k])} vs {json.dumps(b[k])}" for k in a
                if k not in OPERATIONAL_FIELDS + START_FIELDS and a[k] != b[k]]


def _check_model(task: str, model) -> None:
    if model not in MODELS[task]:
        raise invalid("model", f"{model!r} for task {task!r}", ", ".join(MODELS[task]))


def _frozen_kwargs(model: str, kwargs) -> tuple[tuple[str, Any], ...]:
    """model_kwargs (a dict or (name, value) pairs) as sorted pairs, lists as tuples, after
    checking that `make_model(model, kwargs)` accepts them."""
    from jaxguide.nets import make_model  # Local: jaxguide.nets imports this module.

    accepted = "a dict of keyword arguments (or (name, value) pairs) for the model"
    if isinstance(kwargs, (str, bytes)):
        raise TypeError(f"model_kwargs: got {kwargs!r}, accepted {accepted}")
    try:
        pairs = dict(kwargs)
    except (TypeError, ValueError):
        raise TypeError(f"model_kwargs: got {kwargs!r}, accepted {accepted}") from None
    make_model(model, pairs)
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in pairs.items()))


def get_config(task: str, model: str | None = None, preset: str = "default",
               dataset: str = "mnist") -> TrainConfig:
    """The preset configuration for a task on a dataset of data.DATASETS ("tiny" trains in
    seconds, for tests); class-aware models get the dataset's class count."""
    check_choice("task", task, TASKS)
    check_choice("preset", preset, PRESETS)
    k = get_dataset(dataset).num_classes
    model = model or MODELS[task][0]
    _check_model(task, model)
    base = {
        "denoiser": dict(steps=6000, batch_size=128, lr=2e-3, ema_decay=0.999),
        "classifier": dict(steps=3000, batch_size=256, lr=1e-3, ema_decay=None, grad_clip=None,
                           t_min=0.0),
        "evaluator": dict(steps=2000, batch_size=128, lr=2e-3, ema_decay=None, grad_clip=None,
                          weight_decay=1e-4),
    }[task]
    base.update({"unet": dict(label_dropout=0.2),
                 "resnet": dict(steps=3000, lr=2e-3, ema_decay=0.999)}.get(model, {}))
    kwargs = {
        "unet": dict(channels=(32, 64), blocks=2, emb_dim=128, attention=True, num_classes=k),
        "seed": {},
        "resnet": dict(channels=(32, 64), blocks=2, emb_dim=64, num_classes=k),
        "tutorial": dict(time_embed="fourier", width=2, num_classes=k),
        "evaluator": dict(num_classes=k),
    }[model]
    if preset == "tiny":
        base.update(steps=6, batch_size=8, log_every=2, eval_every=3, ckpt_every=3)
        if model == "unet":
            kwargs = dict(channels=(8, 16), blocks=1, emb_dim=16, groups=4, attention=True,
                          num_classes=k)
        if model == "resnet":
            kwargs = dict(channels=(8, 16), blocks=1, emb_dim=16, groups=4, num_classes=k)
        if model == "tutorial":
            kwargs = dict(time_embed="fourier", width=1, num_classes=k)
    return TrainConfig(task=task, dataset=dataset, model=model,
                       model_kwargs=tuple(sorted(kwargs.items())), **base)
