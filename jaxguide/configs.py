"""Training configurations: one frozen dataclass, presets by (task, name)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

TASKS = ("denoiser", "classifier", "evaluator")
MODELS = {"denoiser": ("unet", "seed"), "classifier": ("classifier",), "evaluator": ("evaluator",)}
PRESETS = ("default", "tiny")

# Fields that change how a run is watched, not what it computes: they may differ on resume.
OPERATIONAL_FIELDS = ("log_every", "eval_every", "ckpt_every", "keep")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and its resumption)."""

    task: str = "denoiser"
    model: str = "unet"
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.25
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    t_min: float = 1e-3
    beta_min: float = 0.01
    beta_max: float = 10.0
    T: float = 1.0
    seed: int = 0
    log_every: int = 20
    eval_every: int = 400
    ckpt_every: int = 200
    keep: int = 2

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task: got {self.task!r}, accepted {', '.join(TASKS)}")
        if self.model not in MODELS[self.task]:
            raise ValueError(f"model: got {self.model!r} for task {self.task!r}, "
                             f"accepted {', '.join(MODELS[self.task])}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "ckpt_every", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: got {value!r}, accepted an integer >= 1")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed: got {self.seed!r}, accepted an integer >= 0")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr: got {self.lr!r}, accepted a number in (0, 1)")
        if not (0 <= self.warmup_frac < 1):
            raise ValueError(f"warmup_frac: got {self.warmup_frac!r}, accepted [0, 1)")
        if self.ema_decay is not None and not (0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay: got {self.ema_decay!r}, accepted (0, 1) or None")
        if not (0 <= self.t_min < self.T):
            raise ValueError(f"t_min: got {self.t_min!r}, accepted [0, T={self.T})")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_kwargs}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["model_kwargs"] = tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in d.get("model_kwargs", {}).items())
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def differences(self, other: "TrainConfig") -> list[str]:
        """Names and values of the fields (operational ones excepted) that differ."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {json.dumps(a[k])} vs {json.dumps(b[k])}" for k in a
                if k not in OPERATIONAL_FIELDS and a[k] != b[k]]


def get_config(task: str, model: str | None = None, preset: str = "default") -> TrainConfig:
    """The preset configuration for a task ("tiny" trains in seconds, for tests)."""
    if task not in TASKS:
        raise ValueError(f"task: got {task!r}, accepted {', '.join(TASKS)}")
    if preset not in PRESETS:
        raise ValueError(f"preset: got {preset!r}, accepted {', '.join(PRESETS)}")
    model = model or MODELS[task][0]
    if model not in MODELS[task]:
        raise ValueError(f"model: got {model!r} for task {task!r}, "
                         f"accepted {', '.join(MODELS[task])}")
    base = {
        "denoiser": dict(steps=2400, batch_size=128, lr=2e-3, ema_decay=0.999),
        "classifier": dict(steps=3000, batch_size=256, lr=1e-3, ema_decay=None, grad_clip=None,
                           t_min=0.0),
        "evaluator": dict(steps=2000, batch_size=128, lr=2e-3, ema_decay=None, grad_clip=None,
                          weight_decay=1e-4),
    }[task]
    kwargs = {
        "unet": dict(channels=(32, 64), blocks=2, emb_dim=128),
        "seed": {},
        "classifier": dict(time_embed="fourier", width=2),
        "evaluator": {},
    }[model]
    if preset == "tiny":
        base.update(steps=6, batch_size=8, log_every=2, eval_every=3, ckpt_every=3)
        if model == "unet":
            kwargs = dict(channels=(8, 16), blocks=1, emb_dim=16, groups=4)
        if model == "classifier":
            kwargs = dict(time_embed="fourier", width=1)
    return TrainConfig(task=task, model=model, model_kwargs=tuple(sorted(kwargs.items())), **base)
