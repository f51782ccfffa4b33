"""End-to-end tests of the sample.py command line on tiny checkpoints.

One true subprocess run (the process exit status, its printed paths, its outputs); the
other runs call `cli.run(sample.main, argv)` in this process, which avoids a JAX start-up
and compilation per run. Comparing the in-process run with the subprocess one checks that
the same command gives bitwise-identical images in two processes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_script, run_cli
from jaxguide import cli

ARGS = ["--steps", "3", "--per-class", "2", "--classes", "0,3,7"]
LABELS = [0, 0, 3, 3, 7, 7]


def load_npz(out):
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        return dict(f)


@pytest.fixture(scope="module")
def sample_script():
    return load_script("sample.py")


@pytest.fixture(scope="module")
def subprocess_run(tiny_checkpoints, tmp_path_factory):
    """`python sample.py --checkpoint-dir <tiny> --steps 3 --per-class 2 --classes 0,3,7`."""
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = run_cli("sample.py", "--checkpoint-dir", tiny_checkpoints, *ARGS, "--out", out)
    return proc, out


def run_in_process(script, capsys, *argv):
    rc = cli.run(script.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


def test_subprocess_sample_writes_grid_gif_and_npz(subprocess_run):
    proc, out = subprocess_run
    defaults = load_script("sample.py").parse_args([])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("grid.png", "trajectory.gif", "samples.npz"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert str(path) in proc.stdout.splitlines(), proc.stdout
    assert not list(out.glob(".probe*"))

    d = load_npz(out)
    images = d["images"]
    assert images.dtype == np.float32 and images.shape == (6, 28, 28, 1)
    assert np.all(np.isfinite(images)) and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0
    assert d["labels"].tolist() == LABELS
    assert int(d["seed"]) == 0 and int(d["steps"]) == 3 and float(d["scale"]) == defaults.scale
    assert str(d["sampler"]) == defaults.sampler
    versions = json.loads(str(d["versions"]))
    assert {"python", "jax", "flax", "numpy", "jaxguide"} <= set(versions)

    with Image.open(out / "grid.png") as im:
        assert im.format == "PNG" and im.size[0] > 0
    with Image.open(out / "trajectory.gif") as im:
        assert im.format == "GIF" and im.n_frames > 1


def test_same_command_in_another_process_gives_identical_images(
        subprocess_run, sample_script, tiny_checkpoints, tmp_path, capsys):
    _, out_a = subprocess_run
    out_b = tmp_path / "b"
    run_in_process(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, *ARGS,
                   "--out", out_b)
    a, b = load_npz(out_a), load_npz(out_b)
    assert np.array_equal(a["images"], b["images"])  # bitwise (no NaN: checked above)
    assert np.array_equal(a["labels"], b["labels"])
    assert (out_b / "trajectory.gif").is_file()


def test_batch_size_and_no_gif(subprocess_run, sample_script, tiny_checkpoints, tmp_path,
                               capsys):
    """Noise is per sample: --batch-size 1, 4 and the default 40 give the same images (up to
    float rounding: bitwise equality holds for the same command, see the test above)."""
    _, out_a = subprocess_run
    reference = load_npz(out_a)["images"]
    for batch_size in (1, 4):
        out = tmp_path / f"bs{batch_size}"
        captured = run_in_process(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints,
                                  *ARGS, "--batch-size", batch_size, "--no-gif", "--out", out)
        assert not (out / "trajectory.gif").exists()
        assert (out / "grid.png").is_file()
        assert str(out / "trajectory.gif") not in captured.out
        d = load_npz(out)
        assert d["labels"].tolist() == LABELS
        # Same noise per image whatever the batch; the network's arithmetic may round
        # differently for another batch shape (XLA picks kernels by shape), so not bitwise.
        np.testing.assert_allclose(d["images"], reference, rtol=0, atol=1e-4,
                                   err_msg=f"--batch-size {batch_size} differs")


def test_all_classes_one_each(sample_script, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "all"
    # --batch-size 4 --no-gif: the shapes compiled by the test above are reused.
    run_in_process(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, "--steps", 3,
                   "--classes", "0-9", "--per-class", 1, "--batch-size", 4, "--no-gif",
                   "--out", out)
    d = load_npz(out)
    assert d["images"].shape == (10, 28, 28, 1) and d["images"].dtype == np.float32
    assert d["labels"].tolist() == list(range(10))
    assert (out / "grid.png").is_file() and not (out / "trajectory.gif").exists()


def test_figures(sample_script, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "figs"
    captured = run_in_process(sample_script, capsys, "figures", "--checkpoint-dir",
                              tiny_checkpoints, "--steps", 3, "--out", out)
    for name in ("classifier_over_time.png", "gradient_maps.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
        assert str(out / name) in captured.out
        with Image.open(out / name) as im:
            assert im.format == "PNG"


def test_closed_console_loses_no_outputs(sample_script, tiny_checkpoints, tmp_path,
                                         monkeypatch):
    """Progress bar and printed paths to a closed stdout and stderr (a broken pipe, `>
    /dev/full` alike): the run still succeeds and writes its outputs."""
    import io

    for name in ("stdout", "stderr"):
        stream = io.StringIO()
        stream.close()
        monkeypatch.setattr(f"sys.{name}", stream)
    out = tmp_path / "closed"
    rc = cli.run(sample_script.main, ["--checkpoint-dir", str(tiny_checkpoints), *ARGS,
                                      "--batch-size", "4", "--no-gif", "--out", str(out)])
    assert rc == 0
    assert (out / "grid.png").is_file() and load_npz(out)["labels"].tolist() == LABELS
