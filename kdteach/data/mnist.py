"""MNIST, read through torchvision from the data folder, each file verified first, with a clear error when it is
not there.

The four files are torchvision's uncompressed IDX files in MNIST/raw/. An IDX file declares its shape in its header
(a magic number, then one 4-byte count per dimension), so a truncated or padded file is caught by comparing the
file's size with the size its header declares; a file with the full 60,000 or 10,000 records is also compared with
the canonical file's MD5. A bad file is an error that names it, never a silent switch to the stand-in.

Where MNIST is not on the machine, it is downloaded through torchvision (which checks each download's MD5) into
runtime.data_dir(), in full mode and where there is internet; scikit-learn's 8x8 digits stand in only where it cannot
be had (offline, or in smoke mode, which never downloads), and the switch is said once, in one sentence.
"""
from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from kdteach import checks, runtime
from kdteach.data.batches import Batches

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# file -> (IDX magic number, bytes per record, records in the canonical file, MD5 of the canonical file). The MD5s
# are of the uncompressed files (torchvision.datasets.MNIST.resources checks the .gz downloads).
_IDX_FORMAT = {
    "train-images-idx3-ubyte": (2051, 28 * 28, 60_000, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (2049, 1, 60_000, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (2051, 28 * 28, 10_000, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (2049, 1, 10_000, "27ae3e4e09519cfbb04c329615203637"),
}
# The four .gz files torchvision downloads (train images 9.9 MB, the rest 1.7 MB), for the message before a download.
DOWNLOAD_MB = 11.6
_FIX = "delete it and download again (load_mnist(..., download=True), or copy it from a machine that has MNIST)"


def verify_mnist_file(path: str | Path) -> int:
    """Checks one of MNIST's IDX files against its header and, for a full-size file, against MNIST's MD5.

    Args:
        path: the file; its name must be one of MNIST_FILES.

    Returns:
        The number of records (images or labels) it holds.

    Raises:
        ValueError: naming the file, when it is truncated, padded, not an MNIST IDX file, or differs from MNIST.
    """
    path = Path(path)
    if path.name not in _IDX_FORMAT:
        raise ValueError(f"path must name one of MNIST's files {MNIST_FILES}, got {path}")
    magic, record_bytes, canonical_count, md5 = _IDX_FORMAT[path.name]
    header_bytes = 16 if magic == 2051 else 8  # images: magic, count, rows, columns; labels: magic, count
    size = path.stat().st_size
    if size < header_bytes:
        raise ValueError(f"{path} is truncated ({size} bytes, shorter than its {header_bytes}-byte header): {_FIX}")
    with open(path, "rb") as f:
        fields = struct.unpack(f">{header_bytes // 4}I", f.read(header_bytes))
    if fields[0] != magic:
        raise ValueError(f"{path} is not an MNIST IDX file (magic number {fields[0]}, expected {magic}): {_FIX}")
    if magic == 2051 and fields[2:] != (28, 28):
        raise ValueError(f"{path} declares {fields[2]}x{fields[3]} images, MNIST's are 28x28: {_FIX}")
    count = fields[1]
    expected = header_bytes + count * record_bytes
    if size != expected:
        what = "truncated" if size < expected else "longer than its header declares"
        raise ValueError(f"{path} is {what} ({size} bytes, expected {expected} for the {count} records its header "
                         f"declares): {_FIX}")
    if count == canonical_count:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            raise ValueError(f"{path} has MNIST's size but not its content (MD5 {digest}, expected {md5}): {_FIX}")
    return count


def find_mnist_root(root: str | Path | None = None) -> Path | None:
    """Returns the first folder holding MNIST/raw/ with the four IDX files, or None when no folder holds any.

    Args:
        root: a folder to look in; None searches runtime.data_search_path().

    Raises:
        ValueError: when the first folder with MNIST files lacks some of the four (a partial copy is an error to
            fix, not a reason to fall back to the stand-in).
    """
    candidates = [Path(root)] if root is not None else runtime.data_search_path()
    for folder in candidates:
        raw = folder / "MNIST" / "raw"
        present = [name for name in MNIST_FILES if (raw / name).exists()]
        if len(present) == len(MNIST_FILES):
            return folder
        if present:
            missing = [name for name in MNIST_FILES if name not in present]
            raise ValueError(f"{raw} holds {len(present)} of MNIST's four files; missing: {', '.join(missing)}. "
                             "Copy them there, or delete the folder and download MNIST again.")
    return None


def load_mnist(split: str = "train", *, root: str | Path | None = None, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads MNIST as tensors.

    Args:
        split: "train" (60,000 digits) or "test" (10,000).
        root: folder that holds MNIST/raw/; None searches KDTEACH_DATA, the checkout's data/ and ../shared/data.
        download: download into runtime.data_dir() when the files are not found (checksummed by torchvision).

    Returns:
        images (N, 1, 28, 28) uint8 and labels (N,) int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from torchvision.datasets import MNIST

    folder = find_mnist_root(root)
    if folder is None:
        if not download:
            where = root if root is not None else runtime.data_dir()
            raise FileNotFoundError(
                f"MNIST not found. Put the four files {', '.join(MNIST_FILES)} in {Path(where) / 'MNIST' / 'raw'} "
                "(or set KDTEACH_DATA to a folder holding MNIST/raw/), or call load_mnist(..., download=True) "
                "on a machine with internet access."
            )
        folder = Path(root) if root is not None else runtime.data_dir()
        folder.mkdir(parents=True, exist_ok=True)
        MNIST(str(folder), train=(split == "train"), download=True)  # torchvision checks the downloads' MD5s
    prefix = "train" if split == "train" else "t10k"
    raw = folder / "MNIST" / "raw"
    n_images = verify_mnist_file(raw / f"{prefix}-images-idx3-ubyte")
    n_labels = verify_mnist_file(raw / f"{prefix}-labels-idx1-ubyte")
    if n_images != n_labels:
        raise ValueError(f"{raw} holds {n_images} {split} images but {n_labels} labels: the two files come from "
                         "different copies; delete both and download again")
    dataset = MNIST(str(folder), train=(split == "train"))
    labels = dataset.targets.clone().long()
    checks.check_labels(f"the labels in {raw / f'{prefix}-labels-idx1-ubyte'}", labels, n_labels, 10)
    return dataset.data.unsqueeze(1).clone(), labels


def load_digits_standin(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits upsampled to 28x28: a small offline stand-in for MNIST.

    1,797 digits, split 80/20 into train and test with a fixed seed. Used only when MNIST is absent.

    Args:
        split: "train" or "test".

    Returns:
        images (N, 1, 28, 28) uint8 and labels (N,) int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(images, (4, 4, 4, 4))  # MNIST digits sit in a 20x20 box inside 28x28
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    rows = torch.as_tensor(order[:cut] if split == "train" else order[cut:])
    return images[rows], labels[rows]


def internet_reachable(timeout_s: float = 3.0) -> bool:
    """Whether torchvision's first MNIST mirror answers a TCP connection (no data is fetched).

    Args:
        timeout_s: how long to wait for the connection.

    Returns:
        True when the mirror's host accepts a connection on its port.
    """
    from torchvision.datasets import MNIST

    url = urlparse(MNIST.mirrors[0])
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s):
            return True
    except OSError:  # no route, refused, DNS failure, timeout: offline
        return False


def download_mnist(folder: Path) -> None:
    """Downloads MNIST's four files into folder/MNIST/raw through torchvision, which checks each file's MD5.

    Args:
        folder: the data folder (created if missing).
    """
    from torchvision.datasets import MNIST

    folder.mkdir(parents=True, exist_ok=True)
    MNIST(str(folder), train=True, download=True)  # downloads all four files, each checked against its MD5


# The stand-in sentences said in this process: each is said once, however many splits and notebooks load data.
_ANNOUNCED: set[str] = set()


def _announce_once(sentence: str) -> None:
    if sentence not in _ANNOUNCED:
        _ANNOUNCED.add(sentence)
        print(sentence)


def standin_reason(download: bool | None = None) -> str | None:
    """Makes MNIST available if it can be, and says why the stand-in must be used otherwise.

    MNIST's files are looked for first (runtime.data_search_path()). Absent, they are downloaded into
    runtime.data_dir() when downloading is allowed (download=True, or download=None outside smoke mode: no smoke
    run and no test downloads anything) and torchvision's mirror can be reached.

    Args:
        download: True to download when absent, False never to, None for the default (download in full mode).

    Returns:
        None when MNIST's files are now on the machine; else the reason for the stand-in, as the end of a sentence.

    Raises:
        ValueError: from find_mnist_root, when a folder holds only some of MNIST's files.
    """
    if find_mnist_root() is not None:
        return None
    if download is None:
        download = runtime.mode() != "smoke"
        if not download:
            return "smoke mode never downloads (full mode downloads it where there is internet)"
    if not download:
        return "downloading was turned off (download=False)"
    if not internet_reachable():
        return "this machine cannot reach the internet to download it"
    folder = runtime.data_dir()
    print(f"kdteach: downloading MNIST (about {DOWNLOAD_MB:.0f} MB, checked against its MD5s by torchvision) into {folder}")
    try:
        download_mnist(folder)
    except (RuntimeError, OSError) as error:  # torchvision's failed download or checksum, a dropped connection
        return f"its download failed ({error})"
    return None if find_mnist_root() is not None else f"its download left no MNIST files in {folder / 'MNIST' / 'raw'}"


def load_mnist_or_standin(split: str = "train", *, download: bool | None = None, verbose: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST, downloaded first where it is absent and can be; scikit-learn's digits only where it cannot, said once.

    A present but bad MNIST file (truncated, corrupt, one of the four missing) raises the ValueError of
    load_mnist / find_mnist_root that names it: the stand-in would change every number without a word.

    Args:
        split: "train" or "test".
        download: True to download MNIST when absent, False never to, None (default): download in full mode only.
        verbose: print which data is used (the switch to the stand-in is said once per process even when False).

    Returns:
        images (N, 1, 28, 28) uint8 and labels (N,) int64.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    reason = standin_reason(download)
    if reason is None:
        images, labels = load_mnist(split)
        source = "MNIST"
    else:
        _announce_once(f"kdteach: MNIST is not on this machine and {reason}, so scikit-learn's 1,797 8x8 digits "
                       "(upsampled to 28x28) stand in for it, and the numbers are not comparable with the MNIST references.")
        images, labels = load_digits_standin(split)
        source = "sklearn digits (stand-in)"
    if verbose:
        print(f"kdteach: {split} data: {source}, {len(labels)} images")
    return images, labels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]. Teacher and student see the same scaling (no dataset statistics)."""
    return images.float().div_(255.0)


@dataclass
class DigitSplits:
    """Float images in [0, 1] (N, 1, 28, 28) and labels of a training and a test split, on one device.

    Attributes:
        train_x, train_y: training images and labels.
        test_x, test_y: test images and labels.
        source: "MNIST" or "sklearn digits stand-in".
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    def batches(self, split: str, batch_size: int, **kwargs: Any) -> Batches:
        """Batches over "train" or "test" (kwargs go to Batches: shuffle, seed, augment, ...)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return Batches({"x": x, "y": y}, batch_size, **kwargs)


def _fixed_subset(x: torch.Tensor, y: torch.Tensor, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    # The same rows on every call and every machine: the first `size` of one fixed permutation.
    if size is None or size >= len(y):
        return x, y
    rows = torch.as_tensor(np.random.default_rng(0).permutation(len(y))[:size])
    return x[rows], y[rows]


def load_digit_splits(train_size: int | None, test_size: int | None, device: torch.device | str = "cpu", *,
                      verbose: bool = True, download: bool | None = None) -> DigitSplits:
    """MNIST (or scikit-learn's digits stand-in where MNIST cannot be had), cut to a fixed random subset, on device.

    Args:
        train_size, test_size: digits kept of each split (None: all).
        device: where the tensors go (they stay there for the whole notebook).
        verbose: say which data is used, in one line.
        download: see load_mnist_or_standin (None: download MNIST in full mode where it is absent).

    Returns:
        DigitSplits.
    """
    train_x, train_y = load_mnist_or_standin("train", download=download, verbose=False)
    source = "MNIST" if len(train_y) == 60_000 else "sklearn digits stand-in"
    train_x, train_y = _fixed_subset(train_x, train_y, train_size)
    test_x, test_y = _fixed_subset(*load_mnist_or_standin("test", download=download, verbose=False), test_size)
    if verbose:
        subset = " (a fixed subset)" if train_size or test_size else ""
        print(f"kdteach: data: {source}, {len(train_y)} training and {len(test_y)} test digits{subset}")
    return DigitSplits(to_float(train_x).to(device), train_y.to(device), to_float(test_x).to(device), test_y.to(device), source)
