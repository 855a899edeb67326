"""GroupedData, the one structure every grouped image dataset is returned as (label x spurious attribute), and what
every loader shares: the split names, the image transform, group-balanced batches, flips and shifts.

The loaders live in kdteach.data.standins (generated stand-ins) and kdteach.data.real_images (Waterbirds, CelebA);
kdteach.data.grouped picks one by name. Groups are label * num_attributes + attribute (2 * label + attribute for the
binary tasks).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from kdteach import checks
from kdteach.data.batches import Batches, random_translate
from kdteach.groups import group_counts as _group_counts

__all__ = [
    "SPLITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "GroupBalancedBatches",
    "flip_and_shift",
    "GroupedData",
    "check_split",
    "check_subset_size",
    "binary_group_names",
]

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """uint8 images -> float32 in [0, 1], then (x - mean) / std per channel when mean and std are given.

    One object per dataset, used by the teacher's and the student's batches alike, so both see the same
    normalisation. Runs on the images' device (inside Batches, on the GPU).

    Args:
        mean: per-channel means (in [0, 1] units) or None for no normalisation.
        std: per-channel standard deviations, given together with mean.
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together (or both None)")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std must be > 0 in every channel, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Copied to the device once: a copy from host memory in every batch would make the host wait for the GPU.
        if device not in self._on_device:
            shape = (1, len(self.mean), 1, 1)
            self._on_device[device] = (torch.tensor(self.mean, device=device).view(shape), torch.tensor(self.std, device=device).view(shape))
        return self._on_device[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255.0)
        if self.mean is None:
            return x
        if x.shape[1] != len(self.mean):
            raise ValueError(f"images have {x.shape[1]} channels but mean and std have {len(self.mean)}")
        mean, std = self._statistics(x.device)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"ImageTransform(mean={self.mean}, std={self.std})"


class GroupBalancedBatches(Batches):
    """Batches whose every epoch draws N rows with replacement so that each non-empty group is equally likely.

    Group-balanced sampling (Sagawa et al. 2020; Idrissi et al. 2022): the 56 "waterbirds on land" are seen as
    often as the 3498 "landbirds on land". Each epoch's draw is seeded by (seed, epoch), like Batches' shuffling.
    batch["index"] still holds dataset rows, so per-example state (cached teacher logits) stays aligned.

    Args:
        tensors: as for Batches; must hold an integer group-id tensor under `group_key`.
        batch_size, seed, augment, drop_last, transform: as for Batches.
        group_key: which tensor holds the group ids.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], batch_size: int, *, seed: int = 0, group_key: str = "group", **kwargs) -> None:
        if group_key not in tensors:
            raise ValueError(f"tensors has no {group_key!r} entry (group_key) to balance over; keys: {sorted(tensors)}")
        super().__init__(tensors, batch_size, shuffle=True, seed=seed, **kwargs)
        groups = self.tensors[group_key].long().cpu()
        counts = torch.bincount(groups)
        self._row_weights = 1.0 / counts[groups].double()  # each group's rows share one unit of probability

    def __iter__(self):
        generator = self._generator()
        order = torch.multinomial(self._row_weights, self.n, replacement=True, generator=generator).to(self.device)
        # Iterate over this epoch's draw in order, then map positions back to dataset rows.
        drawn = Batches({k: v[order] for k, v in self.tensors.items()}, self.batch_size, drop_last=self.drop_last)
        for batch in drawn:
            batch["index"] = order[batch["index"]]
            if self.augment is not None:
                batch["x"] = self.augment(batch["x"], generator)
            if self.transform is not None:
                batch["x"] = self.transform(batch["x"])
            yield batch


def flip_and_shift(max_shift: int, *, horizontal: bool = True, vertical: bool = True) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An augment function for Batches: random mirror and upside-down flips, then a random shift.

    Flips keep waterbirds_like's labels (a tall bird stays tall, a long one long) and its backgrounds' kind; use
    vertical=False for photographs, and no flips for digits. The shift is kdteach.data.random_translate.

    Args:
        max_shift: largest shift in pixels, in each direction.
        horizontal: mirror left-right, each image with probability 1/2.
        vertical: flip upside down, each image with probability 1/2.

    Returns:
        augment(x, generator) -> x for uint8 or float (N, C, H, W) images.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flips = torch.rand(len(x), 2, generator=generator).to(x.device) < 0.5
        if horizontal:
            x = torch.where(flips[:, 0, None, None, None], x.flip(3), x)
        if vertical:
            x = torch.where(flips[:, 1, None, None, None], x.flip(2), x)
        return random_translate(x, max_shift, generator)

    augment.max_shift = max_shift  # lets cache_teacher_logits name what it refuses
    return augment


@dataclass
class GroupedData:
    """A grouped image dataset: images, labels, spurious attribute and group id per example.

    Attributes:
        images: (N, C, H, W) uint8.
        labels: (N,) int64 class ids.
        spurious: (N,) int64 spurious attribute ids.
        groups: (N,) int64 group ids (label * num_attributes + attribute).
        num_classes: number of classes.
        num_groups: number of groups.
        group_names: one name per group, e.g. "waterbird on land".
        name: dataset and split, e.g. "waterbirds_like/train".
        mean, std: per-channel normalisation applied after scaling to [0, 1] (None: none).
    """

    images: torch.Tensor
    labels: torch.Tensor
    spurious: torch.Tensor
    groups: torch.Tensor
    num_classes: int
    num_groups: int
    group_names: list[str]
    name: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    attribute_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 of shape (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        for key in ("images", "spurious", "groups"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{key} has {len(getattr(self, key))} rows, labels has {n}")
        if len(self.group_names) != self.num_groups:
            raise ValueError(f"group_names has {len(self.group_names)} names for num_groups={self.num_groups}")
        checks.check_labels("labels", self.labels, n, self.num_classes)
        checks.check_labels("groups", self.groups, n, self.num_groups)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def transform(self) -> ImageTransform:
        """uint8 -> float in [0, 1], normalised with this dataset's mean and std (the same for every model)."""
        return ImageTransform(self.mean, self.std)  # cheap; each Batches keeps its own, with statistics on its device

    def group_counts(self) -> np.ndarray:
        """(num_groups,) examples per group."""
        return _group_counts(self.groups, self.num_groups)

    def subset(self, rows: torch.Tensor | np.ndarray | Sequence[int]) -> "GroupedData":
        """The rows given (indices or a boolean mask), as a new GroupedData."""
        rows = torch.as_tensor(rows)
        return replace(self, images=self.images[rows], labels=self.labels[rows], spurious=self.spurious[rows], groups=self.groups[rows])

    def tensors(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """{"x": uint8 images, "y": labels, "group": group ids, "spurious": attribute} on device."""
        named = {"x": self.images, "y": self.labels, "group": self.groups, "spurious": self.spurious}
        return {k: v.to(device) if device is not None else v for k, v in named.items()}

    def batches(
        self,
        batch_size: int = 256,
        *,
        device: torch.device | str | None = None,
        shuffle: bool = False,
        balanced: bool = False,
        seed: int = 0,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        drop_last: bool = False,
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> Batches:
        """A kdteach.data.Batches over this dataset, resident on device, yielding float images.

        Args:
            batch_size: rows per batch.
            device: where the tensors live (moved once); None keeps them where they are (CPU).
            shuffle: reshuffle every epoch.
            balanced: group-balanced sampling with replacement (GroupBalancedBatches); implies shuffling.
            seed: seed of the shuffling / sampling and augmentation streams.
            augment: optional (uint8 x, generator) -> x applied before the float transform.
            drop_last: drop a final incomplete batch.
            extra: more per-example tensors to carry (e.g. {"teacher_logits": ...}).

        Returns:
            Batches yielding {"x": float images, "y", "group", "spurious", "index", *extra}.
        """
        tensors = self.tensors(device)
        for key, value in (extra or {}).items():
            if key in tensors or key == "index":
                raise ValueError(f"extra may not replace {key!r}")
            if len(value) != len(self):
                raise ValueError(f"extra[{key!r}] has {len(value)} rows, the dataset has {len(self)}")
            tensors[key] = value.to(tensors["x"].device)
        common = {"seed": seed, "augment": augment, "drop_last": drop_last, "transform": self.transform}
        if balanced:
            return GroupBalancedBatches(tensors, batch_size, **common)
        return Batches(tensors, batch_size, shuffle=shuffle, **common)

    def group_table(self) -> list[dict[str, object]]:
        """One row per group: id, name, count and share of the split (for printing)."""
        counts = self.group_counts()
        total = max(int(counts.sum()), 1)
        return [{"group": g, "name": name, "count": int(c), "share": float(c) / total} for g, (name, c) in enumerate(zip(self.group_names, counts))]


def check_subset_size(n: int, count: int) -> None:
    """Refuses a subset size n that is not an integer in [1, count] (count: the size of the split)."""
    checks.check_int("n", n, minimum=1)
    if n > count:
        raise ValueError(f"n must be at most {count}, the size of this split, got {n}")


def check_split(split: str) -> int:
    """The index of split in SPLITS; anything else is refused by name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def binary_group_names(class_names: Sequence[str], attribute_names: Sequence[str]) -> list[str]:
    """The group names "<class> <attribute>" in group-id order (label * num_attributes + attribute)."""
    return [f"{c} {a}" for c in class_names for a in attribute_names]
