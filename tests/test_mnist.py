"""The MNIST loader on a tiny IDX fixture in the real on-disk format, and on the offline copy when present."""
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdteach.data import find_mnist_root, load_digits_standin, load_mnist, load_mnist_or_standin
from kdteach.data.mnist import MNIST_FILES, verify_mnist_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_idx(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(5, 28, 28)), np.array([3, 1, 4, 1, 5])
    test = rng.integers(0, 256, size=(2, 28, 28)), np.array([9, 2])
    write_idx(tmp_path, *train, "train")
    write_idx(tmp_path, *test, "t10k")
    return tmp_path, train, test


def test_loads_idx_files_exactly(tiny_mnist):
    root, (train_images, train_labels), (test_images, test_labels) = tiny_mnist
    x, y = load_mnist("train", root=root)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), train_images)
    np.testing.assert_array_equal(y.numpy(), train_labels)
    x, y = load_mnist("test", root=root)
    np.testing.assert_array_equal(x[:, 0].numpy(), test_images)
    np.testing.assert_array_equal(y.numpy(), test_labels)


def test_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST not found.*MNIST/raw.*download=True"):
        load_mnist("train", root=tmp_path)
    assert find_mnist_root(tmp_path) is None
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", root=tmp_path)


def test_standin_when_mnist_is_absent(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KDTEACH_DATA", str(tmp_path))
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [tmp_path])
    x, y = load_mnist_or_standin("train")
    assert "scikit-learn" in capsys.readouterr().out
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.uint8
    assert set(y.unique().tolist()) == set(range(10))
    xt, _ = load_digits_standin("test")
    assert len(x) + len(xt) == 1797


@pytest.mark.skipif(find_mnist_root(SHARED) is None, reason="no offline MNIST copy beside the checkout")
def test_offline_copy_is_real_mnist():
    checksums = {"train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624", "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}
    for name, md5 in checksums.items():
        assert hashlib.md5((SHARED / "MNIST" / "raw" / name).read_bytes()).hexdigest() == md5
    x, y = load_mnist("train", root=SHARED)
    assert x.shape == (60000, 1, 28, 28)
    assert torch.bincount(y).tolist()[3] == 6131  # the number of 3s in MNIST's training set
    _, yt = load_mnist("test", root=SHARED)
    assert int((yt == 3).sum()) == 1010  # Hinton et al.: "the 1010 threes in the test set"
    assert len(MNIST_FILES) == 4


# --------------------------------------------------------------------------------------------------------------
# Bad files: each is named, none makes load_mnist_or_standin switch to the stand-in
# --------------------------------------------------------------------------------------------------------------
def _raw(root: Path) -> Path:
    return root / "MNIST" / "raw"


def test_verify_counts_records_from_the_header(tiny_mnist):
    root, _, _ = tiny_mnist
    assert verify_mnist_file(_raw(root) / "train-images-idx3-ubyte") == 5  # 16 + 5 * 784 bytes
    assert verify_mnist_file(_raw(root) / "t10k-labels-idx1-ubyte") == 2  # 8 + 2 bytes


@pytest.mark.parametrize("name, keep, message", [
    ("train-images-idx3-ubyte", 16 + 3 * 784, r"train-images-idx3-ubyte is truncated \(2368 bytes, expected 3936"),
    ("train-labels-idx1-ubyte", 11, r"train-labels-idx1-ubyte is truncated \(11 bytes, expected 13"),
    ("train-images-idx3-ubyte", 10, r"train-images-idx3-ubyte is truncated \(10 bytes, shorter than its 16-byte header"),
])
def test_a_truncated_file_is_named_with_its_sizes(tiny_mnist, name, keep, message):
    root, _, _ = tiny_mnist
    path = _raw(root) / name
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=f"(?s){message}.*delete it and download again"):
        load_mnist("train", root=root)
    load_mnist("test", root=root)  # the other split's files are fine and still load


def test_other_bad_files_are_named(tiny_mnist):
    root, _, _ = tiny_mnist
    labels = _raw(root) / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\x00")  # one byte too many
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte is longer than its header declares"):
        load_mnist("train", root=root)
    labels.write_bytes(struct.pack(">II", 2051, 5) + bytes(5))  # an images magic number on a labels file
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte is not an MNIST IDX file"):
        load_mnist("train", root=root)
    labels.write_bytes(struct.pack(">II", 2049, 4) + bytes(4))  # 4 labels for 5 images
    with pytest.raises(ValueError, match="5 train images but 4 labels"):
        load_mnist("train", root=root)
    labels.write_bytes(struct.pack(">II", 2049, 5) + bytes([1, 2, 3, 4, 200]))
    with pytest.raises(ValueError, match=r"labels in .*train-labels-idx1-ubyte must be in \[0, 10\), got values in \[1, 200\]"):
        load_mnist("train", root=root)


def test_a_full_size_file_with_other_content_fails_the_md5(tmp_path):
    # 10,000 zero labels: the size of MNIST's test labels, not their content.
    raw = _raw(tmp_path)
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 10_000) + bytes(10_000))
    assert (raw / "t10k-labels-idx1-ubyte").stat().st_size == 10008
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte has MNIST's size but not its content \(MD5 .*expected 27ae3e4e"):
        verify_mnist_file(raw / "t10k-labels-idx1-ubyte")


def test_a_bad_or_partial_copy_is_an_error_not_a_switch_to_the_standin(tiny_mnist, monkeypatch, capsys):
    root, _, _ = tiny_mnist
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [root])
    images = _raw(root) / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:100])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is truncated"):
        load_mnist_or_standin("test")
    images.unlink()
    with pytest.raises(ValueError, match="holds 3 of MNIST's four files; missing: t10k-images-idx3-ubyte"):
        load_mnist_or_standin("train")
    assert "scikit-learn" not in capsys.readouterr().out


def test_the_standin_is_announced_even_when_quiet(monkeypatch, tmp_path):
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [tmp_path])
    with pytest.warns(UserWarning, match=r"MNIST's files are not in .*scikit-learn's 8x8 digits"):
        _, y = load_mnist_or_standin("test", verbose=False)
    assert len(y) == 1797 - int(0.8 * 1797)


@pytest.mark.skipif(find_mnist_root(SHARED) is None, reason="no offline MNIST copy beside the checkout")
def test_the_offline_copy_passes_verification_with_the_canonical_sizes():
    sizes = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
             "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
    for name, size in sizes.items():
        path = SHARED / "MNIST" / "raw" / name
        assert path.stat().st_size == size
        assert verify_mnist_file(path) == (size - (16 if "images" in name else 8)) // (784 if "images" in name else 1)
