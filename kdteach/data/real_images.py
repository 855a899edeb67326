"""Real grouped image datasets read from their published on-disk layouts: waterbirds() (Sagawa et al. 2020's
metadata.csv beside the image folders, as in the original archive and WILDS) and celeba() (torchvision's layout).

A missing dataset is a FileNotFoundError that says where to put the files and how to get them; a malformed metadata
file names the file, line and column; a corrupt image names the image. Both return GroupedData
(kdteach.data.grouped_data) with ImageNet normalisation.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kdteach import runtime
from kdteach.data.grouped_data import IMAGENET_MEAN, IMAGENET_STD, SPLITS, GroupedData, binary_group_names, check_split, check_subset_size
from kdteach.groups import group_ids

__all__ = ["WATERBIRDS_FOLDERS", "waterbirds", "celeba"]

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
    check_subset_size(n, count)
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
    index = check_split(split)
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
        group_names=binary_group_names(class_names, attribute_names),
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
    index = check_split(split)
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
