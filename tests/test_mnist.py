"""The MNIST loader on a tiny IDX fixture in the real on-disk format, and on the offline copy when present."""
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdteach.data import find_mnist_root, load_digits_standin, load_mnist, load_mnist_or_standin
from kdteach.data.mnist import MNIST_FILES

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
