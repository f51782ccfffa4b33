"""Flax Linen networks, used through pure `model.apply(variables, x, t)`."""

import dataclasses
import reprlib
from collections.abc import Mapping
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from jaxguide.checks import check_choice, invalid
from jaxguide.configs import OLD_MODEL_NAMES
from jaxguide.nets.classifier import Evaluator, NoisyClassifier, ResNetClassifier
from jaxguide.nets.seed_unet import SeedUNet, load_torch_state_dict
from jaxguide.nets.unet import UNet


@dataclasses.dataclass(frozen=True)
class _Apply:
    """A hashable `model.apply`: equal models give equal (cache-sharing) functions."""

    model: nn.Module

    def __call__(self, variables, x, t, *labels):
        try:
            return self.model.apply(variables, x, t, *labels)
        except _MISFITS as e:
            reason = str(e).splitlines()[0]
            raise ValueError(f"variables: do not fit the {type(self.model).__name__} ({reason}); "
                             "accepted this model's variables (model.init, load_model)") from None


_MISFITS = (flax.errors.ScopeParamNotFoundError, flax.errors.ScopeParamShapeError,
            flax.errors.ScopeCollectionNotFound, flax.errors.ScopeVariableNotFoundError)


def apply_fn(model: nn.Module, variables) -> Partial:
    """x, t ↦ model.apply(variables, x, t) in eval mode, as a pytree of the variables
    (x, t, y ↦ model.apply(variables, x, t, y) for a class-conditional network).

    variables: a dict of collections ({"params": ..., ...}) of this model.
    """
    if not isinstance(model, nn.Module):
        raise invalid("model", type(model).__name__, "a Flax module (make_model, load_model)",
                      TypeError)
    if not isinstance(variables, Mapping):
        raise invalid("variables", reprlib.repr(variables), "a dict of collections such as "
                      "{'params': ...} (model.init, load_model)", TypeError)
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            what = f"a {type(leaf).__name__}" if dtype is None else f"dtype {dtype}"
            raise invalid("variables", f"{what} at {jax.tree_util.keystr(path)}",
                          "floating arrays (model.init, load_model)")
    return Partial(_Apply(model), variables)


MODELS = {"unet": UNet, "seed": SeedUNet, "resnet": ResNetClassifier, "tutorial": NoisyClassifier,
          "evaluator": Evaluator}


def make_model(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The network called `name` (one of MODELS, or an old name in configs.OLD_MODEL_NAMES)
    with `kwargs`.

    Raises ValueError for an unknown name, and for unknown or invalid kwargs (the message
    starts "model_kwargs for '<name>': ...", then names the argument); TypeError for a name
    or kwargs of the wrong type.
    """
    if not isinstance(name, str):
        raise invalid("model", repr(name), f"a name: {', '.join(MODELS)}", TypeError)
    name = check_choice("model", OLD_MODEL_NAMES.get(name, name), tuple(MODELS))
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise invalid("model_kwargs", repr(kwargs), "a dict of keyword arguments", TypeError)
    module = MODELS[name]
    fields = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
    if unknown := [k for k in kwargs if k not in fields]:
        raise invalid(f"model_kwargs for {name!r}", f"unknown {', '.join(map(repr, unknown))}",
                      ", ".join(fields))
    try:
        return module(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_kwargs for {name!r}: {e}") from e


__all__ = ["MODELS", "make_model", "Evaluator", "NoisyClassifier", "ResNetClassifier", "SeedUNet", "UNet", "apply_fn", "load_torch_state_dict"]
