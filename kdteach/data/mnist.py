"""MNIST, read through torchvision from the data folder, with a clear error when it is not there."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdteach import runtime

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
