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
            raise ValueError(f"variables: do not fit the {type(self.model).__name__} "
                             f"({str(e).splitlines()[0]}); accepted this model's variables "
                             "(model.init, load_model)") from None


_MISFITS = (flax.errors.ScopeParamNotFoundError, flax.errors.ScopeParamShapeError,
            flax.errors.ScopeCollectionNotFound, flax.errors.ScopeVariableNotFoundError)


def apply_fn(model: nn.Module, variables) -> Partial:
    """x, t ↦ model.apply(variables, x, t) in eval mode, as a pytree of the variables
    (x, t, y ↦ model.apply(variables, x, t, y) for a class-conditional network).

    variables: a dict of collections ({"params": ..., ...}) of this model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: got {type(model).__name__}, accepted a Flax module "
                        "(make_model, load_model)")
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables: got {reprlib.repr(variables)}, accepted a dict of "
                        "collections such as {'params': ...} (model.init, load_model)")
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            what = f"a {type(leaf).__name__}" if dtype is None else f"dtype {dtype}"
            raise ValueError(f"variables: got {what} at {jax.tree_util.keystr(path)}, accepted "
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
        raise TypeError(f"model: got {name!r}, accepted a name: {', '.join(MODELS)}")
    name = OLD_MODEL_NAMES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"model: got {name!r}, accepted {', '.join(MODELS)}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"model_kwargs: got {kwargs!r}, accepted a dict of keyword arguments")
    module = MODELS[name]
    fields = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
    unknown = [k for k in kwargs if k not in fields]
    if unknown:
        raise ValueError(f"model_kwargs for {name!r}: got unknown {', '.join(map(repr, unknown))}, "
                         f"accepted {', '.join(fields)}")
    try:
        return module(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_kwargs for {name!r}: {e}") from e


__all__ = ["MODELS", "make_model", "Evaluator", "NoisyClassifier", "ResNetClassifier", "SeedUNet", "UNet", "apply_fn", "load_torch_state_dict"]
