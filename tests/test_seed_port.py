"""The Flax SeedUNet is a faithful port of the PyTorch tutorial's denoiser.

The third-party weights and reference I/O live in ../shared/seed (next to the repository, never
committed); the tests that need them skip when that folder is absent.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxguide.nets.seed_unet import SeedUNet, load_torch_state_dict, shuffle_concat, upsample2x

SEED_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "seed"
STATE_DICT = SEED_DIR / "tutorial_denoiser_state_dict.npz"
REFERENCE_IO = SEED_DIR / "tutorial_denoiser_reference_io.npz"

needs_seed = pytest.mark.skipif(
    not (STATE_DICT.exists() and REFERENCE_IO.exists()),
    reason=f"tutorial weights not found in {SEED_DIR} (third-party files, not in the repo)")


@pytest.fixture(scope="module")
def state_dict():
    return dict(np.load(STATE_DICT))


@pytest.fixture(scope="module")
def variables(state_dict):
    return load_torch_state_dict(state_dict)


@pytest.fixture(scope="module")
def reference():
    io = np.load(REFERENCE_IO)
    return (jnp.asarray(io["x_nchw"].transpose(0, 2, 3, 1)), jnp.asarray(io["t"]),
            io["eps_hat_nchw"].transpose(0, 2, 3, 1))


def _torch_bilinear_up2(x):
    """PyTorch's Upsample(scale_factor=2, mode='bilinear', align_corners=False), NHWC, in numpy."""
    def axis_weights(n):
        src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        lam = src - i0
        m = np.zeros((2 * n, n))
        np.add.at(m, (np.arange(2 * n), i0), 1 - lam)
        np.add.at(m, (np.arange(2 * n), i1), lam)
        return m
    return np.einsum("ph,qw,bhwc->bpqc", axis_weights(x.shape[1]), axis_weights(x.shape[2]), x)


def test_upsample_matches_torch_align_corners_false():
    x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(upsample2x(jnp.asarray(x)), _torch_bilinear_up2(x), atol=1e-6)


def test_shuffle_concat_matches_torch_channel_shuffle():
    """The tutorial's shuffle on NCHW: cat -> view(n, 2, c/2, h, w) -> transpose(1, 2)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))  # NHWC, 5 channels each
    cat = np.concatenate([a, b], -1).transpose(0, 3, 1, 2)                 # NCHW, 10 channels
    n, c, h, w = cat.shape
    torch_shuffled = cat.reshape(n, 2, c // 2, h, w).swapaxes(1, 2).reshape(n, c, h, w)
    np.testing.assert_array_equal(shuffle_concat(jnp.asarray(a), jnp.asarray(b)),
                                  torch_shuffled.transpose(0, 2, 3, 1).astype(np.float32))


@needs_seed
@pytest.mark.parametrize("layout", ["NHWC", "CHWB"])
def test_reproduces_torch_output(variables, reference, layout):
    x, t, eps_ref = reference
    eps = np.asarray(jax.jit(SeedUNet(layout=layout).apply)(variables, x, t))
    assert eps.shape == eps_ref.shape
    rel = np.linalg.norm(eps - eps_ref) / np.linalg.norm(eps_ref)
    assert rel <= 1e-4, f"relative error {rel:.3g}"


@needs_seed
def test_parameter_count(state_dict, variables):
    bn_stats = ("running_mean", "running_var", "num_batches_tracked")
    n_torch = sum(a.size for k, a in state_dict.items()
                  if k != "centers" and not k.endswith(bn_stats))
    n_flax = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert n_flax == n_torch
    assert 247_000 < n_flax < 249_000


@needs_seed
def test_loader_reports_bad_state_dicts(state_dict):
    missing = dict(state_dict)
    del missing["final_conv.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): final_conv\.weight"):
        load_torch_state_dict(missing)

    wrong = dict(state_dict, **{"time_embedding.weight": np.zeros((256, 99), np.float32)})
    message = r"time_embedding\.weight: got \(256, 99\), expected \(256, 100\)"
    with pytest.raises(ValueError, match=message):
        load_torch_state_dict(wrong)

    extra = dict(state_dict, **{"head.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): head\.weight"):
        load_torch_state_dict(extra)

    w = state_dict["final_conv.weight"]
    for value, message in [(np.full_like(w, np.nan), "contains NaN or inf"),
                           (np.full(w.shape, 1e300), "contains NaN or inf \\(in float32\\)"),
                           (w.astype(np.complex64), "got dtype complex64, accepted real")]:
        with pytest.raises(ValueError, match=r"final_conv\.weight: " + message):
            load_torch_state_dict(dict(state_dict, **{"final_conv.weight": value}))
    var = next(k for k in state_dict if k.endswith(".running_var"))
    with pytest.raises(ValueError, match=re.escape(var) + r": got a negative variance"):
        load_torch_state_dict(dict(state_dict, **{var: -np.ones_like(state_dict[var])}))
    for arrays in (None, [("a", w)], {1: w}):
        with pytest.raises(TypeError, match=r"arrays: got .*, accepted a dict of name -> array"):
            load_torch_state_dict(arrays)


@needs_seed
def test_train_mode_updates_batch_stats(variables, reference):
    x, t, _ = reference
    apply = jax.jit(lambda v, x, t: SeedUNet().apply(v, x, t, train=True, mutable=["batch_stats"]))
    eps, updates = apply(variables, x, t)
    assert eps.shape == x.shape
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(new) == jax.tree.structure(old)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new)
    assert all(jax.tree.leaves(changed))
