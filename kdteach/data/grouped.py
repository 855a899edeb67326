"""Datasets with groups (label x spurious attribute), all returned as one structure, GroupedData.

Offline stand-ins, generated in a second:
- waterbirds_like: a foreground object whose SHAPE decides the label, on a BACKGROUND (colour and texture) that
  agrees with the label 95% of the time in training and half the time in validation and test, with Waterbirds'
  training group sizes (3498 / 184 / 56 / 1057). The background is the easy cue, the shape the harder one.
- colored_digits: MNIST (or scikit-learn's digits) coloured with a colour that agrees with the label.
Real data, in their published on-disk layouts: waterbirds() and celeba().

Every loader returns GroupedData, so a notebook switches dataset with one argument. Groups are
label * num_attributes + attribute (2 * label + attribute for the binary tasks).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from kdteach import checks, runtime
from kdteach.data.batches import Batches, random_translate
from kdteach.groups import group_counts as _group_counts
from kdteach.groups import group_ids

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


def _check_subset_size(n: int, count: int) -> None:
    checks.check_int("n", n, minimum=1)
    if n > count:
        raise ValueError(f"n must be at most {count}, the size of this split, got {n}")


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _binary_group_names(class_names: Sequence[str], attribute_names: Sequence[str]) -> list[str]:
    return [f"{c} {a}" for c in class_names for a in attribute_names]


# --------------------------------------------------------------------------------------------------------------
# waterbirds_like: procedural birds on procedural backgrounds
# --------------------------------------------------------------------------------------------------------------

# Waterbirds' training split: landbird on land, landbird on water, waterbird on land, waterbird on water.
WATERBIRDS_TRAIN_GROUP_COUNTS = (3498, 184, 56, 1057)
# Waterbirds' split sizes; the class balance (23% waterbirds) is the same in every split.
_WATERBIRDS_SPLIT_SIZES = {"train": 4795, "val": 1199, "test": 5794}
_WATERBIRD_SHARE = (WATERBIRDS_TRAIN_GROUP_COUNTS[2] + WATERBIRDS_TRAIN_GROUP_COUNTS[3]) / sum(WATERBIRDS_TRAIN_GROUP_COUNTS)

# The difficulty of the stand-in, chosen so that ERM of a small CNN reaches a high average but a clearly lower
# worst-group accuracy (tests/test_grouped_data.py checks this). The label is the pose of an elliptical bird:
# landbirds stand (tall), waterbirds swim (long), each tilted at random. Telling them apart needs the object's
# outline, found against a textured background. The background itself (green-brown blotches for land, blue
# horizontal waves for water) is a colour that a single pixel nearly gives away: the easy cue.
WATERBIRDS_LIKE_DIFFICULTY = {
    "aspect": 2.2,  # long axis / short axis of the bird (closer to 1: the two poses look more alike)
    "tilt": 30.0,  # largest random tilt away from the class's pose, in degrees (45 makes the classes touch)
    "radius": (0.4, 0.6),  # half the long axis, as a fraction of the image's half-width, drawn uniformly
    "max_offset": 0.35,  # largest shift of the bird's centre from the image centre, same units
    "noise": 0.06,  # std of Gaussian pixel noise, in [0, 1] intensity units
}


def _group_sizes(n: int, p_corr: float) -> list[int]:
    # Class sizes follow Waterbirds' 77 / 23 split; within a class, the background agrees with the label with
    # probability p_corr. At the defaults this gives Waterbirds' exact training counts.
    n_water = int(round(n * _WATERBIRD_SHARE))
    n_land = n - n_water
    land_on_land = int(round(n_land * p_corr))
    water_on_water = int(round(n_water * p_corr))
    return [land_on_land, n_land - land_on_land, n_water - water_on_water, water_on_water]


def _split_generator(seed: int, split: str, salt: int) -> torch.Generator:
    # Different, reproducible streams for every (seed, split, dataset).
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, SPLITS.index(split), salt]).generate_state(1)[0]))


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


def _land_texture(n: int, xx: torch.Tensor, yy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # A sum of three random plane waves of low frequency: soft blotches, (n, S, S) in [-1, 1].
    angles = _uniform((n, 3, 1, 1), 0, np.pi, generator)
    freqs = _uniform((n, 3, 1, 1), 1.5, 3.5, generator)
    phases = _uniform((n, 3, 1, 1), 0, 2 * np.pi, generator)
    proj = torch.cos(angles) * xx + torch.sin(angles) * yy
    return torch.sin(np.pi * freqs * proj + phases).mean(dim=1)


def _water_texture(n: int, xx: torch.Tensor, yy: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Horizontal waves that wobble a little along x, (n, S, S) in [-1, 1].
    freq = _uniform((n, 1, 1), 4.0, 7.0, generator)
    wobble = 0.15 * torch.sin(np.pi * _uniform((n, 1, 1), 1, 3, generator) * xx + _uniform((n, 1, 1), 0, 2 * np.pi, generator))
    return torch.sin(np.pi * freq * (yy + wobble) + _uniform((n, 1, 1), 0, 2 * np.pi, generator))


def _draw_backgrounds(water: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Land (green-brown blotches) or water (blue horizontal waves) backgrounds, (N, 3, S, S) floats in [0, 1]."""
    n = len(water)
    coords = torch.linspace(-1, 1, size)
    yy, xx = coords[:, None], coords[None, :]  # (S, 1), (1, S)
    texture = torch.empty(n, size, size)
    texture[~water] = _land_texture(int((~water).sum()), xx, yy, generator)
    texture[water] = _water_texture(int(water.sum()), xx, yy, generator)
    mix = (0.5 + 0.5 * texture)[:, None]  # (N, 1, S, S): 0 -> first colour, 1 -> second colour
    land_a, land_b = torch.tensor([0.25, 0.45, 0.15]), torch.tensor([0.50, 0.38, 0.20])  # grass, earth
    water_a, water_b = torch.tensor([0.10, 0.25, 0.55]), torch.tensor([0.35, 0.60, 0.85])  # deep, light
    first = torch.where(water[:, None], water_a, land_a)[:, :, None, None]
    second = torch.where(water[:, None], water_b, land_b)[:, :, None, None]
    brightness = _uniform((n, 1, 1, 1), 0.75, 1.25, generator)  # lighting varies image to image
    return torch.lerp(first, second, mix) * brightness


def _draw_objects(waterbird: torch.Tensor, size: int, generator: torch.Generator, difficulty: Mapping[str, float]) -> torch.Tensor:
    """Soft masks (N, 1, S, S) of ellipses: tall for landbirds, long for waterbirds, tilted at random."""
    n = len(waterbird)
    coords = torch.linspace(-1, 1, size)
    yy, xx = coords[None, :, None], coords[None, None, :]
    offset, (low, high) = float(difficulty["max_offset"]), difficulty["radius"]
    centre_x, centre_y = _uniform((n, 1, 1), -offset, offset, generator), _uniform((n, 1, 1), -offset, offset, generator)
    long_axis = _uniform((n, 1, 1), float(low), float(high), generator)
    short_axis = long_axis / float(difficulty["aspect"])
    tilt = np.deg2rad(float(difficulty["tilt"]))
    angle = torch.where(waterbird, 0.0, np.pi / 2)[:, None, None] + _uniform((n, 1, 1), -tilt, tilt, generator)
    dx, dy = xx - centre_x, yy - centre_y
    along = dx * torch.cos(angle) + dy * torch.sin(angle)  # coordinate along the long axis
    across = -dx * torch.sin(angle) + dy * torch.cos(angle)
    distance = torch.sqrt((along / long_axis) ** 2 + (across / short_axis) ** 2)  # 1 on the outline
    edge = 2.0 / size  # about one pixel of anti-aliasing, measured along the short axis
    return torch.sigmoid((1 - distance) * short_axis / edge)[:, None]


def waterbirds_like(
    split: str = "train",
    n: int | None = None,
    *,
    image_size: int = 32,
    p_corr: float = 0.95,
    seed: int = 0,
    difficulty: Mapping[str, float] | None = None,
) -> GroupedData:
    """A Waterbirds-like stand-in: the object's shape decides the label, the background is the spurious cue.

    Label 0 "landbird" is a tall ellipse (it stands), label 1 "waterbird" a long one (it swims), each tilted by up to
    30 degrees, at a random position, size and colour. Attribute 0 is a land background (green-brown blotches), 1 a water background (blue waves).
    In training the background agrees with the label with probability p_corr; in validation and test it agrees
    half the time (balanced within each class). Class sizes follow Waterbirds (23% waterbirds) in every split.

    Args:
        split: "train", "val" or "test".
        n: number of images; None uses Waterbirds' split size (4795 / 1199 / 5794), which at p_corr=0.95 gives
            exactly Waterbirds' training groups 3498 / 184 / 56 / 1057.
        image_size: side of the square images in pixels.
        p_corr: P(background agrees with label) in training, in [0.5, 1].
        seed: seed of the draw (each split has its own stream, so splits never share images).
        difficulty: overrides of WATERBIRDS_LIKE_DIFFICULTY.

    Returns:
        GroupedData with 3-channel uint8 images, groups 2 * label + background.
    """
    _check_split(split)
    n = _WATERBIRDS_SPLIT_SIZES[split] if n is None else n
    checks.check_int("n", n, minimum=4)
    checks.check_number("p_corr", p_corr, low=0.5, high=1.0)
    checks.check_int("image_size", image_size, minimum=8)
    settings = {**WATERBIRDS_LIKE_DIFFICULTY, **(difficulty or {})}
    unknown = set(settings) - set(WATERBIRDS_LIKE_DIFFICULTY)
    if unknown:
        raise ValueError(f"difficulty has unknown keys {sorted(unknown)}; known: {sorted(WATERBIRDS_LIKE_DIFFICULTY)}")
    generator = _split_generator(seed, split, salt=1)

    sizes = _group_sizes(n, p_corr if split == "train" else 0.5)
    groups = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    groups = groups[torch.randperm(n, generator=generator)]
    labels, water = groups // 2, groups % 2

    background = _draw_backgrounds(water.bool(), image_size, generator)
    mask = _draw_objects(labels.bool(), image_size, generator, settings)
    colour = _uniform((n, 3, 1, 1), 0.0, 1.0, generator)  # the object's colour says nothing about the label
    images = (1 - mask) * background + mask * colour
    images = images + float(settings["noise"]) * torch.randn(images.shape, generator=generator)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)

    class_names, attribute_names = ["landbird", "waterbird"], ["on land", "on water"]
    return GroupedData(
        images=images,
        labels=labels.long(),
        spurious=water.long(),
        groups=groups.long(),
        num_classes=2,
        num_groups=4,
        group_names=_binary_group_names(class_names, attribute_names),
        name=f"waterbirds_like/{split}",
        class_names=class_names,
        attribute_names=attribute_names,
    )


# --------------------------------------------------------------------------------------------------------------
# colored_digits: digits painted in a colour that agrees with the label
# --------------------------------------------------------------------------------------------------------------

# One colour per class (RGB in [0, 1]); with two classes, red and green as in Arjovsky et al.'s coloured MNIST.
_DIGIT_COLOURS = (
    (0.95, 0.15, 0.15), (0.15, 0.85, 0.20), (0.20, 0.35, 0.95), (0.95, 0.85, 0.10), (0.85, 0.20, 0.85),
    (0.10, 0.85, 0.85), (0.95, 0.55, 0.10), (0.55, 0.30, 0.10), (0.60, 0.60, 0.60), (0.55, 0.95, 0.55),
)
_COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "brown", "grey", "light green")


def _digits_split(split: str, root: str | Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    # MNIST (or scikit-learn's digits when MNIST is absent) has train and test only: validation is a fixed sixth of
    # the training digits, the same for every seed.
    from kdteach.data.mnist import load_digits_standin, load_mnist

    source_split = "test" if split == "test" else "train"
    try:
        images, digits = load_mnist(source_split, root=root)
        source = "MNIST"
    except FileNotFoundError:
        images, digits = load_digits_standin(source_split)
        source = "sklearn digits"
    if split != "test":
        order = torch.as_tensor(np.random.default_rng(0).permutation(len(digits)))
        cut = len(digits) // 6
        rows = order[:cut] if split == "val" else order[cut:]
        images, digits = images[rows], digits[rows]
    return images, digits, source


def colored_digits(
    split: str = "train",
    n: int | None = None,
    *,
    num_classes: int = 2,
    p_corr: float = 0.95,
    seed: int = 0,
    root: str | Path | None = None,
) -> GroupedData:
    """Handwritten digits painted in a colour that agrees with the label with probability p_corr in training.

    With num_classes=2 the label is "digit >= 5" and the colours red and green; with num_classes=10 the label is the
    digit and there are ten colours. In validation and test the colour is drawn independently of the label.
    MNIST is used when found (kdteach.data.find_mnist_root), scikit-learn's digits otherwise.

    Args:
        split: "train", "val" (a fixed sixth of MNIST's training digits) or "test".
        n: number of images (a seeded subset); None uses the whole split.
        num_classes: 2 or 10.
        p_corr: P(colour agrees with label) in training, in [1 / num_classes, 1].
        seed: seed of the colours and the subset.
        root: folder holding MNIST/raw/; None searches the data folders.

    Returns:
        GroupedData with (N, 3, 28, 28) uint8 images; group = label * num_classes + colour.
    """
    _check_split(split)
    if num_classes not in (2, 10):
        raise ValueError(f"num_classes must be 2 or 10, got {num_classes!r}")
    checks.check_number("p_corr", p_corr, low=1.0 / num_classes, high=1.0)
    images, digits, source = _digits_split(split, root)
    generator = _split_generator(seed, split, salt=2)
    if n is not None:
        _check_subset_size(n, len(digits))
        rows = torch.randperm(len(digits), generator=generator)[:n].sort().values
        images, digits = images[rows], digits[rows]
    labels = (digits >= 5).long() if num_classes == 2 else digits.long()

    # Colour = label with probability p (p_corr in training, chance elsewhere), else one of the other colours.
    agree = p_corr if split == "train" else 1.0 / num_classes
    keep = torch.rand(len(labels), generator=generator) < agree
    shift = torch.randint(1, num_classes, (len(labels),), generator=generator)
    colours = torch.where(keep, labels, (labels + shift) % num_classes)

    palette = torch.tensor(_DIGIT_COLOURS[:num_classes])  # (K, 3)
    painted = torch.empty((len(labels), 3, *images.shape[2:]), dtype=torch.uint8)
    for start in range(0, len(labels), 8192):  # in chunks: 60,000 float images would take 0.5 GB at once
        rows = slice(start, start + 8192)
        painted[rows] = (images[rows].float() * palette[colours[rows]][:, :, None, None]).round().to(torch.uint8)
    class_names = ["digit 0-4", "digit 5-9"] if num_classes == 2 else [f"digit {d}" for d in range(10)]
    attribute_names = [f"in {c}" for c in _COLOUR_NAMES[:num_classes]]
    return GroupedData(
        images=painted,
        labels=labels,
        spurious=colours.long(),
        groups=group_ids(labels, colours, num_classes),
        num_classes=num_classes,
        num_groups=num_classes**2,
        group_names=_binary_group_names(class_names, attribute_names),
        name=f"colored_digits ({source})/{split}",
        class_names=class_names,
        attribute_names=attribute_names,
    )


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


# --------------------------------------------------------------------------------------------------------------
# Real data in their published layouts
# --------------------------------------------------------------------------------------------------------------

WATERBIRDS_FOLDERS = ("waterbird_complete95_forest2water2", "waterbirds_v1.0", "waterbirds")
_WATERBIRDS_HELP = (
    "Get it with the WILDS package (pip install wilds; python -c \"from wilds import get_dataset; "
    "get_dataset('waterbirds', download=True, root_dir='DATA')\") or the original archive "
    "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz (extract it in DATA). "
    "DATA is {data} (set KDTEACH_DATA to use another folder), or pass root= to the folder holding metadata.csv."
)
_CELEBA_HELP = (
    "Get it with torchvision (torchvision.datasets.CelebA('DATA', download=True), which often hits Google Drive's "
    "quota) or from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: put img_align_celeba/, list_attr_celeba.txt "
    "and list_eval_partition.txt in DATA/celeba/. DATA is {data} (set KDTEACH_DATA to use another folder), or pass "
    "root= to the folder holding celeba/."
)


def _candidate_roots(root: str | Path | None) -> list[Path]:
    return [Path(root)] if root is not None else runtime.data_search_path()


def _find_waterbirds(root: str | Path | None) -> Path:
    for base in _candidate_roots(root):
        for folder in (base, *(base / name for name in WATERBIRDS_FOLDERS)):
            if (folder / "metadata.csv").is_file():
                return folder
    searched = ", ".join(str(p) for p in _candidate_roots(root)) or "(no data folder exists yet)"
    raise FileNotFoundError(
        f"Waterbirds not found: no metadata.csv in {searched} or their subfolders {', '.join(WATERBIRDS_FOLDERS)}. "
        + _WATERBIRDS_HELP.format(data=runtime.data_dir())
    )


def _load_images(paths: Sequence[Path], image_size: int, crop_to_square: bool) -> torch.Tensor:
    """Decodes image files to one (N, 3, S, S) uint8 tensor: the evaluation transform of the Waterbirds papers
    (resize to 256/224 of the target, centre crop), or for CelebA a centre square crop then resize."""
    from torchvision.transforms import functional as TF
    from tqdm.auto import tqdm

    out = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc="decoding images", disable=len(paths) < 2000)):
        image = _decode_rgb(path)
        if crop_to_square:
            image = TF.center_crop(image, [min(image.size)] * 2)
            image = TF.resize(image, [image_size, image_size], antialias=True)
        else:
            scaled = int(round(image_size * 256 / 224))
            image = TF.center_crop(TF.resize(image, [scaled, scaled], antialias=True), [image_size, image_size])
        out[i] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def _decode_rgb(path: Path) -> "PIL.Image.Image":  # noqa: F821 - PIL is imported lazily
    """The image at path as an RGB PIL image; a truncated or corrupt file is a ValueError that names it."""
    from PIL import Image

    # PIL reads the header in open() and the pixels in convert(): a truncated file fails in the second, with a
    # message that does not say which of thousands of files it was.
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: cannot decode this image ({error}); the file is truncated or corrupt: delete it and "
                         "extract or download it again") from error


def _missing_images(paths: Sequence[Path], listed_in: Path, help_text: str) -> None:
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} of the {len(paths)} images that {listed_in} lists for this split are "
                                f"missing, e.g. {absent[0]}. " + help_text)


def _int_field(path: Path, line: int, column: str, value: str | None, allowed: Sequence[int] | None = None) -> int:
    """One integer cell of a metadata file; a malformed one names the file, the line and the column."""
    try:
        number = int(value)  # type: ignore[arg-type] - None (a short row) fails here too
    except (TypeError, ValueError):
        raise ValueError(f"{path}, line {line}, column {column!r}: expected an integer, got {value!r}") from None
    if allowed is not None and number not in allowed:
        raise ValueError(f"{path}, line {line}, column {column!r}: expected one of {list(allowed)}, got {number}")
    return number


def _subsample(count: int, n: int | None, seed: int, split: str) -> np.ndarray:
    if n is None:
        return np.arange(count)
    _check_subset_size(n, count)
    return np.sort(np.random.default_rng([seed, SPLITS.index(split)]).choice(count, size=n, replace=False))


def _read_waterbirds_metadata(path: Path) -> list[dict]:
    """The rows of Waterbirds' metadata.csv as {"img_filename": str, "y", "split", "place": int}, each checked."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"img_filename", "y", "split", "place"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the columns {sorted(missing)} (its header is {reader.fieldnames})")
        rows = []
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():  # more cells than the header names, or fewer
                raise ValueError(f"{path}, line {line}: expected {len(reader.fieldnames)} comma-separated cells "
                                 f"({', '.join(reader.fieldnames)}), got a row of another length")
            if not row["img_filename"].strip():
                raise ValueError(f"{path}, line {line}, column 'img_filename': empty")
            rows.append({
                "img_filename": row["img_filename"],
                "y": _int_field(path, line, "y", row["y"], (0, 1)),
                "split": _int_field(path, line, "split", row["split"], (0, 1, 2)),
                "place": _int_field(path, line, "place", row["place"], (0, 1)),
            })
    return rows


def waterbirds(root: str | Path | None = None, split: str = "train", *, image_size: int = 224, n: int | None = None, seed: int = 0) -> GroupedData:
    """Waterbirds (Sagawa et al. 2020) read from its published layout: metadata.csv (img_filename, y, split, place)
    beside the image folders, as in the original archive and in WILDS' waterbirds_v1.0.

    Args:
        root: the folder holding metadata.csv, or one holding waterbird_complete95_forest2water2/ or waterbirds_v1.0/;
            None searches the data folders (KDTEACH_DATA, the checkout's data/, ../shared/data).
        split: "train", "val" or "test" (metadata split 0, 1, 2).
        image_size: side of the square images (resize to 256/224 of it, then centre crop).
        n: a seeded random subset of this many images (None: all).
        seed: seed of the subset.

    Returns:
        GroupedData (ImageNet normalisation), groups 2 * y + place: landbird on land, landbird on water,
        waterbird on land, waterbird on water.
    """
    index = _check_split(split)
    folder = _find_waterbirds(root)
    metadata = folder / "metadata.csv"
    rows = [row for row in _read_waterbirds_metadata(metadata) if row["split"] == index]
    if not rows:
        raise ValueError(f"{metadata} lists no image for split {split!r} (split column = {index})")
    rows = [rows[i] for i in _subsample(len(rows), n, seed, split)]
    labels = torch.tensor([row["y"] for row in rows], dtype=torch.int64)
    places = torch.tensor([row["place"] for row in rows], dtype=torch.int64)
    paths = [folder / row["img_filename"] for row in rows]
    _missing_images(paths, metadata, "Waterbirds: " + _WATERBIRDS_HELP.format(data=runtime.data_dir()))
    class_names, attribute_names = ["landbird", "waterbird"], ["on land", "on water"]
    return GroupedData(
        images=_load_images(paths, image_size, crop_to_square=False),
        labels=labels,
        spurious=places,
        groups=group_ids(labels, places),
        num_classes=2,
        num_groups=4,
        group_names=_binary_group_names(class_names, attribute_names),
        name=f"waterbirds/{split}",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=class_names,
        attribute_names=attribute_names,
    )


def _find_celeba(root: str | Path | None) -> Path:
    needed = ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba")
    for base in _candidate_roots(root):
        for folder in (base / "celeba", base):
            if all((folder / name).exists() for name in needed):
                return folder
    searched = ", ".join(str(p) for p in _candidate_roots(root)) or "(no data folder exists yet)"
    raise FileNotFoundError(f"CelebA not found: no celeba/ folder with {', '.join(needed)} in {searched}. " + _CELEBA_HELP.format(data=runtime.data_dir()))


def _read_celeba_table(path: Path, header: bool) -> tuple[list[str], list[str], np.ndarray]:
    """A whitespace-separated CelebA list (torchvision's format): image name, then integer columns.

    list_attr_celeba.txt (header=True) starts with a line holding the row count and a line of attribute names;
    list_eval_partition.txt (header=False) has one "name partition" row per image. A malformed row names the file,
    the line and the column; fewer rows than the count line declares is a truncated file.

    Returns:
        (column names, image names, (rows, columns) int64 values).
    """
    with open(path) as f:
        lines = [(number, line.split()) for number, line in enumerate(f, start=1) if line.strip()]
    if header:
        if len(lines) < 2 or len(lines[0][1]) != 1:
            raise ValueError(f"{path}: expected a line with the number of images, then a line of attribute names")
        declared = _int_field(path, lines[0][0], "number of images", lines[0][1][0])
        columns, body = lines[1][1], lines[2:]
        if len(body) != declared:
            raise ValueError(f"{path} declares {declared} images on line {lines[0][0]} but holds {len(body)} rows: "
                             "the file is truncated or edited; download it again")
    else:
        columns, body = ["partition"], lines
    values = np.empty((len(body), len(columns)), dtype=np.int64)
    for row, (number, cells) in enumerate(body):
        if len(cells) != 1 + len(columns):
            raise ValueError(f"{path}, line {number}: expected an image name and {len(columns)} values, got {len(cells)} cells")
        for column, (name, cell) in enumerate(zip(columns, cells[1:])):
            values[row, column] = _int_field(path, number, name, cell, (0, 1, 2) if not header else None)
    return columns, [cells[0] for _, cells in body], values


def celeba(
    root: str | Path | None = None,
    split: str = "train",
    *,
    image_size: int = 64,
    n: int | None = None,
    seed: int = 0,
    target: str = "Blond_Hair",
    attribute: str = "Male",
) -> GroupedData:
    """CelebA read from torchvision's layout (celeba/img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt).

    The usual group-robustness task (Sagawa et al. 2020): label = blond hair, spurious attribute = male; the
    smallest training group is blond men.

    Args:
        root: the folder holding celeba/ (torchvision's root); None searches the data folders.
        split: "train", "val" or "test" (partition 0, 1, 2).
        image_size: side of the square images (centre square crop, then resize); 64 keeps all 162k training
            images at 2 GB.
        n: a seeded random subset of this many images (None: all).
        seed: seed of the subset.
        target: the attribute used as the label.
        attribute: the attribute used as the spurious attribute.

    Returns:
        GroupedData (ImageNet normalisation), groups 2 * target + attribute.
    """
    index = _check_split(split)
    folder = _find_celeba(root)
    columns, names, values = _read_celeba_table(folder / "list_attr_celeba.txt", header=True)
    for arg, value in (("target", target), ("attribute", attribute)):
        if value not in columns:
            raise ValueError(f"{arg} must be one of CelebA's attributes {columns}, got {value!r}")
    attribute_file, partition_file = folder / "list_attr_celeba.txt", folder / "list_eval_partition.txt"
    _, partition_names, partition = _read_celeba_table(partition_file, header=False)
    split_of = dict(zip(partition_names, partition[:, 0]))
    unlisted = [name for name in names if name not in split_of]
    if unlisted:  # these would silently belong to no split: a mix of two CelebA releases, or a cut file
        raise ValueError(f"{len(unlisted)} of the {len(names)} images in {attribute_file} are missing from {partition_file} "
                         f"(e.g. {unlisted[0]}), so they belong to no split: get both files from the same CelebA release")
    rows = np.array([i for i, name in enumerate(names) if split_of[name] == index], dtype=np.int64)
    if not len(rows):
        raise ValueError(f"{partition_file} puts no image in split {split!r} (partition {index})")
    rows = rows[_subsample(len(rows), n, seed, split)]
    labels = torch.from_numpy((values[rows, columns.index(target)] > 0).astype(np.int64))
    spurious = torch.from_numpy((values[rows, columns.index(attribute)] > 0).astype(np.int64))
    paths = [folder / "img_align_celeba" / names[i] for i in rows]
    _missing_images(paths, attribute_file, "CelebA: " + _CELEBA_HELP.format(data=runtime.data_dir()))
    class_names = [f"not {target}", target]
    attribute_names = [f"not {attribute}", attribute]
    return GroupedData(
        images=_load_images(paths, image_size, crop_to_square=True),
        labels=labels,
        spurious=spurious,
        groups=group_ids(labels, spurious),
        num_classes=2,
        num_groups=4,
        group_names=[f"{c}, {a}" for c in class_names for a in attribute_names],
        name=f"celeba/{split}",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=class_names,
        attribute_names=attribute_names,
    )
