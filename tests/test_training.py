"""Tests for jaxguide.training and jaxguide.checkpoint: exports, resumption, faults, errors.

Kept small for a loaded CPU: tiny presets on 64 synthetic images, and one shared
configuration (`resume_config`) so that the train step is compiled once and reused (an XLA
persistent compilation cache in a temporary directory is shared with the subprocesses).
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import raising_cases
from jaxguide import checkpoint, data, runtime, training
from jaxguide.checkpoint import CheckpointError
from jaxguide.configs import TrainConfig, get_config
from jaxguide.nets import ResNetClassifier, SeedUNet, UNet, make_model
from jaxguide.training import TrainingError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- helpers
# synthetic_data and resume_config are also pasted (inspect.getsource) into the subprocess
# script, so that the processes train on exactly the same inputs.


def synthetic_data(n=64):
    """((x, y), (x, y)): n random images in [-1, 1] (n, 28, 28, 1) float32, int32 labels."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return (x, y), (x, y)


def resume_config():
    """The classifier's tiny preset (6 steps of 8) with a checkpoint every 2 steps and an EMA."""
    return get_config("classifier", preset="tiny").replace(ckpt_every=2, keep=10, ema_decay=0.9)


CFG = resume_config()

SCRIPT = '''
import os, signal, sys, time
import numpy as np
from jaxguide import data, training
from jaxguide.configs import get_config

{synthetic_data}

{resume_config}

hold = os.environ.get("JG_HOLD")
if hold:  # Before 0-based step JG_HOLD_STEP, touch `hold`.reached and wait while `hold` exists.
    hold_step = int(os.environ["JG_HOLD_STEP"])
    _batch_indices = data.batch_indices

    def batch_indices(seed, step, *args, **kwargs):
        if step == hold_step:
            open(hold + ".reached", "w").close()
            deadline = time.monotonic() + 120
            while os.path.exists(hold) and time.monotonic() < deadline:
                time.sleep(0.01)
        return _batch_indices(seed, step, *args, **kwargs)

    data.batch_indices = batch_indices

pace = os.environ.get("JG_STEP_SECONDS")
if pace:  # Spend JG_STEP_SECONDS on every step; touch JG_STARTED once one step has run.
    _batch, calls = data.batch_indices, []

    def paced_batch_indices(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # The train step is compiled (or read from the cache) by now.
            open(os.environ["JG_STARTED"], "w").close()
        time.sleep(float(pace))
        return _batch(*args, **kwargs)

    data.batch_indices = paced_batch_indices

die = os.environ.get("JG_DIE_AT_COMMIT")
if die:  # SIGKILL itself at the atomic rename that would commit checkpoint `die`.
    _rename = os.rename

    def rename(src, dst, *args, **kwargs):
        dst = os.fspath(dst)
        if os.path.basename(dst) == die and os.path.basename(os.path.dirname(dst)) == "checkpoints":
            os.kill(os.getpid(), signal.SIGKILL)
        return _rename(src, dst, *args, **kwargs)

    os.rename = rename

training.train(resume_config(), sys.argv[1], dataset=synthetic_data(), progress=False)
print("done", flush=True)
'''


def leaves(tree):
    return jax.tree_util.tree_flatten_with_path(tree)


def assert_trees_equal(actual, expected):
    """Same structure, and every leaf bitwise equal (dtype and shape included)."""
    (a, a_def), (e, e_def) = leaves(actual), leaves(expected)
    assert a_def == e_def
    for (path, x), (_, y) in zip(a, e):
        x, y = np.asarray(x), np.asarray(y)
        name = jax.tree_util.keystr(path)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), f"{name} differs"


def assert_states_equal(actual, expected):
    for field in ("step", "params", "batch_stats", "opt_state", "ema_params"):
        assert_trees_equal(getattr(actual, field), getattr(expected, field))


def opt_counts(opt_state):
    """The step counters in an optax state (Adam's and the schedule's)."""
    return [int(x) for path, x in leaves(opt_state)[0]
            if getattr(path[-1], "name", None) == "count"]


def step_dirs(workdir):
    """Committed checkpoint steps (Orbax writes `<step>.orbax-checkpoint-tmp*` first)."""
    root = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def records(workdir):
    """The records of a work dir's training log after its header."""
    path = Path(workdir) / "metrics.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    assert not recs or recs[0]["step"] == 0 and recs[0][training.LOG_HEADER] == 1
    return recs[1:]


def log_upto(workdir, step):
    """The text of a work dir's training log, header included, up to `step`."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return "".join(line + "\n" for line in lines if json.loads(line)["step"] <= step)


def record_steps(recs):
    """[(step, 'loss' | 'eval')] of metrics records."""
    return [(r["step"], "loss" if "loss" in r else "eval") for r in recs]


def restore_final(workdir, like):
    """The TrainState of the latest checkpoint in `workdir`, in the structure of `like`."""
    mgr = checkpoint.manager(workdir, CFG.keep)
    return checkpoint.restore_train(mgr, mgr.latest_step(), checkpoint.abstract(like))


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def jax_cache_env(tmp_path_factory):
    """A persistent compilation cache for this module (and env vars for its subprocesses)."""
    from jax.experimental.compilation_cache import compilation_cache

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax_cache"))
    settings = {"jax_compilation_cache_dir": path,
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    old = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    yield {name.upper(): str(value) for name, value in settings.items()}
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """(workdir, final TrainState) of an uninterrupted in-process run of CFG."""
    workdir = tmp_path_factory.mktemp("ref")
    state = training.train(CFG, workdir, dataset=synthetic_data(), progress=False)
    return workdir, state


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "run_train.py"
    path.write_text(SCRIPT.format(synthetic_data=inspect.getsource(synthetic_data),
                                  resume_config=inspect.getsource(resume_config)))
    return path


@pytest.fixture
def spawn(script, jax_cache_env, tmp_path):
    """spawn(workdir, **env) -> Popen of the script training CFG in workdir."""
    procs = []

    def start(workdir, **env):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(workdir)], cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **jax_cache_env, **env})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # Only the processes this test started.
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_hold(proc, hold, timeout=240):
    """Polls until the script in `proc` waits at its hold point."""
    wait_for_file(proc, Path(f"{hold}.reached"), timeout)


def wait_for_file(proc, reached, timeout=240):
    """Polls until the script in `proc` has created `reached`."""
    deadline = time.monotonic() + timeout
    while not reached.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before creating {reached}:\n"
                        f"{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {reached} after {timeout} s")
        time.sleep(0.01)


# ----------------------------------------------------------------------- exports


def test_classifier_exports_model_and_checkpoints(ref):
    workdir, state = ref
    assert int(state.step) == CFG.steps == 6
    model_dir = workdir / "model"
    assert (model_dir / "metadata.json").is_file() and (model_dir / "state").is_dir()
    assert step_dirs(workdir) == [2, 4, 6]
    assert record_steps(records(workdir)) == [(2, "loss"), (3, "eval"), (4, "loss"),
                                              (6, "loss"), (6, "eval")]
    assert (workdir / "loss.png").is_file()

    model, variables, meta = checkpoint.load_model(model_dir, task="classifier")
    assert isinstance(model, ResNetClassifier) and model.channels == (8, 16)
    expected = training.eval_variables(state)
    assert_trees_equal(variables, expected)
    assert set(variables) == {"params"}
    # With an EMA, what is exported is the average, not the last parameters.
    assert_trees_equal(expected["params"], state.ema_params)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                       jax.tree.leaves(state.ema_params)))

    assert meta["format"] == checkpoint.FORMAT and meta["format_version"] == 1
    assert meta["task"] == "classifier" and meta["model"] == "resnet"
    assert meta["step"] == 6
    assert TrainConfig.from_dict(meta["config"]) == CFG
    assert meta["sde"] == {"beta_min": CFG.beta_min, "beta_max": CFG.beta_max, "T": CFG.T}
    assert meta["versions"]["jax"] == jax.__version__
    assert {"python", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"} <= set(meta["versions"])
    assert meta["image_shape"] == [28, 28, 1]
    assert set(meta["metrics"]) >= {"eval/acc_clean"}


@pytest.mark.slow
@pytest.mark.parametrize("model_name, cls", [("unet", UNet), ("seed", SeedUNet)])
def test_denoiser_exports_model(tmp_path, model_name, cls):
    cfg = get_config("denoiser", model_name, "tiny")
    state = training.train(cfg, tmp_path, dataset=synthetic_data(), progress=False)
    assert step_dirs(tmp_path) == [3, 6]
    model, variables, meta = checkpoint.load_model(tmp_path / "model", task="denoiser")
    assert isinstance(model, cls)
    assert_trees_equal(variables, training.eval_variables(state))
    assert ("batch_stats" in variables) == (model_name == "seed")
    assert meta["step"] == 6 and TrainConfig.from_dict(meta["config"]) == cfg
    assert {"jax", "flax", "orbax-checkpoint"} <= set(meta["versions"])
    assert meta["sde"] == {"beta_min": cfg.beta_min, "beta_max": cfg.beta_max, "T": cfg.T}
    assert_states_equal(restore_final(tmp_path, state), state)
    with pytest.raises(CheckpointError, match="holds a 'denoiser' model, expected a 'classifier'"):
        checkpoint.load_model(tmp_path / "model", task="classifier")


def test_training_checkpoint_round_trip(ref):
    workdir, state = ref
    mgr = checkpoint.manager(workdir, CFG.keep)
    assert mgr.latest_step() == 6 and list(mgr.all_steps()) == [2, 4, 6]
    restored = checkpoint.restore_train(mgr, 6, checkpoint.abstract(state))
    assert_states_equal(restored, state)
    assert set(opt_counts(restored.opt_state)) == {6}
    meta = checkpoint.read_train_metadata(mgr, 6)
    assert meta["step"] == 6 and TrainConfig.from_dict(meta["config"]) == CFG
    early = checkpoint.restore_train(mgr, 2, checkpoint.abstract(state))
    assert int(early.step) == 2 and set(opt_counts(early.opt_state)) == {2}


def test_export_of_a_training_checkpoint(ref, tmp_path):
    workdir, state = ref
    # The latest checkpoint exports the same variables as the end of training.
    _, variables, meta = checkpoint.load_model(training.export(workdir, out=tmp_path / "last"))
    assert_trees_equal(variables, training.eval_variables(state))
    assert meta["step"] == 6
    model_fields = training.model_metadata(CFG, meta["image_shape"])  # The dataset included.
    assert {k: meta[k] for k in model_fields} == model_fields
    _, _, meta = checkpoint.load_model(training.export(workdir, 2, tmp_path / "early"))
    assert meta["step"] == 2
    with pytest.raises(training.TrainingError, match="no training checkpoint 5"):
        training.export(workdir, 5, tmp_path / "none")


def test_one_cycle_schedule():
    """The effective learning rate (Adam's update for a constant gradient) is one-cycle."""
    cfg = get_config("denoiser", preset="tiny").replace(steps=100)
    tx = training.make_optimizer(cfg)
    params = jnp.zeros(())
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    lrs = []
    for _ in range(cfg.steps):
        u, opt_state = update(jnp.ones(()), opt_state, params)
        lrs.append(-float(u))
    lrs = np.array(lrs)
    assert set(opt_counts(opt_state)) == {100}
    assert lrs[0] == pytest.approx(cfg.lr / 25, rel=1e-4)
    assert int(np.argmax(lrs)) == 25 and lrs[25] == pytest.approx(cfg.lr, rel=1e-4)
    assert np.all(np.diff(lrs[:26]) > 0) and np.all(np.diff(lrs[25:]) < 0)
    assert lrs[-1] < 1e-3 * cfg.lr


# ----------------------------------------------------------------------- resumption


def test_resume_in_process_is_bitwise_identical(ref, tmp_path):
    ref_dir, final = ref
    # A run stopped after its checkpoint at step 2: the same work dir, later steps gone.
    shutil.copytree(ref_dir / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
    (tmp_path / "metrics.jsonl").write_text(log_upto(ref_dir, 2))
    state = training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)

    assert_states_equal(state, final)
    assert set(opt_counts(state.opt_state)) == {6}
    assert step_dirs(tmp_path) == [2, 4, 6]
    recs = records(tmp_path)
    assert record_steps(recs) == record_steps(records(ref_dir))
    ref_losses = {r["step"]: r["loss"] for r in records(ref_dir) if "loss" in r}
    assert all(r["loss"] == ref_losses[r["step"]] for r in recs if "loss" in r)
    _, variables, _ = checkpoint.load_model(tmp_path / "model", task="classifier")
    assert_trees_equal(variables, training.eval_variables(final))


def test_sigkill_between_checkpoints_then_restart(ref, spawn, tmp_path):
    ref_dir, final = ref
    workdir, hold = tmp_path / "w", tmp_path / "hold"
    hold.touch()
    proc = spawn(workdir, JG_HOLD=str(hold), JG_HOLD_STEP="3")  # Killed during step 4.
    wait_for_hold(proc, hold)
    assert step_dirs(workdir) == [2]  # Committed; the work since then (step 3) is lost.
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "model").exists()
    assert record_steps(records(workdir)) == [(2, "loss"), (3, "eval")]

    rc, out, err = finish(spawn(workdir))
    assert rc == 0, err[-3000:]
    assert "done" in out
    assert step_dirs(workdir) == [2, 4, 6]
    # metrics.jsonl continues from the checkpoint: step 3's record, written after it, is
    # dropped and written again by the restart, with the same result.
    recs, ref_recs = records(workdir), records(ref_dir)
    assert record_steps(recs) == record_steps(ref_recs) == [
        (2, "loss"), (3, "eval"), (4, "loss"), (6, "loss"), (6, "eval")]
    assert recs[1] == ref_recs[1]
    assert [r["loss"] for r in recs if "loss" in r] == [r["loss"] for r in ref_recs if "loss" in r]
    assert_states_equal(restore_final(workdir, final), final)
    _, variables, _ = checkpoint.load_model(workdir / "model", task="classifier")
    assert_trees_equal(variables, training.eval_variables(final))


@pytest.mark.slow
def test_sigkill_during_checkpoint_commit_then_restart(ref, spawn, tmp_path):
    """A crash just before checkpoint 4's atomic rename leaves only a tmp dir, never restored."""
    ref_dir, final = ref
    workdir = tmp_path / "w"
    rc, _, _ = finish(spawn(workdir, JG_DIE_AT_COMMIT="4"))
    assert rc == -signal.SIGKILL
    assert step_dirs(workdir) == [2]
    assert any(p.name.startswith("4.") for p in (workdir / "checkpoints").iterdir())

    rc, out, err = finish(spawn(workdir))
    assert rc == 0, err[-3000:]
    assert step_dirs(workdir) == [2, 4, 6]
    # Steps 3 and 4 were logged before the crash; the run resumed from step 2 dropped them
    # and logged them again, once.
    assert record_steps(records(workdir)) == [(2, "loss"), (3, "eval"), (4, "loss"),
                                              (6, "loss"), (6, "eval")]
    assert_states_equal(restore_final(workdir, final), final)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_finish(ref, spawn, tmp_path):
    """Several SIGKILLs at random times while steps, checkpoints and the export are written.

    Steps are paced (0.15 s each) so that the kills fall anywhere in the run: inside a step, in
    an Orbax commit, in the export, or after it. Every restart resumes from a committed
    checkpoint, and the final state is bitwise that of an uninterrupted run.
    """
    _, final = ref
    seed = int(os.environ.get("JG_FAULT_SEED", time.time_ns() % 2**31))
    rng = np.random.default_rng(seed)
    workdir, started = tmp_path / "w", tmp_path / "started"
    env = {"JG_STEP_SECONDS": "0.15", "JG_STARTED": str(started)}
    kills, context = [], f"JG_FAULT_SEED={seed}"
    for attempt in range(5):
        if 6 in step_dirs(workdir):  # Done but for the export: no step left to pace.
            break
        started.unlink(missing_ok=True)
        proc = spawn(workdir, **env)
        wait_for_file(proc, started)
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills.append((round(delay, 3), proc.returncode, step_dirs(workdir)))
        context = f"JG_FAULT_SEED={seed}, (delay, rc, committed) per kill: {kills}"
        assert set(step_dirs(workdir)) <= {2, 4, 6}, context
        if step_dirs(workdir):  # The latest committed checkpoint is whole.
            restore_final(workdir, final)
        if (workdir / "model").exists():
            checkpoint.load_model(workdir / "model", task="classifier")

    print(context)  # Shown with -s or on failure.
    rc, out, err = finish(spawn(workdir))
    assert rc == 0, f"{context}\n{err[-3000:]}"
    assert step_dirs(workdir) == [2, 4, 6], context
    assert_states_equal(restore_final(workdir, final), final)
    _, variables, _ = checkpoint.load_model(workdir / "model", task="classifier")
    assert_trees_equal(variables, training.eval_variables(final))


def test_sigterm_saves_checkpoint_and_rerun_resumes(ref, spawn, tmp_path):
    _, final = ref
    workdir, hold = tmp_path / "w", tmp_path / "hold"
    hold.touch()
    proc = spawn(workdir, JG_HOLD=str(hold), JG_HOLD_STEP="2")
    wait_for_hold(proc, hold)
    proc.send_signal(signal.SIGTERM)  # Arrives during step 3, not a checkpoint step.
    hold.unlink()
    rc, out, err = finish(proc)
    assert rc != 0 and "done" not in out
    assert "SIGTERM: saved checkpoint at step 3" in out, out + err[-3000:]
    assert step_dirs(workdir) == [2, 3] and not (workdir / "model").exists()
    mgr = checkpoint.manager(workdir, CFG.keep)
    assert checkpoint.read_train_metadata(mgr, 3)["step"] == 3
    n = len(records(workdir))

    state = training.train(CFG, workdir, dataset=synthetic_data(), progress=False)  # In-process.
    # Resumed from step 3: step 3's evaluation is not redone.
    assert record_steps(records(workdir)[n:]) == [(4, "loss"), (6, "loss"), (6, "eval")]
    assert_states_equal(state, final)
    assert set(opt_counts(state.opt_state)) == {6}
    assert_states_equal(restore_final(workdir, final), final)


# ----------------------------------------------------------------------- errors


def test_resume_with_another_config_is_refused(ref, tmp_path):
    ref_dir, final = ref
    workdir = tmp_path / "w"
    shutil.copytree(ref_dir, workdir)
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))

    with pytest.raises(TrainingError) as e:
        training.train(CFG.replace(lr=2 * CFG.lr), workdir, dataset=synthetic_data(),
                       progress=False)
    assert f"lr: {2 * CFG.lr} vs {CFG.lr}" in str(e.value)
    assert str(workdir / "checkpoints" / "6") in str(e.value)

    kwargs = tuple(sorted(CFG.model_kwargs + (("dropout", 0.25),)))  # Same shapes.
    with pytest.raises(TrainingError, match="model_kwargs") as e:
        training.train(CFG.replace(model_kwargs=kwargs), workdir, dataset=synthetic_data(),
                       progress=False)
    assert "dropout" in str(e.value) and "lr" not in str(e.value).split("differs in")[1]
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before

    # Operational fields may differ: the finished run resumes at its last step.
    state = training.train(CFG.replace(eval_every=5, log_every=1, ckpt_every=1, keep=3), workdir,
                           dataset=synthetic_data(), progress=False)
    assert_states_equal(state, final)
    assert step_dirs(workdir) == [2, 4, 6]


def test_nonfinite_state_stops_before_a_bad_checkpoint(ref, tmp_path, monkeypatch):
    """A step whose loss is finite but whose parameters are not (as max-pool or ReLU can
    hide NaNs from the loss): the run stops before checkpoint 4, naming checkpoint 2."""
    make_step = training.make_train_step

    def poisoned_step_4(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def run(state, images, labels):
            state, loss = step(state, images, labels)
            if int(state.step) == 4:
                params = jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), state.params)
                state = state.replace(params=params)
            return state, loss
        return run

    monkeypatch.setattr(training, "make_train_step", poisoned_step_4)
    with pytest.raises(TrainingError) as e:
        training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    msg = str(e.value)
    assert "non-finite by step 4" in msg
    assert f"last good checkpoint is step 2 in {tmp_path / 'checkpoints'}" in msg
    assert step_dirs(tmp_path) == [2] and not (tmp_path / "model").exists()
    mgr = checkpoint.manager(tmp_path, CFG.keep)
    good = checkpoint.restore_train(mgr, 2, checkpoint.abstract(ref[1]))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(good))


def unchecked_data(monkeypatch):
    """Lets bad data through `train`'s dataset check, to test the guards behind it."""
    monkeypatch.setattr(data, "check_dataset", lambda dataset, *args, **kwargs: dataset)


def test_train_refuses_a_bad_dataset(tmp_path):
    (x, y), test = synthetic_data()
    cases = [(((x, np.where(np.arange(len(y)) == 3, 99, y)), test), r"train labels: .*\[0, 9\]"),
             (((np.full_like(x, np.nan), y), test), r"train images: contain NaN or inf"),
             (((x, y[:-1]), test), r"train labels: got .*accepted integers"),
             (((x, y), (test[0][:0], test[1][:0])), r"test images: got float32 \(0,"),
             ((x, y), r"dataset: got tuple, accepted \(\(train_images"),
             (((x[:, :26, :26], y), (x[:, :26, :26], y)),
              r"dataset: images of shape \(26, 26, 1\) do not fit the 'resnet' model \(x: "
              r"got shape \(1, 26, 26, 1\), accepted \(B, H, W, C\) with B >= 1 and H and W "
              r"positive multiples of 4")]
    for dataset, pattern in cases:
        with pytest.raises((ValueError, TypeError), match=pattern):
            training.train(get_config("classifier", preset="tiny"), tmp_path, dataset=dataset,
                           progress=False)
    # The evaluator's reference statistics need two test examples of every class.
    one_of_each = (x[:10], np.arange(10, dtype=np.int32))
    with pytest.raises(ValueError, match=r"test labels: class 0 has 1 examples, accepted >= 2"):
        training.train(get_config("evaluator", preset="tiny"), tmp_path,
                       dataset=((x, y), one_of_each), progress=False)
    assert step_dirs(tmp_path) == []


def test_nan_loss_stops_the_run(tmp_path, monkeypatch):
    unchecked_data(monkeypatch)
    (x, y), test = synthetic_data()
    y = y.copy()
    y[data.batch_indices(CFG.seed, 3, len(x), CFG.batch_size)] = 99  # NaN loss at step 4.
    with pytest.raises(TrainingError) as e:
        training.train(CFG, tmp_path, dataset=((x, y), test), progress=False)
    msg = str(e.value)
    assert "loss became nan at step 4" in msg
    assert f"last good checkpoint is step 2 in {tmp_path / 'checkpoints'}" in msg
    assert step_dirs(tmp_path) == [2] and not (tmp_path / "model").exists()
    assert record_steps(records(tmp_path)) == [(2, "loss"), (3, "eval")]


def test_nan_images_before_any_checkpoint(tmp_path, monkeypatch):
    unchecked_data(monkeypatch)
    (x, y), test = synthetic_data()
    with pytest.raises(TrainingError) as e:
        training.train(CFG, tmp_path, dataset=((np.full_like(x, np.nan), y), test),
                       progress=False)
    msg = str(e.value)
    # The loss check or the state check stops it, whichever sees the NaNs first.
    assert re.search(r"(at|by) step [12]\b", msg), msg
    assert f"No checkpoint was written yet in {tmp_path}" in msg
    assert step_dirs(tmp_path) == [] and not (tmp_path / "model").exists()


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    workdir = blocker / "sub"
    # A data_dir that does not exist: the work dir must be refused before any data is read.
    with pytest.raises(ValueError, match=re.escape(f"workdir {workdir}: not writable")):
        training.train(CFG, workdir, data_dir=tmp_path / "no-mnist", progress=False)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("name, content, pattern", [
    ("checkpoints", "my notes", r"checkpoints is not a folder, so no checkpoint can be saved"),
    ("loss.png", "my notes", r"loss\.png is not a plot jaxguide made, so it is not replaced"),
    ("loss.png", "plain png", r"loss\.png is not a plot jaxguide made"),
    ("metrics.jsonl", '{"mine": 1}\n', r"metrics\.jsonl is not a jaxguide training log"),
    ("metrics.jsonl", '{"step": 100, "loss": 0.5}\n',  # A log, but not one jaxguide wrote.
     r"metrics\.jsonl is not a jaxguide training log \(its first line is not jaxguide's header\)"),
    ("metrics.jsonl", '{"step": 0, "jaxguide_log": 1, "task": "denoiser", "model": "unet"}\n',
     r"metrics\.jsonl is the log of a denoiser run; accepted a new work dir or one of a "
     r"classifier run"),
    ("metrics.jsonl", "hello world\n", r"metrics\.jsonl is not a jaxguide training log"),
    ("metrics.jsonl", None, r"metrics\.jsonl is not a jaxguide training log"),  # A folder.
])
def test_users_files_in_the_workdir_are_kept(tmp_path, name, content, pattern):
    mine = tmp_path / name
    if content is None:
        mine.mkdir()
    elif content == "plain png":
        Image.new("L", (2, 2)).save(mine)
    else:
        mine.write_text(content)
    before = mine.read_bytes() if mine.is_file() else None
    with pytest.raises(TrainingError, match=re.escape(f"workdir {tmp_path}: ") + pattern):
        training.train(CFG, tmp_path, data_dir=tmp_path / "no-mnist", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # Before any data or write.
    assert before is None or mine.read_bytes() == before


def test_log_keeps_only_the_steps_a_run_has_saved(ref, tmp_path):
    """A restart drops the log lines of steps it takes again: after a run that never saved
    a checkpoint all of them, after a checkpoint at step 2 those after step 2."""
    ref_dir, _ = ref
    ref_log = (ref_dir / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(ref_log)  # No checkpoint: a fresh start.
    training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    assert record_steps(records(tmp_path)) == record_steps(records(ref_dir))
    shutil.rmtree(tmp_path / "checkpoints")
    shutil.copytree(ref_dir / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
    training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    assert record_steps(records(tmp_path)) == record_steps(records(ref_dir))
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_workdir_in_use_is_refused(tmp_path):
    """Two runs in one work dir would overwrite each other's checkpoints and model."""
    with runtime.held_exclusively(tmp_path, "workdir", "training run"):  # Another run.
        with pytest.raises(ValueError, match=re.escape(f"workdir {tmp_path}: in use by another "
                                                       "training run; wait for it to end")):
            training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_resume_at_the_last_step_exports_the_saved_metrics(ref, tmp_path):
    """A run stopped after its last checkpoint (during the export): the rerun exports the
    model with the held-out metrics of that checkpoint, not none."""
    ref_dir, _ = ref
    last = CFG.steps
    shutil.copytree(ref_dir / "checkpoints" / str(last), tmp_path / "checkpoints" / str(last))
    (tmp_path / "metrics.jsonl").write_text(log_upto(ref_dir, last))
    training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    metrics = checkpoint.read_model_metadata(tmp_path / "model")["metrics"]
    assert metrics and metrics == checkpoint.read_model_metadata(ref_dir / "model")["metrics"]


def test_resume_from_an_empty_step_folder(tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{tmp_path / 'checkpoints' / '7'}: unreadable checkpoint metadata; remove this "
            "step's folder to resume from an earlier one")):
        training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)


def test_resume_from_a_checkpoint_without_its_arrays(ref, tmp_path):
    ref_dir, _ = ref
    shutil.copytree(ref_dir / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
    shutil.rmtree(tmp_path / "checkpoints" / "2" / "state")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'checkpoints' / '2'}: no "
                                                        "state/ (damaged); accepted a whole")):
        training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)


def test_export_keeps_an_evaluators_reference_statistics(ref, tmp_path):
    """An export cannot recompute an evaluator's test-set statistics: it never replaces a
    model folder that holds them."""
    ref_dir, _ = ref
    out = tmp_path / "evaluator"
    shutil.copytree(ref_dir / "model", out)
    stats = out / checkpoint.REFERENCE_FILE
    np.savez(stats, mu=np.zeros(2))
    before = stats.read_bytes()
    with pytest.raises(TrainingError, match=re.escape(f"{out}: holds the "
                                                      f"{checkpoint.REFERENCE_FILE} of an evaluator")):
        training.export(ref_dir, out=out)
    assert stats.read_bytes() == before


def test_a_workdir_made_by_a_failed_run_is_removed(tmp_path):
    workdir = tmp_path / "new" / "work"
    with pytest.raises(data.DataError):
        training.train(CFG, workdir, data_dir=tmp_path / "no-mnist", progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old" / "sub").mkdir(parents=True)  # One that existed before is kept, empty
    for path in (tmp_path / "old", tmp_path / "new" / ".." / "old"):  # or not, however named.
        with pytest.raises(data.DataError):
            training.train(CFG, path, data_dir=tmp_path / "no-mnist", progress=False)
        assert (tmp_path / "old" / "sub").is_dir()


def test_resume_after_a_kill_mid_log_line(ref, tmp_path):
    """A log whose last line a kill cut short still resumes; the torn line is dropped."""
    ref_dir, _ = ref
    shutil.copytree(ref_dir / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
    (tmp_path / "metrics.jsonl").write_text(log_upto(ref_dir, 2) + '{"step": 3, "lo')
    training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    assert record_steps(records(tmp_path)) == record_steps(records(ref_dir))


def test_disk_too_small_for_the_checkpoints(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: usage._replace(free=2**20))
    with pytest.raises(TrainingError, match=r"workdir .*: 1\.0 MiB free, but 10 checkpoints"):
        training.train(CFG, tmp_path, dataset=synthetic_data(), progress=False)
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------- load_model


@pytest.fixture
def model_copy(ref, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(ref[0] / "model", path)
    return path


def edit_metadata(path, **changes):
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


def test_load_model_missing_or_empty(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'nope'}: not found")):
        checkpoint.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'empty'}: no metadata.json")):
        checkpoint.load_model(tmp_path / "empty")


def test_load_model_bad_metadata(model_copy):
    edit_metadata(model_copy, format_version=999)
    with pytest.raises(CheckpointError, match=re.escape(f"{model_copy}: format version 999 is newer")):
        checkpoint.load_model(model_copy)
    edit_metadata(model_copy, format="something.else", format_version=1)
    with pytest.raises(CheckpointError, match="not a jaxguide checkpoint"):
        checkpoint.load_model(model_copy)
    (model_copy / "metadata.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape(f"{model_copy / 'metadata.json'}: unreadable JSON")):
        checkpoint.load_model(model_copy)


def test_load_model_wrong_task_or_model(model_copy):
    with pytest.raises(CheckpointError, match=re.escape(
            f"{model_copy}: holds a 'classifier' model, expected a 'denoiser' model")):
        checkpoint.load_model(model_copy, task="denoiser")
    edit_metadata(model_copy, model="unet")
    with pytest.raises(CheckpointError, match=re.escape(
            f"{model_copy / 'metadata.json'}: model: got 'unet' for task 'classifier'")):
        checkpoint.load_model(model_copy)
    for task in ("generator", 1):
        with pytest.raises(ValueError, match=f"task: got {task!r}, accepted denoiser, "):
            checkpoint.load_model(model_copy, task=task)
    with pytest.raises(ValueError, match="path: got ''; accepted the path of a folder"):
        checkpoint.load_model("")
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint dir {model_copy / 'metadata.json'}: a file, not a folder")):
        checkpoint.load_model(model_copy / "metadata.json")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's reader.
def test_load_model_arrays_of_another_shape(model_copy):
    meta = json.loads((model_copy / "metadata.json").read_text())
    edit_metadata(model_copy, model_kwargs={**meta["model_kwargs"], "channels": [8, 24]})
    with pytest.raises(CheckpointError, match=re.escape(f"{model_copy}: arrays do not match")):
        checkpoint.load_model(model_copy)
    gc.collect()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's reader.
def test_load_model_missing_or_corrupt_state(model_copy):
    state = model_copy / "state"
    backup = model_copy.parent / "state.bak"
    shutil.move(state, backup)
    with pytest.raises(CheckpointError, match=re.escape(f"{model_copy}: no state/")):
        checkpoint.load_model(model_copy)
    state.mkdir()
    with pytest.raises(CheckpointError,
                       match=re.escape(f"{model_copy}: state/ unreadable: corrupt or incomplete")):
        checkpoint.load_model(model_copy)
    shutil.rmtree(state)
    shutil.copytree(backup, state)
    for f in state.rglob("*"):  # Truncate every data file.
        if f.is_file() and "ocdbt.process" in str(f.relative_to(state)):
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(model_copy))):
        checkpoint.load_model(model_copy)
    gc.collect()  # Orbax's abandoned read coroutines are reported here, under the filter.


# ----------------------------------------------------------------------- console


def test_eval_lines_print_above_the_bar_which_shows_one_rate(tmp_path, monkeypatch):
    """On a terminal (stdout and stderr on one screen) an eval line never lands on the
    progress bar's line, and the bar shows one rate (the run's average, as the log's)."""
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    training.train(CFG, tmp_path, dataset=synthetic_data(), progress=True)
    text = screen.getvalue()
    evals = [m.start() for m in re.finditer(r"step \d+: eval/", text)]
    assert len(evals) == 2 and all(i > 0 for i in evals), text  # After the bar's first draw.
    assert all(text[i - 1] in "\r\n" for i in evals), text  # The bar was cleared first.
    bars = [line for line in re.split(r"[\r\n]", text) if line.startswith(f"{CFG.task}:")]
    assert bars and all(len(re.findall(r"step/s|s/step|it/s|s/it|it_s", line)) == 1
                        for line in bars), bars


# ----------------------------------------------------------------------- CLI


@pytest.mark.parametrize("args, expected", [
    (["--steps", "0"], ["steps", "got 0"]),
    (["--config", "tiny", "--data-dir", "/nonexistent"], ["/nonexistent"]),
])
def test_cli_user_errors(tmp_path, args, expected):
    workdir = tmp_path / "w"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "classifier", "--workdir",
                           str(workdir), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(word in lines[0] for word in expected), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not workdir.exists()  # Refused before it was made, or removed again while empty.


def test_cli_help_shows_defaults():
    """--help names each default, or that it is the --config preset's."""
    from conftest import help_entries, load_script

    entries = help_entries(load_script("train.py"))
    assert "(default: default)" in entries["--config"]
    for flag in ("--steps", "--batch-size", "--lr", "--seed", "--label-dropout", "--ckpt-every",
                 "--eval-every"):
        assert "(default: the --config preset's)" in entries[flag], entries[flag]


@pytest.mark.parametrize("sig, status", [  # One code path: SIGINT's run under -m slow.
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_cli_stops_on_a_signal_with_its_status(tmp_path, sig, status):
    """train.py saves a checkpoint and exits with 128 + the signal's number, no traceback."""
    from test_data import write_dataset

    (tmp_path / "mnist").mkdir()
    write_dataset(tmp_path / "mnist", gz=False, n_train=16, n_test=4)
    workdir = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "classifier", "--workdir", str(workdir),
         "--data-dir", str(tmp_path / "mnist"), "--config", "tiny", "--steps", "1000000",
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "metrics.jsonl").exists():  # Past compilation, in the loop.
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    assert f"{signal.Signals(sig).name}: saved checkpoint at step" in out
    assert "Traceback" not in out + err
    assert step_dirs(workdir)


def test_warm_start_from_a_model_and_resume_without_it(ref, tmp_path):
    ref_dir, _ = ref
    init = tmp_path / "init"
    shutil.copytree(ref_dir / "model", init)
    cfg = CFG.replace(init_from=str(init), lr=1e-9)  # A step barely moves the parameters.
    model = make_model(cfg.model, cfg.kwargs)
    fresh = training.create_state(cfg, model, training.make_optimizer(cfg))
    started = training.warm_start(cfg, fresh)
    _, variables, _ = checkpoint.load_model(init)
    assert_trees_equal(started.params, variables["params"])
    assert_trees_equal(started.ema_params, variables["params"])

    workdir = tmp_path / "w"
    state = training.train(cfg.replace(steps=4), workdir, dataset=synthetic_data(), progress=False)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(variables["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6)
    shutil.rmtree(init)  # A resumed warm-started run needs only its own checkpoints.
    training.train(cfg.replace(steps=4), workdir, dataset=synthetic_data(), progress=False)
    meta = checkpoint.read_model_metadata(workdir / "model")
    assert meta["config"]["init_from"] == str(init)
    before = training.trained_images(checkpoint.read_model_metadata(ref_dir / "model"))
    assert before > 0 and meta["images_before"] == before  # Also after the resume.
    assert training.trained_images(meta) == before + 4 * cfg.batch_size
    training.train(cfg.replace(steps=4, init_from=None), workdir, dataset=synthetic_data(),
                   progress=False)  # init_from matters to a run's start only.


def test_warm_start_from_another_model_is_refused(ref, tmp_path):
    other = CFG.replace(model_kwargs=dict(CFG.kwargs, blocks=2),
                        init_from=str(ref[0] / "model"))
    with pytest.raises(ValueError, match=r"^init_from: .* accepted a model of this run's"):
        training.train(other, tmp_path / "w", dataset=synthetic_data(), progress=False)
    # The same model with a default spelled out (as presets now give num_classes) is this run's.
    model = make_model(CFG.model, CFG.kwargs)
    name, value = next((f.name, getattr(model, f.name)) for f in dataclasses.fields(model)
                       if f.name not in CFG.kwargs and f.name not in ("parent", "name")
                       and isinstance(getattr(model, f.name), (int, float)))
    spelled = CFG.replace(model_kwargs={**CFG.kwargs, name: value}, init_from=str(ref[0] / "model"))
    assert training.check_init_from(spelled)["task"] == CFG.task


test_export_bad_argument = raising_cases({
    "export-step-float": (lambda: training.export("w", step=4.0), ValueError,
                          r"step: got 4\.0, accepted an integer >= 0"),
    "export-out-empty": (lambda: training.export("w", out=""), ValueError,
                         r"out: got '', accepted a non-empty path or None"),
    "export-workdir-none": (lambda: training.export(None), TypeError,
                            r"workdir: got None, accepted a path"),
})
