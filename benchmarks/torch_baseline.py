"""jaxguide against PyTorch eager: the tutorial's guided sampler, side by side in one run.

    pip install torch==2.13.0            # CPU build; an optional dependency of this benchmark
    python benchmarks/torch_baseline.py  # 1000 guided Euler–Maruyama steps, batches 8 and 80

Both sides run the same computation: the tutorial's UNet (SeedUNet, with the tutorial's
trained weights from ../shared/seed when present) and its noise-conditioned classifier (the
"add" time embedding; JAX-initialised weights copied into PyTorch), the tutorial's sampler
(start from clip(N(0, I), -1, 1), score -eps/max(std, 0.01) + s * grad log q(y|x,t),
each step clipped to [-10, 10]). PyTorch runs it as the tutorial does: a Python loop in eager
mode, the classifier gradient by autograd, the UNet under no_grad. jaxguide runs
`jaxguide.sample`: one jit(lax.scan). Before timing, one step of both is compared (the
denoiser's output and the guidance gradient) so that the ratio compares like with like.
Images/s exclude jaxguide's one-off compilation, which is reported separately. The two
sides run alternately (--repeats times each) and the best time of each is compared, so that a
slow spell of a shared machine does not land on one side only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import best_time  # noqa: E402

import jaxguide as jg  # noqa: E402
from jaxguide.nets import NoisyClassifier, SeedUNet, apply_fn, load_torch_state_dict  # noqa: E402

SEED_WEIGHTS = ROOT.parent / "shared" / "seed" / "tutorial_denoiser_state_dict.npz"


# ------------------------------------------------------------------ the tutorial's networks


class ConvBnSiLu(nn.Module):
    def __init__(self, c_in, c_out, k, stride=1, padding=0):
        super().__init__()
        self.module = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding),
                                    nn.BatchNorm2d(c_out), nn.SiLU(inplace=True))

    def forward(self, x):
        return self.module(x)


def _depthwise(c, stride):
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c), nn.BatchNorm2d(c)]


def _shuffle(x):
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ResidualBottleneck(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        h = c_in // 2
        self.branch1 = nn.Sequential(*_depthwise(h, 1), ConvBnSiLu(h, c_out // 2, 1))
        self.branch2 = nn.Sequential(ConvBnSiLu(h, h, 1), *_depthwise(h, 1),
                                     ConvBnSiLu(h, c_out // 2, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return _shuffle(torch.cat([self.branch1(a), self.branch2(b)], dim=1))


class ResidualDownsample(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.branch1 = nn.Sequential(*_depthwise(c_in, 2), ConvBnSiLu(c_in, c_out // 2, 1))
        self.branch2 = nn.Sequential(ConvBnSiLu(c_in, c_out // 2, 1), *_depthwise(c_out // 2, 2),
                                     ConvBnSiLu(c_out // 2, c_out // 2, 1))

    def forward(self, x):
        return _shuffle(torch.cat([self.branch1(x), self.branch2(x)], dim=1))


class TimeMLP(nn.Module):
    def __init__(self, emb_dim, hidden, out):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, out))

    def forward(self, x, t_emb):
        return F.silu(x + self.mlp(t_emb)[:, :, None, None])


def _stack(c_in, c_last, n):
    return nn.Sequential(*[ResidualBottleneck(c_in, c_in) for _ in range(n)],
                         ResidualBottleneck(c_in, c_last))


class EncoderBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.conv0 = _stack(c_in, c_out // 2, 3)
        self.time_mlp = TimeMLP(emb_dim, c_out, c_out // 2)
        self.conv1 = ResidualDownsample(c_out // 2, c_out)

    def forward(self, x, t_emb):
        skip = self.conv0(x)
        return self.conv1(self.time_mlp(skip, t_emb)), skip


class DecoderBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.conv0 = _stack(c_in, c_in // 2, 3)
        self.time_mlp = TimeMLP(emb_dim, c_in, c_in // 2)
        self.conv1 = ResidualBottleneck(c_in // 2, c_out // 2)

    def forward(self, x, skip, t_emb):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv1(self.time_mlp(self.conv0(torch.cat([x, skip], dim=1)), t_emb))


class TorchUNet(nn.Module):
    """The tutorial's denoiser: x (B, 1, 28, 28), t (B,) in [0, 1] -> eps_hat (B, 1, 28, 28)."""

    def __init__(self, base_dim=28, emb_dim=256, timesteps=100, temp=100.0):
        super().__init__()
        dims = [base_dim, 2 * base_dim, 4 * base_dim]
        self.temp = temp
        self.register_buffer("centers", (torch.arange(timesteps) + 0.5) / timesteps)
        self.init_conv = ConvBnSiLu(1, base_dim, 3, 1, 1)
        self.time_embedding = nn.Linear(timesteps, emb_dim)
        self.encoder_blocks = nn.ModuleList([EncoderBlock(a, b, emb_dim)
                                             for a, b in zip(dims[:-1], dims[1:])])
        self.decoder_blocks = nn.ModuleList([DecoderBlock(b, a, emb_dim) for a, b in
                                             reversed(list(zip(dims[:-1], dims[1:])))])
        self.mid_block = _stack(dims[-1], dims[-1] // 2, 2)
        self.final_conv = nn.Conv2d(base_dim // 2, 1, 1)

    def forward(self, x, t):
        w = torch.softmax(-self.temp * (t[:, None] - self.centers).abs(), dim=-1)
        t_emb = self.time_embedding(w)
        x = self.init_conv(x)
        skips = []
        for block in self.encoder_blocks:
            x, skip = block(x, t_emb)
            skips.append(skip)
        x = self.mid_block(x)
        for block, skip in zip(self.decoder_blocks, reversed(skips)):
            x = block(x, skip, t_emb)
        return self.final_conv(x)


class TorchClassifier(nn.Module):
    """The tutorial's q(y | x_t, t): x (B, 1, 28, 28), t (B,) -> log-probs (B, 10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x, t):
        h = F.relu(F.max_pool2d(self.conv1(x), 2))
        h = F.relu(F.max_pool2d(self.conv2(h), 2))
        # jaxguide flattens NHWC; permute so that fc1 sees the same feature order.
        h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
        h = F.relu(h + t[:, None])
        h = F.relu(self.fc1(h))
        return F.log_softmax(self.fc2(h), dim=-1)


def classifier_to_torch(params) -> dict:
    """The Flax NoisyClassifier(time_embed="add") params as a TorchClassifier state_dict."""
    conv = lambda p: {"weight": np.transpose(p["kernel"], (3, 2, 0, 1)), "bias": p["bias"]}
    dense = lambda p: {"weight": np.transpose(p["kernel"]), "bias": p["bias"]}
    parts = {"conv1": conv(params["Conv_0"]), "conv2": conv(params["Conv_1"]),
             "fc1": dense(params["Dense_0"]), "fc2": dense(params["Dense_1"])}
    return {f"{m}.{k}": torch.from_numpy(np.array(v)) for m, d in parts.items() for k, v in d.items()}


# ------------------------------------------------------------------ the two samplers


def torch_sample(unet, classifier, labels, n_steps, scale, seed, sde):
    """The tutorial's loop: 1000 Python iterations, autograd for the guidance."""
    gen = torch.Generator().manual_seed(seed)
    b = len(labels)
    x = torch.randn(b, 1, 28, 28, generator=gen).clamp(-1, 1)
    ts = torch.linspace(sde.T, 1e-3, n_steps + 1)
    rows = torch.arange(b)
    for i in range(n_steps):
        t, h = ts[i], ts[i] - ts[i + 1]
        tb = t.expand(b)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(classifier(xg, tb)[rows, labels].sum(), xg)
        with torch.no_grad():
            std = torch.sqrt(1 - torch.exp(-t**2 * (sde.beta_max - sde.beta_min) / 2 - t * sde.beta_min))
            score = -unet(x, tb) / torch.clamp(std, min=0.01) + scale * grad
            beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
            z = torch.randn(b, 1, 28, 28, generator=gen) if i < n_steps - 1 else 0.0
            x = (x + h * beta * (0.5 * x + score) + torch.sqrt(beta * h) * z).clamp(-10, 10)
    return x


def jax_sampler(score_fn, log_prob_fn, sde, n_steps, batch):
    """(labels, scale, key) -> images, compiled once: jaxguide.sample with the same settings."""
    def run(key, labels, scale):
        guided = jg.classifier_guidance(score_fn, log_prob_fn, labels, scale)
        return jg.sample(key, guided, sde, (batch, 28, 28, 1), n_steps=n_steps, init="clipped")
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batches", default="8,80")
    p.add_argument("--scale", type=float, default=8.0, help="the tutorial's guidance scale")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternating runs of each side; the best of each is reported")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "torch_baseline.jsonl"))
    args = p.parse_args()
    torch.manual_seed(0)
    sde = jg.VPSDE()
    unet, classifier = TorchUNet().eval(), TorchClassifier().eval()
    if SEED_WEIGHTS.exists():
        state = dict(np.load(SEED_WEIGHTS))
        weights = "the tutorial's trained weights"
    else:
        state = {k: v.numpy() for k, v in unet.state_dict().items()}
        weights = "PyTorch-initialised weights (../shared/seed absent)"
    unet.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    den_vars = load_torch_state_dict(state)
    cls_model = NoisyClassifier(time_embed="add")
    cls_vars = jax.jit(cls_model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros(1))
    classifier.load_state_dict(classifier_to_torch(jax.device_get(cls_vars["params"])))
    score_fn = jg.score_from_eps(apply_fn(SeedUNet(), den_vars), sde)
    log_prob_fn = apply_fn(cls_model, cls_vars)

    # One step of both, same input: the networks and the guidance gradient agree.
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1)).astype(np.float32)
    t, y = np.array([0.9, 0.5, 0.2, 0.05], np.float32), np.array([0, 3, 7, 9])
    eps_jax = np.asarray(apply_fn(SeedUNet(), den_vars)(x, t))
    grad_jax = np.asarray(jg.classifier_grad(log_prob_fn, y)(x, t))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    with torch.no_grad():
        eps_torch = unet(xt, torch.from_numpy(t)).numpy().transpose(0, 2, 3, 1)
    grad_torch, = torch.autograd.grad(classifier(xt, torch.from_numpy(t))[range(4), y].sum(), xt)
    grad_torch = grad_torch.numpy().transpose(0, 2, 3, 1)
    check = {"eps_max_abs_diff": float(np.abs(eps_jax - eps_torch).max()),
             "grad_max_abs_diff": float(np.abs(grad_jax - grad_torch).max()),
             "eps_max_abs": float(np.abs(eps_jax).max()),
             "grad_max_abs": float(np.abs(grad_jax).max())}
    print(json.dumps(check))
    assert check["eps_max_abs_diff"] < 1e-3 * max(1.0, check["eps_max_abs"]), check
    assert check["grad_max_abs_diff"] < 1e-3 * max(1.0, check["grad_max_abs"]), check

    rows = []
    for batch in map(int, args.batches.split(",")):
        labels = np.arange(batch) % 10
        run = jax_sampler(score_fn, log_prob_fn, sde, args.steps, batch)
        t0 = time.perf_counter()
        run(jax.random.key(0), labels, args.scale).block_until_ready()
        first = time.perf_counter() - t0
        # Alternate the two, best of each: a slow spell of the shared machine hits both.
        jax_times, torch_times = [], []
        for _ in range(args.repeats):
            jax_times.append(best_time(lambda: run(jax.random.key(1), labels, args.scale), 1))
            torch_times.append(best_time(lambda: torch_sample(
                unet, classifier, torch.from_numpy(labels), args.steps, args.scale, 0, sde).numpy(), 1))
        jax_s, torch_s = min(jax_times), min(torch_times)
        row = {"batch": batch, "steps": args.steps, "repeats": args.repeats,
               "jax_times_s": jax_times, "torch_times_s": torch_times,
               "jax_s": jax_s, "jax_first_call_s": first,
               "jax_compile_s": first - jax_s, "torch_s": torch_s,
               "jax_images_per_s": batch / jax_s, "torch_images_per_s": batch / torch_s,
               "ratio": torch_s / jax_s, "weights": weights, "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
               "jax_backend": jax.default_backend(), **check}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"\n{'batch':>5} {'steps':>5} {'torch img/s':>11} {'jaxguide img/s':>14} {'ratio':>6} "
          f"{'jax compile s':>13}")
    for r in rows:
        print(f"{r['batch']:>5} {r['steps']:>5} {r['torch_images_per_s']:>11.2f} "
              f"{r['jax_images_per_s']:>14.2f} {r['ratio']:>5.2f}x {r['jax_compile_s']:>13.1f}")


if __name__ == "__main__":
    main()
