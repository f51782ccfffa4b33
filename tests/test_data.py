"""Tests for jaxguide.data: IDX reader, MNIST loader (IDX and tfds mock), batching."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import raising_cases
from jaxguide import data
from jaxguide.data import DataError, batch_indices, epoch_permutation, load_mnist, read_idx

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    """Serialize a uint8 array as IDX (magic chosen from ndim unless given)."""
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = {1: 0x801, 3: 0x803}[arr.ndim]
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr_or_bytes, *, magic: int | None = None) -> Path:
    """Write IDX content to ``path``, gzip-compressed when the name ends in .gz."""
    payload = (
        arr_or_bytes
        if isinstance(arr_or_bytes, bytes)
        else idx_bytes(arr_or_bytes, magic)
    )
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_split(rng, n: int):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range present
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    return images, labels


def write_dataset(tmp_path: Path, *, gz: bool, n_train: int = 5, n_test: int = 3):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = make_split(rng, n)
        ext = ".gz" if gz else ""
        img_name, lbl_name = FILES[split]
        write_idx(tmp_path / (img_name + ext), images)
        write_idx(tmp_path / (lbl_name + ext), labels)
        out[split] = (images, labels)
    return out


def check_arrays(images, labels, n):
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert labels.min() >= 0 and labels.max() <= 9


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("JAXGUIDE_DATA_DIR", raising=False)


# ---------------------------------------------------------------- IDX round trip


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path, gz):
    expected = write_dataset(tmp_path, gz=gz)
    for split, (raw_images, raw_labels) in expected.items():
        images, labels = load_mnist(split, data_dir=tmp_path)
        check_arrays(images, labels, len(raw_labels))
        want = raw_images.astype(np.float32)[..., None] / np.float32(127.5) - np.float32(1)
        np.testing.assert_array_equal(images, want)
        np.testing.assert_array_equal(labels, raw_labels.astype(np.int32))
        assert images[0, 0, 0, 0] == -1.0 and images[0, 0, 1, 0] == 1.0


def test_read_idx_shapes(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "x.idx", arr))
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr)
    got[0, 0, 0] = 7  # writable
    lab = read_idx(write_idx(tmp_path / "y.idx.gz", np.array([3, 1, 4], np.uint8)))
    np.testing.assert_array_equal(lab, [3, 1, 4])
    empty = read_idx(write_idx(tmp_path / "e.idx", np.zeros((0,), np.uint8)))
    assert empty.shape == (0,)


def test_env_var_data_dir(tmp_path, monkeypatch):
    expected = write_dataset(tmp_path, gz=True)
    monkeypatch.setenv("JAXGUIDE_DATA_DIR", str(tmp_path))
    images, labels = load_mnist("test")
    check_arrays(images, labels, 3)
    np.testing.assert_array_equal(labels, expected["test"][1])


def test_explicit_data_dir_beats_env_var(tmp_path, monkeypatch):
    write_dataset(tmp_path, gz=False, n_test=4)
    monkeypatch.setenv("JAXGUIDE_DATA_DIR", str(tmp_path / "nonexistent"))
    images, _ = load_mnist("test", data_dir=str(tmp_path))
    assert images.shape[0] == 4


def test_mixed_raw_and_gz(tmp_path):
    write_dataset(tmp_path, gz=True)
    raw = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw)
    images, labels = load_mnist("train", tmp_path)
    check_arrays(images, labels, 5)


# --------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    write_dataset(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="not found") as ei:
        load_mnist("test", data_dir=tmp_path)
    assert "t10k-images-idx3-ubyte" in str(ei.value)
    with pytest.raises(DataError, match="not found") as ei:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(ei.value)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="not found") as ei:
        load_mnist("train", data_dir=tmp_path / "absent")
    assert "absent" in str(ei.value)


def test_wrong_magic(tmp_path):
    write_dataset(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    write_idx(bad, np.zeros((5, 28, 28), np.uint8), magic=0x00000D03)
    with pytest.raises(DataError) as ei:
        load_mnist("train", tmp_path)
    msg = str(ei.value)
    assert str(bad) in msg and "magic" in msg
    assert "0x00000d03" in msg and "0x00000803" in msg and "0x00000801" in msg


def test_gzip_without_gz_name_hint(tmp_path):
    p = tmp_path / "labels"
    p.write_bytes(gzip.compress(idx_bytes(np.array([1, 2], np.uint8))))
    with pytest.raises(DataError, match="gzip") as ei:
        read_idx(p)
    assert "magic" in str(ei.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated(tmp_path, gz):
    full = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    p = write_idx(tmp_path / ("img" + (".gz" if gz else "")), full[:-10])
    with pytest.raises(DataError, match="truncated") as ei:
        read_idx(p)
    assert str(p) in str(ei.value) and "3920" in str(ei.value)  # 5*28*28 bytes


def test_forged_sizes_do_not_overflow(tmp_path):
    """2^31 × 2^31 × 4 bytes wrapped to 0 in int64 and reached a numpy reshape error."""
    p = write_idx(tmp_path / "img", struct.pack(">IIII", 0x803, 2**31, 2**31, 4))
    with pytest.raises(DataError, match=r"truncated: header says 2147483648x2147483648x4 = "
                                        r"18446744073709551616 bytes"):
        read_idx(p)


def test_truncated_header(tmp_path):
    p = write_idx(tmp_path / "img", struct.pack(">II", 0x803, 5))
    with pytest.raises(DataError, match="truncated header"):
        read_idx(p)
    p = write_idx(tmp_path / "tiny", b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(p)


def test_trailing_garbage(tmp_path):
    p = write_idx(tmp_path / "lbl.gz", idx_bytes(np.array([1, 2, 3], np.uint8)) + b"xx")
    with pytest.raises(DataError, match="trailing garbage") as ei:
        read_idx(p)
    assert str(p) in str(ei.value) and "2 bytes" in str(ei.value)


def test_corrupt_gzip(tmp_path):
    write_dataset(tmp_path, gz=True)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    good = p.read_bytes()
    p.write_bytes(good[:10] + b"\xff" * 8 + good[18:])  # damage the deflate stream
    with pytest.raises(DataError, match="corrupt gzip") as ei:
        load_mnist("train", tmp_path)
    assert str(p) in str(ei.value)
    p.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(p)
    p.write_bytes(good[: len(good) // 2])  # cut short
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(p)


def test_count_mismatch(tmp_path):
    write_dataset(tmp_path, gz=True)
    lbl = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((4,), np.uint8))
    with pytest.raises(DataError, match="mismatch") as ei:
        load_mnist("train", tmp_path)
    msg = str(ei.value)
    assert str(lbl) in msg and "train-images-idx3-ubyte.gz" in msg
    assert "5 images" in msg and "4 labels" in msg


def test_labels_out_of_range(tmp_path):
    write_dataset(tmp_path, gz=False)
    lbl = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 12, 3], np.uint8))
    with pytest.raises(DataError, match=r"outside 0\.\.9") as ei:
        load_mnist("test", tmp_path)
    assert str(lbl) in str(ei.value) and "12" in str(ei.value)


def test_wrong_image_size_and_kind(tmp_path):
    write_dataset(tmp_path, gz=False)
    img = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DataError, match="32x32") as ei:
        load_mnist("test", tmp_path)
    assert str(img) in str(ei.value)
    write_idx(img, np.zeros((3,), np.uint8))  # a labels file where images belong
    with pytest.raises(DataError, match="expected uint8 images"):
        load_mnist("test", tmp_path)


@pytest.mark.parametrize("split", ["validation", "TRAIN", "", None])
def test_bad_split(tmp_path, split):
    with pytest.raises(ValueError, match="split") as ei:
        load_mnist(split, data_dir=tmp_path)
    assert "'train'" in str(ei.value) and "'test'" in str(ei.value)
    assert not isinstance(ei.value, DataError)


# -------------------------------------------------------------------------- tfds


def test_tfds_missing_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(DataError) as ei:
        load_mnist("train")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "tensorflow-datasets is not installed" in msg
    assert msg.startswith("data_dir: ") and "--" not in msg and "jaxguide[tfds]" in msg


def test_tfds_mock():
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets not installed (test extra)"
    )
    with tfds.testing.mock_data(num_examples=6):
        images, labels = load_mnist("train")
        test_images, test_labels = load_mnist("test")
    check_arrays(images, labels, 6)
    check_arrays(test_images, test_labels, 6)
    # uint8 -> [-1, 1] exactly: every value is k/127.5 - 1 for an integer k.
    k = (images + 1.0) * 127.5
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)


def test_any_tfds_image_classification_dataset_by_name():
    """A name outside DATASETS is described by its tfds builder's info (offline) and read like
    the others; a dataset that is not images with class labels is refused, naming it."""
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets not installed (test extra)"
    )
    spec = data.get_dataset("cifar100")
    assert (spec.image_shape, spec.num_classes) == ((32, 32, 3), 100)
    with tfds.testing.mock_data(num_examples=4):
        images, labels = data.load_dataset("cifar100", "test")
    assert images.shape == (4, 32, 32, 3) and labels.max() < 100
    with pytest.raises(ValueError, match=r"dataset: got 'imdb_reviews' .*accepted .*images"):
        data.get_dataset("imdb_reviews")
    with pytest.raises(ValueError, match=r"dataset: got 'no_such_set' \(DatasetNotFoundError\)"):
        data.get_dataset("no_such_set")


def test_tfds_not_prepared_message(tmp_path):
    pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets not installed (test extra)"
    )
    # An empty TFDS data dir: must fail at once (download=False, no network).
    with pytest.raises(DataError) as ei:
        load_mnist("test", tfds_data_dir=tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "download_and_prepare" in msg and msg.startswith("data_dir: ")
    assert str(tmp_path) in msg


# ---------------------------------------------------------------------- batching


def test_steps_per_epoch():
    assert data.steps_per_epoch(60000, 128) == 468
    assert data.steps_per_epoch(10, 10) == 1
    assert data.steps_per_epoch(np.int64(10), np.int32(3)) == 3


def test_epoch_permutation_is_pure_permutation():
    p = epoch_permutation(0, 0, 100)
    assert p.dtype == np.int64 and p.shape == (100,)
    np.testing.assert_array_equal(np.sort(p), np.arange(100))
    np.testing.assert_array_equal(p, epoch_permutation(0, 0, 100))
    assert not np.array_equal(p, epoch_permutation(0, 1, 100))
    assert not np.array_equal(p, epoch_permutation(1, 0, 100))
    p[:] = 0  # a copy: the cache is untouched
    np.testing.assert_array_equal(np.sort(epoch_permutation(0, 0, 100)), np.arange(100))


def test_batch_indices_cover_each_epoch():
    n, bs, seed = 23, 5, 7
    spe = data.steps_per_epoch(n, bs)
    assert spe == 4
    epochs = []
    for epoch in range(3):
        batches = [batch_indices(seed, epoch * spe + i, n, bs) for i in range(spe)]
        for b in batches:
            assert b.shape == (bs,) and b.dtype == np.int64
        flat = np.concatenate(batches)
        assert len(np.unique(flat)) == spe * bs  # no repeats within an epoch
        assert flat.min() >= 0 and flat.max() < n
        np.testing.assert_array_equal(flat, epoch_permutation(seed, epoch, n)[: spe * bs])
        epochs.append(flat)
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_batch_indices_deterministic_and_resumable():
    n, bs = 1000, 32
    run = [batch_indices(3, s, n, bs) for s in range(100)]
    # A "resumed" run starting at step 57 sees exactly the same batches.
    resumed = [batch_indices(3, s, n, bs) for s in range(57, 100)]
    for a, b in zip(run[57:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batch_indices(3, 0, n, bs), batch_indices(4, 0, n, bs))


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=-4), ValueError, "batch_size"),
        (dict(batch_size=11), ValueError, "batch_size: got 11, accepted an integer >= 1 and <= 10"),
        (dict(batch_size=2.0), ValueError, "batch_size"),
        (dict(n=0), ValueError, "n: got 0, accepted an integer >= 1"),
        (dict(step=-1), ValueError, "step"),
        (dict(seed=-1), ValueError, "seed"),
    ],
)
def test_batch_indices_rejects_bad_args(kwargs, exc, text):
    args = dict(seed=0, step=0, n=10, batch_size=2) | kwargs
    with pytest.raises(exc) as ei:
        batch_indices(**args)
    assert text in str(ei.value)


# --------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not REAL_MNIST.is_dir(), reason=f"real MNIST IDX files not present at {REAL_MNIST}"
)
def test_real_mnist():
    train_images, train_labels = load_mnist("train", data_dir=REAL_MNIST)
    test_images, test_labels = load_mnist("test", data_dir=REAL_MNIST)
    check_arrays(train_images, train_labels, 60000)
    check_arrays(test_images, test_labels, 10000)
    assert train_labels[0] == 5
    for labels in (train_labels, test_labels):
        frac = np.bincount(labels, minlength=10) / len(labels)
        assert frac.min() > 0.08 and frac.max() < 0.12  # balanced-ish
    assert train_images.min() == -1.0 and train_images.max() == 1.0
    # Digits are mostly background (-1) with bright strokes.
    assert -0.85 < float(train_images.mean()) < -0.6


# ------------------------------------------------------------------ bad arguments

X2 = np.zeros((2, 28, 28, 1), np.float32)
Y2 = np.array([0, 1])

DATA_CASES = {
    "read_idx-None": (lambda: data.read_idx(None),
                      TypeError, r"path: got None, accepted a path \(str or os\.PathLike\)"),
    "check_dataset-empty-test-labels": (lambda: data.check_dataset(((X2, Y2), (X2, np.array([], int)))),
                                        ValueError, r"dataset: test labels: got int\d+ \(0,\), "
                                                    r"accepted integers \(2,\), one per test image"),
    "check_dataset-short-train-labels": (lambda: data.check_dataset(((X2, Y2[:1]), (X2, Y2))),
                                         ValueError, r"dataset: train labels: got int\d+ \(1,\), "
                                                     r"accepted integers \(2,\)"),
    "load_mnist-blank-data_dir": (lambda: data.load_mnist("train", " "),
                                  ValueError, r"data_dir: got ' ', accepted a non-empty path"),
    "load_mnist-split": (lambda: data.load_mnist("validation", "/nonexistent"),
                         ValueError, r"split must be one of \('train', 'test'\), got 'validation'"),
    "load_mnist-missing-dir": (lambda: data.load_mnist("train", "/nonexistent/mnist"),
                               DataError, r"MNIST data dir /nonexistent/mnist not found"),
    "load_mnist-data_dir-int": (lambda: data.load_mnist("train", 123), TypeError,
                                r"data_dir: got 123, accepted a path"),
    "load_mnist-data_dir-empty": (lambda: data.load_mnist("train", ""), ValueError,
                                  r"data_dir: got '', accepted a non-empty path"),
}

test_bad_argument = raising_cases(DATA_CASES)


@pytest.fixture
def env_dir(monkeypatch):
    """Sets JAXGUIDE_DATA_DIR for one test: env_dir(path)."""
    return lambda value: monkeypatch.setenv(data.ENV_DATA_DIR, str(value))


def test_env_data_dir_missing_names_the_variable(env_dir):
    env_dir("/nonexistent")
    with pytest.raises(DataError, match=r"^JAXGUIDE_DATA_DIR='/nonexistent': MNIST data dir "
                                        r"/nonexistent not found"):
        data.load_mnist("train")


def test_env_data_dir_blank_names_the_variable_and_shows_the_blank(env_dir):
    env_dir(" ")
    with pytest.raises(DataError, match=r"^JAXGUIDE_DATA_DIR: got ' ', accepted a folder path"):
        data.load_mnist("test")


def test_env_data_dir_bad_file_names_the_variable(env_dir, tmp_path):
    write_dataset(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", b"\x00\x00\x08\x01garbage")
    env_dir(tmp_path)
    with pytest.raises(DataError, match=r"^JAXGUIDE_DATA_DIR='.*': IDX file .*t10k-labels"):
        data.load_mnist("test")


def test_data_dir_argument_beats_a_bad_env_var(env_dir, tmp_path):
    write_dataset(tmp_path, gz=False)
    env_dir(" ")
    assert len(data.load_mnist("test", tmp_path)[0]) == 3


@pytest.mark.parametrize("split", data.SPLITS)
@pytest.mark.parametrize("from_env", [False, True], ids=["argument", "env"])
def test_an_empty_split_names_the_data_dir_and_the_split(tmp_path, env_dir, split, from_env):
    write_dataset(tmp_path, gz=False)
    images_name, labels_name = data._IDX_FILES[split]
    write_idx(tmp_path / images_name, np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / labels_name, np.zeros((0,), np.uint8))
    if from_env:
        env_dir(tmp_path)
    prefix = r"JAXGUIDE_DATA_DIR='.*': " if from_env else "^"
    with pytest.raises(DataError, match=prefix + rf"MNIST data dir {tmp_path}: the {split} split "
                                                 r"holds 0 images .*accepted at least 1"):
        data.load_mnist(split, None if from_env else tmp_path)


def test_a_dataset_is_read_by_its_spec(tmp_path):
    write_dataset(tmp_path, gz=False)
    x, y = data.load_dataset("fashion_mnist", "test", tmp_path)
    assert x.shape[1:] == data.get_dataset("fashion_mnist").image_shape and x.dtype == np.float32
    x_m, y_m = load_mnist("test", tmp_path)  # The same files, read as MNIST.
    np.testing.assert_array_equal(x, x_m)
    with pytest.raises(ValueError, match=r"dataset: got 'svhn'.*accepted mnist, fashion_mnist"):
        data.load_dataset("svhn", "test", tmp_path)
    with pytest.raises(ValueError, match=r"data_dir: got .*, but CIFAR-10 has no IDX files"):
        data.load_dataset("cifar10", "test", tmp_path)


def test_only_mnist_reads_the_environment_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, "/nonexistent/mnist")
    with pytest.raises(DataError, match="JAXGUIDE_DATA_DIR"):
        load_mnist("test")
    monkeypatch.setattr(data, "_load_tfds_split", lambda spec, split, tfds_dir: (
        np.zeros((2, 28, 28), np.uint8), np.array([0, 1])))
    assert data.load_dataset("fashion_mnist", "test")[0].shape == (2, 28, 28, 1)


FASHION_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_mnist"


@pytest.mark.slow
def test_tfds_reads_fashion_mnist_image_for_image(tmp_path):
    """The real tensorflow-datasets path, offline: tfds builds fashion_mnist from the genuine
    files as its manual dir (needs TensorFlow, the jaxguide[tfds] extra); load_dataset reads
    it back, and it holds the IDX files' images and labels (in tfds' own order)."""
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    if not FASHION_MNIST.is_dir():
        pytest.skip(f"needs {FASHION_MNIST}")
    tfds.builder("fashion_mnist", data_dir=tmp_path).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(FASHION_MNIST),
                                                     try_download_gcs=False),
        file_format="array_record")
    x, y = data.load_dataset("fashion_mnist", "test", tfds_data_dir=tmp_path)
    x_idx, y_idx = data.load_dataset("fashion_mnist", "test", FASHION_MNIST)
    assert x.shape == x_idx.shape == (10_000, 28, 28, 1) and y.dtype == y_idx.dtype

    def rows(x, y):  # Each example as bytes, sorted: the split as a multiset.
        return sorted(bytes([label]) + image.tobytes() for image, label in zip(x, y))

    assert rows(x, y) == rows(x_idx, y_idx)
