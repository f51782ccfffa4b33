"""Data parallelism on 4 simulated CPU devices (a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4), against this 1-device process.

Sampling draws the same noise on 1 and 4 devices and gives the same images up to float32
rounding: every operation acts on each image alone, but XLA:CPU's convolution kernels sum
in an order that depends on the per-device batch and threads. Training matches within
float32 rounding too: the loss and gradients are means over the batch, and N devices sum
their shards in another order before the all-reduce.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxguide import checkpoint, parallel, training
from jaxguide.configs import get_config
from test_training import assert_trees_equal, records, synthetic_data

N_DEVICES = 4

WORKER = textwrap.dedent('''
    import json, shutil, sys
    from pathlib import Path
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    sys.path.insert(0, {tests!r})
    from conftest import load_script
    from test_parallel import config
    from test_training import synthetic_data
    from jaxguide import parallel, pipeline, training

    assert jax.device_count() == {n}, jax.devices()
    out, ckdir, w1 = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    # Sampling: the same 8 images on 1 and 4 devices, with a trajectory.
    pipe = pipeline.load_pipeline(ckdir)
    labels = jnp.arange(8) % pipe.num_classes
    arrays = {{}}
    for n in (1, 4):
        x, traj = pipeline.generate(jax.random.key(3), pipe, labels, 2.0, n_steps=4,
                                    record_every=2,
                                    mesh=parallel.make_mesh(n))
        if n > 1:
            assert x.sharding.spec == P("data") and traj.sharding.spec == P(None, "data")
        arrays[f"x{{n}}"], arrays[f"traj{{n}}"] = np.asarray(x), np.asarray(traj)

    # A batch that does not split evenly is refused, naming it.
    for call in (lambda: pipeline.generate(jax.random.key(3), pipe, labels[:6], 2.0, n_steps=4,
                                           mesh=parallel.make_mesh(4)),
                 lambda: training.train(config().replace(batch_size=6), out / "w6",
                                        dataset=synthetic_data(), progress=False)):
        try:
            call()
            raise AssertionError("a batch of 6 on 4 devices was accepted")
        except ValueError as e:
            assert "got 6, accepted a multiple of the 4 devices" in str(e), e
    assert not (out / "w6").exists()

    # sample.py on 4 devices (a batch of 6 is rounded up to 8).
    sample = load_script("sample.py")
    sample.main(["--checkpoint-dir", ckdir, "--classes", "0-3", "--per-class", "3",
                 "--steps", "3", "--batch-size", "6", "--no-gif", "--out", str(out / "cli")])

    # Training from scratch on 4 devices, and resumed on 4 from a 1-device checkpoint.
    training.train(config(), out / "w4", dataset=synthetic_data(), progress=False)
    shutil.copytree(w1 / "checkpoints" / "2", out / "w1to4" / "checkpoints" / "2")
    training.train(config(), out / "w1to4", dataset=synthetic_data(), progress=False)
    np.savez(out / "arrays.npz", **arrays)
''')


def config():
    """The classifier's tiny preset (6 steps of 8, dropout) with checkpoints every 2 steps."""
    return get_config("classifier", preset="tiny").replace(ckpt_every=2, keep=10)


def losses(workdir):
    return [r["loss"] for r in records(workdir) if "loss" in r]


def restore(workdir, step, like):
    mgr = checkpoint.manager(workdir, 10)
    return checkpoint.restore_train(mgr, step, checkpoint.abstract(like))


def assert_states_close(actual, expected, rtol=1e-5, atol=1e-6):
    for field in ("step", "params", "opt_state"):
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol),
                     getattr(actual, field), getattr(expected, field))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """(workdir, final state) of config() trained on this process's single device."""
    assert jax.device_count() == 1
    workdir = tmp_path_factory.mktemp("w1")
    return workdir, training.train(config(), workdir, dataset=synthetic_data(), progress=False)


@pytest.fixture(scope="module")
def four_devices(one_device, tiny_checkpoints, tmp_path_factory):
    """The output folder of the worker script, run with 4 simulated devices."""
    out = tmp_path_factory.mktemp("four")
    script = out / "worker.py"
    script.write_text(WORKER.format(tests=str(REPO / "tests"), n=N_DEVICES))
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), str(out), str(tiny_checkpoints),
                           str(one_device[0])], cwd=out, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow  # The 4-device worker process: about a minute.
def test_sharded_sampling_equals_one_device(four_devices, tiny_checkpoints):
    """Same noise, same images to float32 rounding, on one device of the 4-device process and
    on all 4: XLA:CPU's convolutions sum in an order that depends on the per-device batch
    and on the threads each device gets."""
    from jaxguide import pipeline

    arrays = np.load(four_devices / "arrays.npz")
    pipe = pipeline.load_pipeline(tiny_checkpoints)
    x, traj = pipeline.generate(jax.random.key(3), pipe, np.arange(8) % pipe.num_classes, 2.0,
                                n_steps=4, record_every=2)
    for n in (1, 4):
        np.testing.assert_allclose(arrays[f"x{n}"], np.asarray(x), rtol=0, atol=1e-5)
        np.testing.assert_allclose(arrays[f"traj{n}"], np.asarray(traj), rtol=0, atol=1e-5)


@pytest.mark.slow  # The 4-device worker process: about a minute.
def test_sample_cli_on_four_devices_equals_one(four_devices, tiny_checkpoints, tmp_path):
    from conftest import load_script

    load_script("sample.py").main(["--checkpoint-dir", str(tiny_checkpoints), "--classes", "0-3",
                                   "--per-class", "3", "--steps", "3", "--batch-size", "6",
                                   "--no-gif", "--out", str(tmp_path)])
    four, one = np.load(four_devices / "cli" / "samples.npz"), np.load(tmp_path / "samples.npz")
    np.testing.assert_array_equal(four["labels"], one["labels"])
    np.testing.assert_allclose(four["images"], one["images"], rtol=0, atol=1e-4)


@pytest.mark.slow  # The 4-device worker process: about a minute.
def test_sharded_training_matches_one_device(four_devices, one_device):
    w1, state1 = one_device
    np.testing.assert_allclose(losses(four_devices / "w4"), losses(w1), rtol=1e-5)
    # Saved on 4 devices, restored here on 1.
    assert_states_close(restore(four_devices / "w4", 6, state1), state1)


@pytest.mark.slow  # The 4-device worker process: about a minute.
def test_checkpoints_move_between_device_counts(four_devices, one_device, tmp_path):
    w1, state1 = one_device
    # 1 -> 4: the worker resumed the 1-device checkpoint 2 on 4 devices and finished.
    assert_states_close(restore(four_devices / "w1to4", 6, state1), state1)
    np.testing.assert_allclose(losses(four_devices / "w1to4"), losses(w1)[1:], rtol=1e-5)
    # 4 -> 1: resume the 4-device checkpoint 4 here.
    shutil.copytree(four_devices / "w4" / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
    state = training.train(config(), tmp_path, dataset=synthetic_data(), progress=False)
    assert_states_close(state, state1)
    _, variables, _ = checkpoint.load_model(tmp_path / "model", task="classifier")
    assert_trees_equal(variables, training.eval_variables(state))


def test_mesh_and_batch_validation():
    with pytest.raises(ValueError, match=r"devices: got 2, accepted 1\.\.1"):
        parallel.make_mesh(2)
    with pytest.raises(ValueError, match=r"devices: got 0, accepted 1\.\.1"):
        parallel.make_mesh(0)
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == 1


MULTIPROCESS_WORKER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import load_script
    from test_parallel import config
    from test_training import synthetic_data

    port, pid, ckdir, out = sys.argv[1:]
    load_script("sample.py").main([
        "--coordinator-address", f"localhost:{{port}}", "--num-processes", "2",
        "--process-id", pid, "--checkpoint-dir", ckdir, "--classes", "0-3", "--per-class", "3",
        "--steps", "3", "--batch-size", "6", "--no-gif", "--out", out + "/cli"])
    import jax
    from jaxguide import training
    assert (jax.process_count(), jax.device_count()) == (2, 4)
    training.train(config(), out + "/w", dataset=synthetic_data(), progress=False)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_two_devices(one_device, tiny_checkpoints, tmp_path):
    """A multi-host run simulated by two processes (jax.distributed, gloo collectives):
    sample.py writes the one-process images; training gives the one-device state."""
    script = tmp_path / "worker.py"
    script.write_text(MULTIPROCESS_WORKER.format(tests=str(REPO / "tests")))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i),
                               str(tiny_checkpoints), str(tmp_path)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]

    from conftest import load_script

    load_script("sample.py").main(["--checkpoint-dir", str(tiny_checkpoints), "--classes", "0-3",
                                   "--per-class", "3", "--steps", "3", "--batch-size", "6",
                                   "--no-gif", "--out", str(tmp_path / "one")])
    two, one = np.load(tmp_path / "cli" / "samples.npz"), np.load(tmp_path / "one" / "samples.npz")
    np.testing.assert_allclose(two["images"], one["images"], rtol=0, atol=1e-4)
    w1, state1 = one_device
    np.testing.assert_allclose(losses(tmp_path / "w"), losses(w1), rtol=1e-5)
    assert_states_close(restore(tmp_path / "w", 6, state1), state1)
    _, variables, _ = checkpoint.load_model(tmp_path / "w" / "model", task="classifier")
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6),
                 variables, training.eval_variables(state1))


def test_train_step_compiles_once_on_a_mesh():
    """The state keeps the mesh's sharding from step to step (no recompilation)."""
    from jaxguide.nets import make_model

    cfg, mesh = config(), parallel.make_mesh()
    model, tx = make_model(cfg.model, cfg.kwargs), training.make_optimizer(cfg)
    state = parallel.replicate(mesh, training.create_state(cfg, model, tx))
    step = training.make_train_step(cfg, model, tx, mesh)
    (x, y), _ = synthetic_data(cfg.batch_size)
    for _ in range(3):
        state, loss = step(state, *parallel.shard_batch(mesh, x, y))
    assert step._cache_size() == 1
