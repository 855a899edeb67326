"""MNIST, read through torchvision from the data folder, with a clear error when it is not there."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdteach import runtime
from kdteach.data.batches import Batches

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_mnist_root(root: str | Path | None = None) -> Path | None:
    """Returns the first folder holding MNIST/raw/ with the four IDX files, or None.

    Args:
        root: a folder to look in; None searches runtime.data_search_path().
    """
    candidates = [Path(root)] if root is not None else runtime.data_search_path()
    for folder in candidates:
        raw = folder / "MNIST" / "raw"
        if all((raw / name).exists() for name in MNIST_FILES):
            return folder
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
    dataset = MNIST(str(folder), train=(split == "train"), download=download and find_mnist_root(folder) is None)
    return dataset.data.unsqueeze(1).clone(), dataset.targets.clone().long()


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


def load_mnist_or_standin(split: str = "train", *, download: bool = False, verbose: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST when it can be found (or downloaded); scikit-learn's digits otherwise, saying so.

    Args:
        split: "train" or "test".
        download: try to download MNIST when it is not found.
        verbose: print which data is used.

    Returns:
        images (N, 1, 28, 28) uint8 and labels (N,) int64.
    """
    try:
        images, labels = load_mnist(split, download=download)
        source = "MNIST"
    except (FileNotFoundError, RuntimeError) as error:  # RuntimeError: torchvision's failed download
        if verbose:
            print(f"kdteach: {error}\nkdteach: using scikit-learn's 8x8 digits upsampled to 28x28 instead.")
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
                      verbose: bool = True) -> DigitSplits:
    """MNIST (or scikit-learn's digits stand-in when MNIST is absent), cut to a fixed random subset, on device.

    Args:
        train_size, test_size: digits kept of each split (None: all).
        device: where the tensors go (they stay there for the whole notebook).
        verbose: say which data is used.

    Returns:
        DigitSplits.
    """
    train_x, train_y = load_mnist_or_standin("train", verbose=verbose)
    source = "MNIST" if len(train_y) == 60_000 else "sklearn digits stand-in"
    train_x, train_y = _fixed_subset(train_x, train_y, train_size)
    test_x, test_y = _fixed_subset(*load_mnist_or_standin("test", verbose=verbose), test_size)
    if verbose and (train_size or test_size):
        print(f"kdteach: using a subset: {len(train_y)} training and {len(test_y)} test digits")
    return DigitSplits(to_float(train_x).to(device), train_y.to(device), to_float(test_x).to(device), test_y.to(device), source)
