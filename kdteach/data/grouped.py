"""Datasets with groups (label x spurious attribute) by name: DATASETS, load_splits and training_augmentation,
what notebooks 02, 03 and 07 call. Every loader returns one structure, GroupedData, so a notebook switches dataset
with one argument.

The pieces live in their own modules and are re-exported here, so kdteach.data.grouped.<name> keeps working:
- kdteach.data.grouped_data: GroupedData, ImageTransform, GroupBalancedBatches, flip_and_shift (what loaders share);
- kdteach.data.standins: the generated stand-ins waterbirds_like and colored_digits;
- kdteach.data.real_images: Waterbirds and CelebA read from their published layouts.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from kdteach.data.grouped_data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLITS,
    GroupBalancedBatches,
    GroupedData,
    ImageTransform,
    flip_and_shift,
)
from kdteach.data.real_images import WATERBIRDS_FOLDERS, celeba, waterbirds  # noqa: F401 (WATERBIRDS_FOLDERS: re-exported)
from kdteach.data.standins import WATERBIRDS_LIKE_DIFFICULTY, WATERBIRDS_TRAIN_GROUP_COUNTS, colored_digits, waterbirds_like

__all__ = [
    "GroupedData",
    "ImageTransform",
    "GroupBalancedBatches",
    "flip_and_shift",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WATERBIRDS_TRAIN_GROUP_COUNTS",
    "WATERBIRDS_LIKE_DIFFICULTY",
    "waterbirds_like",
    "colored_digits",
    "waterbirds",
    "celeba",
    "DATASETS",
    "load_splits",
    "training_augmentation",
]

DATASETS = ("waterbirds_like", "colored_digits", "waterbirds", "celeba")


def load_splits(dataset: str, sizes: Mapping[str, int | None], *, image_size: int, p_corr: float, seed: int) -> dict[str, GroupedData]:
    """The train, val and test splits of one of DATASETS, by name (what notebooks 02 and 03 train on).

    Args:
        dataset: "waterbirds_like" or "colored_digits" (generated stand-ins), "waterbirds" or "celeba" (read from the
            data folders).
        sizes: {"train": n, "val": n, "test": n}; None takes a whole split.
        image_size: side of waterbirds_like's and the real datasets' images (colored_digits stay at 28).
        p_corr: P(spurious attribute agrees with label) in the stand-ins' training split.
        seed: seed of the draw (and of the real datasets' subsampling).

    Returns:
        {split: GroupedData}.
    """
    loaders = {
        "waterbirds_like": lambda split, n: waterbirds_like(split, n, image_size=image_size, p_corr=p_corr, seed=seed),
        "colored_digits": lambda split, n: colored_digits(split, n, p_corr=p_corr, seed=seed),
        "waterbirds": lambda split, n: waterbirds(None, split, image_size=image_size, n=n, seed=seed),
        "celeba": lambda split, n: celeba(None, split, image_size=image_size, n=n, seed=seed),
    }
    if dataset not in loaders:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return {split: loaders[dataset](split, sizes[split]) for split in SPLITS}


def training_augmentation(dataset: str, image_size: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The flips and shifts that keep a dataset's labels: waterbirds_like is flipped both ways (a standing bird
    upside down still stands), photographs are only mirrored, digits only shifted (a mirrored digit is another
    digit). Shifts of up to image_size // 8 pixels (2 for the 28-pixel digits)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "colored_digits":
        return flip_and_shift(2, horizontal=False, vertical=False)
    return flip_and_shift(max(1, image_size // 8), vertical=dataset == "waterbirds_like")
