"""Flax Linen networks, used through pure `model.apply(variables, x, t)`."""

import dataclasses

import flax.linen as nn
from jax.tree_util import Partial

from jaxguide.nets.classifier import Evaluator, NoisyClassifier
from jaxguide.nets.seed_unet import SeedUNet, load_torch_state_dict
from jaxguide.nets.unet import UNet


@dataclasses.dataclass(frozen=True)
class _Apply:
    """A hashable `model.apply`: equal models give equal (cache-sharing) functions."""

    model: nn.Module

    def __call__(self, variables, x, t):
        return self.model.apply(variables, x, t)


def apply_fn(model: nn.Module, variables) -> Partial:
    """x, t ↦ model.apply(variables, x, t) in eval mode, as a pytree of the variables."""
    return Partial(_Apply(model), variables)


MODELS = {"unet": UNet, "seed": SeedUNet, "classifier": NoisyClassifier, "evaluator": Evaluator}


def make_model(name: str, kwargs: dict | None = None) -> nn.Module:
    """The network called `name` ("unet", "seed", "classifier", "evaluator") with `kwargs`."""
    if name not in MODELS:
        raise ValueError(f"model: got {name!r}, accepted {', '.join(MODELS)}")
    try:
        return MODELS[name](**(kwargs or {}))
    except TypeError as e:
        raise ValueError(f"model_kwargs for {name!r}: {e}") from e


__all__ = ["MODELS", "make_model", "Evaluator", "NoisyClassifier", "SeedUNet", "UNet", "apply_fn", "load_torch_state_dict"]
