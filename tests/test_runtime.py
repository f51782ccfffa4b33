"""runtime: the one signal mechanism (held, taken, re-delivered, raised), staged writes and
ownership marks. The CLIs' and training's use of them is tested end to end in test_cli.py
and test_training.py."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from jaxguide import runtime


@pytest.fixture
def recorded():
    """The signals the handlers before a `runtime.Signals` block receive."""
    got = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in runtime.SIGNALS}
    yield got
    for s, handler in old.items():
        signal.signal(s, handler)


def test_held_signals_are_delivered_when_the_block_ends(recorded):
    with runtime.Signals() as signals:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        assert signals.signum == signal.SIGTERM and recorded == []
    assert recorded == [signal.SIGTERM]  # The first one only.
    signal.raise_signal(signal.SIGINT)  # The handlers before the block are back.
    assert recorded == [signal.SIGTERM, signal.SIGINT]


def test_a_taken_signal_is_not_delivered_again(recorded):
    with pytest.raises(runtime.Interrupted) as e, runtime.Signals() as signals:
        assert signals.signum is None
        signal.raise_signal(signal.SIGTERM)
        raise signals.take()
    assert (e.value.status, e.value.signum, str(e.value)) == (143, signal.SIGTERM, "SIGTERM")
    assert signals.signum is None and recorded == []


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_not_held_a_signal_raises_where_the_program_is(recorded, sig, status):
    with pytest.raises(runtime.Interrupted) as e, runtime.Signals(hold=False):
        signal.raise_signal(sig)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.status == status
    assert recorded == []


def test_a_signal_held_inside_a_raising_block_is_raised_when_the_step_ends():
    steps = []
    with pytest.raises(runtime.Interrupted) as e, runtime.Signals(hold=False):
        with runtime.Signals():
            signal.raise_signal(signal.SIGINT)
            steps.append("finished")  # Not cut in two.
        steps.append("after")
    assert steps == ["finished"] and e.value.status == 130


@pytest.mark.parametrize("script", ["sample.py", "train.py"])
def test_ctrl_c_while_jax_imports_exits_130_without_a_traceback(script):
    """SIGINT arrives while the script's imports load JAX (a deterministic point: an import
    hook raises it when jax.numpy is looked up)."""
    code = (
        "import importlib.abc, runpy, signal, sys\n"
        "class Interrupt(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'jax.numpy':\n"
        "            signal.raise_signal(signal.SIGINT)\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"sys.argv = [{script!r}, '--help']\n"
        f"runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
        "print('not interrupted')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_writing_to_moves_all_files_into_place_or_none(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    with runtime.writing_to(tmp_path, "out", remove=["old.txt"]) as stage:
        stage("a.txt").write_text("a")
        stage("b.txt").write_text("b")
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
            "old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(RuntimeError), runtime.writing_to(tmp_path, "out") as stage:
        stage("a.txt").write_text("new")
        raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "a"


def test_check_outputs_names_the_argument(tmp_path):
    (tmp_path / "samples.npz").write_bytes(b"notes")
    outputs = {"samples.npz": ("an npz of samples",
                               lambda p: runtime.npz_holds(p, ("images",)))}
    with pytest.raises(ValueError, match=r"^out_dir .*samples\.npz: it exists and is not an "
                       r"npz of samples; move it away or choose another out_dir$"):
        runtime.check_outputs(tmp_path, outputs, ["samples.npz"], "out_dir")
    np.savez(tmp_path / "samples.npz", images=np.zeros(1))
    runtime.check_outputs(tmp_path, outputs, ["samples.npz"], "out_dir")
