"""jaxguide: classifier-guided diffusion in JAX/Flax.

The functional core: a VP-SDE, Flax Linen networks used through pure `apply`, classifier
guidance from `jax.grad`, and reverse samplers that are each one `lax.scan` under `jit`.

    import jax, jaxguide
    pipe = jaxguide.load_pipeline("checkpoints")
    labels = jax.numpy.arange(10)
    images = jaxguide.generate(jax.random.key(0), pipe, labels, scale=0.5, guidance="free")
    jaxguide.save_grid(images, labels, "grid.png", ncol=10)
"""

from jaxguide.checkpoint import CheckpointError, load_model, save_model
from jaxguide.configs import TrainConfig, get_config
from jaxguide.data import DataError, load_mnist
from jaxguide.nets import (Evaluator, NoisyClassifier, ResNetClassifier, SeedUNet, UNet, apply_fn,
                           load_torch_state_dict, make_model)
from jaxguide.parallel import make_mesh
from jaxguide.pipeline import Pipeline, generate, load_pipeline
from jaxguide.samplers import sample, time_grid
from jaxguide.scores import (add_scores, classifier_free_guidance, classifier_grad,
                             classifier_guidance, density_grad, guidance_term, label_log_prob,
                             score_from_eps)
from jaxguide.sde import VPSDE

__version__ = "0.1.0"
_TRAINING = ("TrainingError", "export", "train")  # Imported on first use (optax, tqdm).
_VIZ = ("save_gif", "save_grid")  # Imported on first use (matplotlib).


def __getattr__(name):
    if name in _TRAINING:
        from jaxguide import training

        return getattr(training, name)
    if name in _VIZ:
        from jaxguide import viz

        return getattr(viz, name)
    raise AttributeError(f"module 'jaxguide' has no attribute {name!r}")

__all__ = [
    "CheckpointError", "DataError", "Evaluator", "NoisyClassifier", "Pipeline", "ResNetClassifier", "SeedUNet",
    "TrainConfig", "TrainingError", "UNet", "VPSDE", "add_scores", "apply_fn", "classifier_grad",
    "classifier_free_guidance", "classifier_guidance", "density_grad", "export", "generate", "get_config", "guidance_term",
    "label_log_prob", "load_mnist", "load_model", "load_pipeline", "load_torch_state_dict",
    "make_mesh", "make_model", "sample", "save_gif", "save_grid", "save_model", "score_from_eps",
    "time_grid", "train",
]
