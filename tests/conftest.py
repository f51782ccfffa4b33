"""Shared fixtures: tiny model checkpoints (trained in seconds) and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def tiny_dataset(n: int = 64):
    """((x, y), (x, y)): n random images in [-1, 1] (n, 28, 28, 1) float32, labels 0..9."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)
    y = (np.arange(n) % 10).astype(np.int32)
    return (x, y), (x, y)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A checkpoint dir with `denoiser/` and `classifier/` model checkpoints, as sample.py
    loads them: the tiny presets (6 steps of 8 images) trained on 64 synthetic images."""
    from jaxguide import training
    from jaxguide.configs import get_config

    root = tmp_path_factory.mktemp("tiny")
    ckdir = root / "checkpoints"
    dataset = tiny_dataset()
    for task in ("denoiser", "classifier"):
        workdir = root / "runs" / task
        training.train(get_config(task, preset="tiny"), workdir, dataset=dataset, progress=False)
        shutil.copytree(workdir / "model", ckdir / task)
    return ckdir


def run_cli(script: str, *args, timeout: float = 300, env: dict | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Runs `python <REPO>/<script> *args` in a temporary dir (or `cwd`); captures its text."""
    env = {**os.environ, **(env or {})}
    cmd = [sys.executable, str(REPO / script), *map(str, args)]
    if cwd is not None:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=env)
    with tempfile.TemporaryDirectory(prefix="jaxguide-cli-") as tmp:
        return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout,
                              env=env)


_SCRIPTS: dict[str, object] = {}


def load_script(script: str):
    """Imports a top-level script (`sample.py`, `train.py`) as a module, once per session, so
    that its `main(argv)` can be called in-process (no new JAX start-up per call)."""
    import importlib.util

    if script not in _SCRIPTS:
        name = f"_jaxguide_script_{Path(script).stem}"
        spec = importlib.util.spec_from_file_location(name, REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[script] = module
    return _SCRIPTS[script]
