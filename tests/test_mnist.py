"""The MNIST loader on a tiny IDX fixture in the real on-disk format, and on the offline copy when present."""
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdteach.data import find_mnist_root, load_digits_standin, load_mnist, load_mnist_or_standin
from kdteach.data import mnist
from kdteach.data.mnist import MNIST_FILES, load_digit_splits, verify_mnist_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_idx(root: Path, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the network: probing or downloading fails the test unless the test replaces them."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")
    monkeypatch.setattr(mnist, "internet_reachable", refuse)
    monkeypatch.setattr(mnist, "download_mnist", refuse)
    monkeypatch.setattr(mnist, "_ANNOUNCED", set())  # each test starts as a fresh process: nothing said yet


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
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [tmp_path])
    x, y = load_mnist_or_standin("train", download=False)
    assert "downloading was turned off" in capsys.readouterr().out
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.uint8
    assert set(y.unique().tolist()) == set(range(10))
    xt, _ = load_digits_standin("test")
    assert len(x) + len(xt) == 1797


# --------------------------------------------------------------------------------------------------------------
# Where MNIST comes from: the local copy, a download (full mode, online), or the stand-in (offline or smoke)
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_local_copy(monkeypatch, tmp_path):
    """No MNIST on the machine; data_dir() (where a download goes) is an empty folder. Returns the calls made."""
    data = tmp_path / "data"
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [data] if data.is_dir() else [])
    monkeypatch.setattr("kdteach.runtime.data_dir", lambda: data)
    calls = {"probe": 0, "download": []}
    return data, calls


def _online(calls, answer):
    def probe(timeout_s=3.0):
        calls["probe"] += 1
        return answer
    return probe


def _fake_download(calls):
    """Stands in for torchvision: writes a tiny MNIST in the real IDX format where the download would go."""
    def download(folder):
        calls["download"].append(folder)
        rng = np.random.default_rng(1)
        write_idx(folder, rng.integers(0, 256, size=(6, 28, 28)), np.arange(6), "train")
        write_idx(folder, rng.integers(0, 256, size=(3, 28, 28)), np.arange(3), "t10k")
    return download


def test_full_mode_online_downloads_mnist_once_into_the_data_folder(no_local_copy, monkeypatch, capsys):
    data, calls = no_local_copy
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "full")
    monkeypatch.setattr(mnist, "internet_reachable", _online(calls, True))
    monkeypatch.setattr(mnist, "download_mnist", _fake_download(calls))
    splits = load_digit_splits(None, None, verbose=True)
    out = capsys.readouterr().out
    assert calls["download"] == [data] and calls["probe"] == 1  # the test split found the downloaded files
    assert (len(splits.train_y), len(splits.test_y)) == (6, 3) and splits.train_y.tolist() == list(range(6))
    assert out.count("downloading MNIST (about 12 MB") == 1 and "scikit-learn" not in out


def test_full_mode_offline_uses_the_standin_and_says_so_once(no_local_copy, monkeypatch, capsys, recwarn):
    _, calls = no_local_copy
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "full")
    monkeypatch.setattr(mnist, "internet_reachable", _online(calls, False))
    monkeypatch.setattr(mnist, "download_mnist", _fake_download(calls))
    splits = load_digit_splits(None, None, verbose=True)
    load_mnist_or_standin("test", verbose=False)  # a later load in the same kernel says nothing more
    out = capsys.readouterr().out
    assert calls["download"] == [] and splits.source == "sklearn digits stand-in"
    sentence = [line for line in out.splitlines() if "scikit-learn" in line]
    assert len(sentence) == 1, out
    assert sentence[0].startswith("kdteach: MNIST is not on this machine and this machine cannot reach the internet")
    assert sentence[0].count(". ") == 0 and sentence[0].endswith("references.")  # one sentence
    assert "kdteach: data: sklearn digits stand-in, 1437 training and 360 test digits" in out
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]  # said in a sentence, not a warning


def test_smoke_mode_never_probes_nor_downloads(no_local_copy, monkeypatch, capsys):
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "smoke")  # no_network fails the test on any probe
    _, y = load_mnist_or_standin("test", verbose=False)
    assert len(y) == 1797 - int(0.8 * 1797)
    assert "smoke mode never downloads" in capsys.readouterr().out
    # download=True overrides the mode's default (and would probe; here the probe says offline).
    _, calls = no_local_copy
    monkeypatch.setattr(mnist, "internet_reachable", _online(calls, False))
    load_mnist_or_standin("test", download=True, verbose=False)
    assert calls["probe"] == 1


def test_a_failed_download_falls_back_and_names_the_error(no_local_copy, monkeypatch, capsys):
    _, calls = no_local_copy
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "full")
    monkeypatch.setattr(mnist, "internet_reachable", _online(calls, True))

    def corrupt(folder):
        raise RuntimeError("File not found or corrupted.")  # torchvision's words for a failed MD5 check
    monkeypatch.setattr(mnist, "download_mnist", corrupt)
    load_mnist_or_standin("train", verbose=False)
    assert "its download failed (File not found or corrupted.), so scikit-learn" in capsys.readouterr().out


def test_a_local_copy_is_used_without_probing_the_network(tiny_mnist, monkeypatch, capsys):
    root, (_, train_labels), _ = tiny_mnist
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [root])
    monkeypatch.setattr("kdteach.runtime.mode", lambda: "full")  # no_network fails the test on any probe
    _, y = load_mnist_or_standin("train")
    assert y.tolist() == train_labels.tolist() and "train data: MNIST, 5 images" in capsys.readouterr().out


def test_internet_reachable_only_opens_a_connection_to_torchvisions_mirror(monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.undo()  # the real function, with socket.create_connection replaced: nothing leaves the machine
    opened = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout):
        opened.append((address, timeout))
        return Connection()
    monkeypatch.setattr(mnist.socket, "create_connection", connect)
    assert mnist.internet_reachable(timeout_s=2.0) is True
    host = MNIST.mirrors[0].split("/")[2]
    assert opened == [((host, 443), 2.0)]

    def refuse(address, timeout):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(mnist.socket, "create_connection", refuse)
    assert mnist.internet_reachable() is False


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


def test_the_standin_is_announced_even_when_quiet(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("kdteach.runtime.data_search_path", lambda: [tmp_path])
    _, y = load_mnist_or_standin("test", download=False, verbose=False)
    assert len(y) == 1797 - int(0.8 * 1797)
    assert capsys.readouterr().out.count("scikit-learn's 1,797 8x8 digits") == 1


@pytest.mark.skipif(find_mnist_root(SHARED) is None, reason="no offline MNIST copy beside the checkout")
def test_the_offline_copy_passes_verification_with_the_canonical_sizes():
    sizes = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
             "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
    for name, size in sizes.items():
        path = SHARED / "MNIST" / "raw" / name
        assert path.stat().st_size == size
        assert verify_mnist_file(path) == (size - (16 if "images" in name else 8)) // (784 if "images" in name else 1)
