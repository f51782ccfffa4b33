"""Shared fixtures: tiny model checkpoints (trained in seconds) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A checkpoint dir with `denoiser/` and `classifier/` model checkpoints, as sample.py
    loads them: the tiny presets' freshly initialised variables (training is tested in
    test_training.py; the CLI only needs well-formed checkpoints)."""
    import jax
    import jax.numpy as jnp

    from jaxguide import checkpoint, training
    from jaxguide.configs import get_config
    from jaxguide.nets import make_model

    ckdir = tmp_path_factory.mktemp("tiny") / "checkpoints"
    for task in ("denoiser", "classifier"):
        cfg = get_config(task, preset="tiny")
        model = make_model(cfg.model, cfg.kwargs)
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros(1))
        checkpoint.save_model(ckdir / task, variables,
                              {**training.model_metadata(cfg, (28, 28, 1)), "step": 0})
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


def help_entries(script) -> dict[str, str]:
    """The --help of a loaded script (`load_script`), as {an argument's first word ("--steps",
    "{sample,figures}"): its whole entry on one line, spaces normalised}."""
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        script.parse_args(["--help"])
    entries, key = {}, None
    for line in text.getvalue().splitlines():
        if line.startswith("  ") and not line.startswith("   "):  # An entry's first line.
            key = line.split()[0]
            entries[key] = line
        elif line.startswith("   ") and key is not None:  # Its continuation.
            entries[key] += " " + line
        else:
            key = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def raising_cases(cases: dict) -> object:
    """A test parametrized over `cases`, {id: (call, exception type, message regex)}: each
    call must raise that exception with a matching message.

        test_bad_input = raising_cases(CASES)
    """
    @pytest.mark.parametrize("case", list(cases))
    def test(case):
        call, exc_type, pattern = cases[case]
        with pytest.raises(exc_type, match=pattern):
            call()

    return test
