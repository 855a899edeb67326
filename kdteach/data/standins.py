"""The generated grouped image stand-ins, made offline in a second:

- waterbirds_like: a foreground object whose SHAPE decides the label, on a BACKGROUND (colour and texture) that
  agrees with the label 95% of the time in training and half the time in validation and test, with Waterbirds'
  training group sizes (3498 / 184 / 56 / 1057). The background is the easy cue, the shape the harder one.
- colored_digits: MNIST (or scikit-learn's digits) coloured with a colour that agrees with the label.

Both return GroupedData (kdteach.data.grouped_data), like the real loaders in kdteach.data.real_images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from kdteach import checks
from kdteach.data.grouped_data import SPLITS, GroupedData, binary_group_names, check_split, check_subset_size
from kdteach.data.mnist import load_digits_standin, load_mnist
from kdteach.groups import group_ids

__all__ = ["WATERBIRDS_TRAIN_GROUP_COUNTS", "WATERBIRDS_LIKE_DIFFICULTY", "waterbirds_like", "colored_digits"]


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
    check_split(split)
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
        group_names=binary_group_names(class_names, attribute_names),
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
    check_split(split)
    if num_classes not in (2, 10):
        raise ValueError(f"num_classes must be 2 or 10, got {num_classes!r}")
    checks.check_number("p_corr", p_corr, low=1.0 / num_classes, high=1.0)
    images, digits, source = _digits_split(split, root)
    generator = _split_generator(seed, split, salt=2)
    if n is not None:
        check_subset_size(n, len(digits))
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
        group_names=binary_group_names(class_names, attribute_names),
        name=f"colored_digits ({source})/{split}",
        class_names=class_names,
        attribute_names=attribute_names,
    )
