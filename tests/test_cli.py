"""End-to-end tests of the sample.py command line on tiny checkpoints.

One true subprocess run (the process exit status, its printed paths, its outputs); the
other runs call `cli.run(sample.main, argv)` in this process, which avoids a JAX start-up
and compilation per run. Comparing the in-process run with the subprocess one checks that
the same command gives bitwise-identical images in two processes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import help_entries, load_script, run_cli
from jaxguide import cli
from jaxguide.pipeline import DEFAULT_SAMPLING

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
    assert int(d["seed"]) == 0 and int(d["steps"]) == 3
    # The tiny denoiser is class-conditional: classifier-free guidance at its default weight.
    assert str(d["guidance"]) == "free"
    assert float(d["scale"]) == load_script("sample.py").DEFAULT_SCALES["free"]
    assert (str(d["sampler"]), str(d["grid"])) == DEFAULT_SAMPLING["free"][::2]
    assert (int(d["nfe"]), int(d["classifier_nfe"])) == (2 * 3, 0)  # Guided: 2 per step.
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


def test_guidance_interval(sample_script, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "interval"
    run_in_process(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, "--steps", 4,
                   "--classes", "3", "--per-class", 1, "--no-gif", "--interval", 0.5, 1,
                   "--grid", "uniform", "--out", out)
    d = load_npz(out)
    # Steps start at t = 1, 0.75025, 0.5005, 0.25075: three guided (2 evaluations), one not.
    assert d["interval"].tolist() == [0.5, 1.0] and int(d["nfe"]) == 7
    run_in_process(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, "--steps", 4,
                   "--classes", "3", "--per-class", 1, "--no-gif", "--interval", 0.5, 1,
                   "--grid", "quadratic", "--out", out)
    d = load_npz(out)  # Quadratic: t = 1, 0.5629, 0.2508, 0.0634: two guided.
    assert str(d["grid"]) == "quadratic" and int(d["nfe"]) == 6
    assert cli.run(sample_script.main, ["--interval", "0.5", "0.2"]) == 2
    assert "--interval: got 0.5 0.2, accepted T_LO T_HI with 0 <= T_LO <= T_HI" in \
        capsys.readouterr().err


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


# ------------------------------------------------------------------------ one run's outputs


def fake_generate(key, pipe, labels, scale, *, record_every=None, **kwargs):
    """pipeline.generate without sampling: images (and 3 frames) of the label's value."""
    import jax.numpy as jnp

    x = jnp.broadcast_to((labels / 10.0)[:, None, None, None], (len(labels), 28, 28, 1))
    return (x, jnp.stack([x] * 3)) if record_every else x


@pytest.fixture
def fake_sampling(monkeypatch):
    from jaxguide import pipeline

    monkeypatch.setattr(pipeline, "generate", fake_generate)


def run_rc(script, capsys, *argv):
    rc = cli.run(script.main, [str(a) for a in argv])
    return rc, capsys.readouterr()


def save_marked_png(path):
    """A 2×2 PNG with the metadata of the PNGs jaxguide writes."""
    from PIL import PngImagePlugin

    from jaxguide import viz

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", viz.SOFTWARE)
    Image.new("L", (2, 2)).save(path, pnginfo=info)


def assert_refused(rc, captured, *texts):
    assert rc == 2, captured.err
    line = captured.err.splitlines()[-1]
    assert len([s for s in captured.err.splitlines() if s.startswith("error: ")]) == 1
    assert "Traceback" not in captured.err and line.startswith("error: "), captured.err
    for text in texts:
        assert text in line, f"{text!r} not in {line!r}"


SMALL = ["--steps", 2, "--per-class", 1]


def test_no_gif_removes_the_gif_of_an_earlier_run(sample_script, tiny_checkpoints, tmp_path,
                                                  capsys, fake_sampling):
    out = tmp_path / "O"
    base = ["--checkpoint-dir", tiny_checkpoints, *SMALL, "--out", out]
    run_in_process(sample_script, capsys, *base, "--classes", 3)
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "samples.npz", "trajectory.gif"]
    captured = run_in_process(sample_script, capsys, *base, "--classes", 5, "--no-gif")
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "samples.npz"]
    assert load_npz(out)["labels"].tolist() == [5]
    assert captured.out.splitlines() == [str(out / "grid.png"), str(out / "samples.npz")]


@pytest.mark.parametrize("name, content, argv", [
    ("trajectory.gif", b"my notes", ["--no-gif"]),  # Would be removed.
    ("trajectory.gif", b"my notes", []),  # Would be replaced.
    ("grid.png", b"GIF89a not a png", []),
    ("grid.png", "plain png", []),  # A PNG, but not one jaxguide made.
    ("trajectory.gif", "plain gif", ["--no-gif"]),
    ("samples.npz", b"", []),
    ("samples.npz", "other npz", []),  # A valid npz, not sample.py's arrays.
])
def test_user_files_named_like_outputs_are_kept(name, content, argv, sample_script,
                                                tiny_checkpoints, tmp_path, capsys, monkeypatch):
    from jaxguide import pipeline

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(pipeline, "generate", no_sampling)
    out = tmp_path / "mine"
    out.mkdir()
    if content == "other npz":
        np.savez(out / name, images=np.zeros(2), labels=np.zeros(2))
    elif content in ("plain png", "plain gif"):
        Image.new("L", (2, 2)).save(out / name, format=content[-3:])
    else:
        (out / name).write_bytes(content)
    before = (out / name).read_bytes()
    rc, captured = run_rc(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, *SMALL,
                          *argv, "--out", out)
    verb = "cannot remove" if argv else "cannot write"
    assert_refused(rc, captured, f"--out {out}: {verb} {out / name}", "not sample.py's",
                   "choose another --out")
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_bytes() == before


def test_an_out_folder_in_use_is_refused(sample_script, tiny_checkpoints, tmp_path, capsys,
                                        fake_sampling):
    """Two runs writing one --out would mix their outputs."""
    from jaxguide import runtime

    out = tmp_path / "busy"
    out.mkdir()
    with runtime.held_exclusively(out, "--out", "sample.py run"):  # Another run.
        rc, captured = run_rc(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, *SMALL,
                              "--out", out)
    assert_refused(rc, captured, f"--out {out}: in use by another sample.py run")
    assert list(out.iterdir()) == []


def test_a_dangling_link_as_out_is_named(sample_script, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "link"
    out.symlink_to(tmp_path / "nowhere")
    rc, captured = run_rc(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, *SMALL,
                          "--out", out)
    assert_refused(rc, captured, f"--out {out}: a link to {tmp_path / 'nowhere'}, which does "
                   "not exist; accepted a folder")
    assert not (tmp_path / "nowhere").exists()


def test_staging_never_touches_a_users_hidden_files(sample_script, tiny_checkpoints, tmp_path,
                                                    capsys, fake_sampling):
    """Outputs are staged in a new hidden folder: a user's files or links of any name stay."""
    out = tmp_path / "hidden"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (out / ".grid.partial.png").write_text("mine")  # The names staging used before.
    (out / ".samples.partial.npz").symlink_to(target)
    (out / ".write_probe.0").symlink_to(target)
    run_in_process(sample_script, capsys, "--checkpoint-dir", tiny_checkpoints, *SMALL,
                   "--no-gif", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == [
        ".grid.partial.png", ".samples.partial.npz", ".write_probe.0", "grid.png", "samples.npz"]
    assert (out / ".grid.partial.png").read_text() == "mine" and target.read_text() == "precious"


def test_outputs_of_an_earlier_run_are_replaced(sample_script, tiny_checkpoints, tmp_path,
                                                capsys, fake_sampling):
    """A PNG or GIF jaxguide made and a sample.py npz of those names are an earlier run's:
    replaced."""
    out = tmp_path / "again"
    base = ["--checkpoint-dir", tiny_checkpoints, *SMALL, "--out", out]
    run_in_process(sample_script, capsys, *base, "--classes", "1,2")
    save_marked_png(out / "grid.png")  # Any PNG jaxguide made counts as an earlier grid.
    run_in_process(sample_script, capsys, *base, "--classes", "4")
    assert load_npz(out)["labels"].tolist() == [4]
    with Image.open(out / "grid.png") as im:
        assert im.size != (2, 2)


def test_figures_refuses_flags_it_would_ignore(sample_script, tiny_checkpoints, tmp_path,
                                               capsys, fake_sampling):
    """Without an evaluator there is no accuracy sweep: --per-class would change nothing."""
    import shutil

    ckpt = tmp_path / "no-evaluator"
    for name in ("denoiser", "classifier"):
        shutil.copytree(tiny_checkpoints / name, ckpt / name)
    rc, captured = run_rc(sample_script, capsys, "figures", "--checkpoint-dir", ckpt,
                          "--per-class", 3, "--steps", 2, "--out", tmp_path / "figs")
    assert_refused(rc, captured, "--per-class: not used by 'figures' here (it runs no "
                   "accuracy sweep without an evaluator in --checkpoint-dir)")
    assert not (tmp_path / "figs").exists()


def test_figures_reads_the_data_dir_variable(sample_script, tiny_checkpoints, tmp_path, capsys,
                                            monkeypatch, fake_sampling):
    """JAXGUIDE_DATA_DIR is the test digit's source when --data-dir is not given."""
    monkeypatch.setenv("JAXGUIDE_DATA_DIR", str(tmp_path / "no-mnist"))
    rc, captured = run_rc(sample_script, capsys, "figures", "--checkpoint-dir", tiny_checkpoints,
                          "--steps", 2, "--out", tmp_path / "figs")
    assert_refused(rc, captured, "JAXGUIDE_DATA_DIR")
    assert not (tmp_path / "figs").exists()


def test_figures_refuses_a_user_file_and_removes_a_stale_accuracy_figure(
        sample_script, tiny_checkpoints, tmp_path, capsys, fake_sampling):
    out = tmp_path / "figs"
    out.mkdir()
    (out / "gradient_maps.png").write_text("my gradients")
    rc, captured = run_rc(sample_script, capsys, "figures", "--checkpoint-dir", tiny_checkpoints,
                          "--steps", 2, "--out", out)
    assert_refused(rc, captured, f"cannot write {out / 'gradient_maps.png'}",
                   "not sample.py's PNG image")
    assert [p.name for p in out.iterdir()] == ["gradient_maps.png"]

    (out / "gradient_maps.png").unlink()
    save_marked_png(out / "accuracy_vs_scale.png")  # An earlier run's, evaluator
    run_in_process(sample_script, capsys, "figures", "--checkpoint-dir",  # and all.
                   tiny_checkpoints, "--steps", 2, "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["classifier_over_time.png",
                                                     "gradient_maps.png"]


def jnp_full_nan(n):
    import jax.numpy as jnp

    return jnp.full((n, 28, 28, 1), jnp.nan)


def test_failed_run_leaves_no_folder_it_created(sample_script, tiny_checkpoints, tmp_path,
                                                capsys, monkeypatch):
    from jaxguide import pipeline

    monkeypatch.setattr(pipeline, "generate", lambda key, pipe, labels, scale, **kw:
                        jnp_full_nan(len(labels)))
    base = ["--checkpoint-dir", tiny_checkpoints, *SMALL, "--no-gif"]
    rc, captured = run_rc(sample_script, capsys, *base, "--out", tmp_path / "a" / "b" / "c")
    assert_refused(rc, captured, "non-finite values")
    assert list(tmp_path.iterdir()) == []  # a/, a/b/ and a/b/c/ were this run's: removed.

    (tmp_path / "mine" / "empty").mkdir(parents=True)
    (tmp_path / "mine" / "notes").write_text("kept")
    for out in (tmp_path / "mine" / "empty", tmp_path / "mine" / "new"):
        rc, captured = run_rc(sample_script, capsys, *base, "--out", out)
        assert_refused(rc, captured, "non-finite values")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["empty", "notes"]


def test_figures_empty_test_split_leaves_no_folder(sample_script, tiny_checkpoints, tmp_path,
                                                   capsys):
    from test_data import FILES, write_idx

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, n in (("train", 2), ("test", 0)):
        images, labels = FILES[split]
        write_idx(data_dir / images, np.zeros((n, 28, 28), np.uint8))
        write_idx(data_dir / labels, np.zeros(n, np.uint8))
    out = tmp_path / "figs"
    rc, captured = run_rc(sample_script, capsys, "figures", "--checkpoint-dir", tiny_checkpoints,
                          "--data-dir", data_dir, "--out", out)
    assert_refused(rc, captured, "--data-dir")
    assert not out.exists()


@pytest.mark.parametrize("text, classes", [
    ("0-9", list(range(10))), (" 1 - 2 , 7 ", [1, 2, 7]), ("3-3,0", [3, 0]), ("007", [7]),
])
def test_classes_accepted(sample_script, text, classes):
    assert sample_script.parse_classes(text, 10) == classes


def test_classes_default_to_all_of_the_classifiers(sample_script):
    args = sample_script.parse_args([])
    assert args.classes is None and args.scale is None  # Set once the denoiser is known.
    assert sample_script.parse_classes(args.classes, 4) == [0, 1, 2, 3]


def test_help_shows_every_default(sample_script):
    """--help names each argument's default beside it, the value the run would take."""
    entries = help_entries(sample_script)
    shown = 0
    for name, value in vars(sample_script.parse_args([])).items():
        if name == "given" or value in (None, False):  # Flags; None: said in words.
            continue
        key = "{sample,figures}" if name == "command" else "--" + name.replace("_", "-")
        text = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"(default: {text}" in entries[key], (key, entries[key])
        shown += 1
    assert shown >= 4
    assert "(default, with its steps and grid: classifier guidance euler_maruyama" in entries[
        "--sampler"]
    assert "(default: all the classifier's classes" in entries["--classes"]
    assert "(default: free when the denoiser is class" in entries["--guidance"]
    assert "(default: classifier 4, free" in entries["--scale"]


def test_figures_replaces_all_its_outputs_or_none(sample_script, tiny_checkpoints, tmp_path,
                                                  capsys, fake_sampling, monkeypatch):
    """The accuracy sweep runs before any figure is written: if it fails, the earlier run's
    three figures are all still there, unchanged."""
    from types import SimpleNamespace

    from jaxguide import metrics

    monkeypatch.setattr(sample_script, "load_evaluator", lambda args: lambda images:
                        SimpleNamespace(predictions=np.zeros(len(images), np.int64)))
    out = tmp_path / "figs"
    argv = ["figures", "--checkpoint-dir", tiny_checkpoints, "--steps", 2, "--per-class", 2,
            "--out", out]
    run_in_process(sample_script, capsys, *argv)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == sorted(sample_script.FIGURE_OUTPUTS)

    def failing(*args, **kwargs):
        raise RuntimeError("the sweep failed")

    monkeypatch.setattr(metrics, "guided_accuracy", failing)
    rc, captured = run_rc(sample_script, capsys, *argv)
    assert_refused(rc, captured, "the sweep failed")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ctrl_c_while_outputs_move_into_place_waits_for_all(sample_script, tiny_checkpoints,
                                                           tmp_path, capsys, fake_sampling,
                                                           monkeypatch):
    """A Ctrl-C that arrives between two renames is held until every output is in place."""
    import signal as sig

    out = tmp_path / "o"
    base = ["--checkpoint-dir", tiny_checkpoints, "--steps", 2, "--per-class", 1, "--out", out]
    run_in_process(sample_script, capsys, *base, "--classes", "3")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    replace = os.replace

    def replace_then_interrupt(src, dst):
        replace(src, dst)
        os.kill(os.getpid(), sig.SIGINT)

    monkeypatch.setattr(sample_script.os, "replace", replace_then_interrupt)
    # Ctrl-C's own handler, whatever an earlier test left: the held signal goes back to it.
    old_handler = sig.signal(sig.SIGINT, sig.default_int_handler)
    try:
        assert cli.run(sample_script.main, [str(a) for a in base] + ["--classes", "5"]) == 130
    finally:
        sig.signal(sig.SIGINT, old_handler)
    assert set(np.load(out / "samples.npz")["labels"]) == {5}
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(after) == sorted(before) and all(after[n] != before[n] for n in after)


def test_sigterm_while_sampling_leaves_nothing_and_exits_143(tiny_checkpoints, tmp_path):
    import signal as sig
    import subprocess
    import sys
    import time

    from conftest import REPO

    out = tmp_path / "new" / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "sample.py"), "--checkpoint-dir", str(tiny_checkpoints),
         "--steps", "100000", "--per-class", "1", "--classes", "0", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not out.exists():  # Made (and probed) just before sampling starts.
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(sig.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # The folders it made, removed.


@pytest.mark.parametrize("argv, conditional, expected", [
    ([], True, ("free", 0.75, *DEFAULT_SAMPLING["free"])),
    ([], False, ("classifier", 4.0, *DEFAULT_SAMPLING["classifier"])),
    (["--sampler", "heun"], True, ("free", 0.75, "heun", 50, "quadratic")),  # Heun's own grid.
    (["--steps", "7", "--grid", "uniform"], True,
     ("free", 0.75, DEFAULT_SAMPLING["free"][0], 7, "uniform")),
])
def test_sampling_defaults_follow_the_guidance(sample_script, argv, conditional, expected):
    args = sample_script.parse_args(argv)
    sample_script.set_guidance(args, conditional)
    assert (args.guidance, args.scale, args.sampler, args.steps, args.grid) == expected
