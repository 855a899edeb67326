"""Grouped datasets: Waterbirds' group proportions, determinism, that waterbirds_like shows the phenomenon,
coloured digits, group-balanced batches, and the real-data loaders on fixtures written in the published layouts."""
import csv
import time

import pytest
import torch
from PIL import Image

from kdteach.data import (
    IMAGENET_MEAN,
    WATERBIRDS_TRAIN_GROUP_COUNTS,
    GroupedData,
    celeba,
    colored_digits,
    waterbirds,
    waterbirds_like,
)
from kdteach.groups import average_accuracy, worst_group_accuracy
from kdteach.models import resnet_cifar
from kdteach.train import fit, predict


def test_waterbirds_like_has_waterbirds_training_groups():
    data = waterbirds_like("train")
    assert data.group_counts().tolist() == list(WATERBIRDS_TRAIN_GROUP_COUNTS) == [3498, 184, 56, 1057]
    assert data.images.shape == (4795, 3, 32, 32) and data.images.dtype == torch.uint8
    assert torch.equal(data.groups, 2 * data.labels + data.spurious)
    assert data.group_names == ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_waterbirds_like_evaluation_backgrounds_are_balanced(split):
    counts = waterbirds_like(split, 1000).group_counts()
    assert abs(counts[0] - counts[1]) <= 1 and abs(counts[2] - counts[3]) <= 1
    assert (counts[2] + counts[3]) / counts.sum() == pytest.approx(1113 / 4795, abs=0.01)  # Waterbirds' class balance


def test_waterbirds_like_is_deterministic_and_splits_differ():
    a, b = waterbirds_like("val", 64, seed=3), waterbirds_like("val", 64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.groups, b.groups)
    assert not torch.equal(a.images, waterbirds_like("val", 64, seed=4).images)
    assert not torch.equal(a.images, waterbirds_like("test", 64, seed=3).images)


def test_waterbirds_like_generates_fast():
    started = time.perf_counter()
    waterbirds_like("train", 10_000)
    assert time.perf_counter() - started < 15  # about a second on a free core; generous for a shared machine


def test_waterbirds_like_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        waterbirds_like("training")
    with pytest.raises(ValueError, match="p_corr"):
        waterbirds_like("train", 100, p_corr=1.2)
    with pytest.raises(ValueError, match="difficulty"):
        waterbirds_like("train", 100, difficulty={"blur": 1.0})


def _erm_scores(p_corr: float) -> tuple[float, float]:
    # A ResNet-8 at width 8 on 2000 images of 16 pixels, 6 epochs of ERM: seconds on a CPU.
    torch.manual_seed(0)
    train = waterbirds_like("train", 2000, image_size=16, p_corr=p_corr)
    test = waterbirds_like("test", 2000, image_size=16)
    model = resnet_cifar(8, 8, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    fit(model, train.batches(32, shuffle=True), epochs=6, optimizer=optimizer, progress=False)
    preds = predict(model, test.batches(500))
    average = average_accuracy(preds, test.labels, test.groups, 4, weighting="train", train_group_counts=train.group_counts())
    return average, worst_group_accuracy(preds, test.labels, test.groups, 4)


@pytest.mark.timeout(300)  # about 20 s of CPU time; the limit only guards against a hang
def test_erm_learns_the_background_although_the_shape_is_learnable(one_thread):
    average, worst = _erm_scores(p_corr=0.95)
    # High average accuracy (the Waterbirds convention), clearly lower worst-group accuracy.
    assert average > 0.9 and worst < average - 0.25, (average, worst)
    # The same network on data where the background says nothing learns the pose for every group: the gap above
    # is the spurious correlation at work, not a label the network cannot learn.
    _, worst_uncorrelated = _erm_scores(p_corr=0.5)
    assert worst_uncorrelated > 0.75 and worst_uncorrelated > worst + 0.3, (worst_uncorrelated, worst)


def test_colored_digits_colour_agrees_with_label_in_training_only(tmp_path):
    # An empty root: MNIST is absent, so scikit-learn's digits stand in (offline).
    train = colored_digits("train", root=tmp_path, p_corr=0.9)
    test = colored_digits("test", root=tmp_path)
    assert "sklearn" in train.name and train.images.shape[1:] == (3, 28, 28)
    assert (train.spurious == train.labels).float().mean().item() == pytest.approx(0.9, abs=0.04)
    assert (test.spurious == test.labels).float().mean().item() == pytest.approx(0.5, abs=0.08)
    assert torch.equal(train.groups, 2 * train.labels + train.spurious) and train.num_groups == 4
    # The colour is the pixel's channel mix: a green digit has no red.
    green = train.images[train.spurious == 1].float()
    assert green[:, 0].sum() < 0.3 * green[:, 1].sum()
    ten = colored_digits("val", 50, root=tmp_path, num_classes=10)
    assert ten.num_groups == 100 and len(ten) == 50 and int(ten.groups.max()) < 100


def test_batches_float_transform_and_group_balanced_sampling():
    data = waterbirds_like("train", 400)
    batch = next(iter(data.batches(16)))
    assert batch["x"].dtype == torch.float32 and 0 <= batch["x"].min() and batch["x"].max() <= 1
    assert set(batch) == {"x", "y", "group", "spurious", "index"}
    seen = torch.zeros(4)
    balanced = data.batches(100, balanced=True, seed=1)
    for epoch in range(5):
        balanced.set_epoch(epoch)
        for batch in balanced:
            assert torch.equal(batch["group"], data.groups[batch["index"]])  # index still names dataset rows
            seen += torch.bincount(batch["group"], minlength=4)
    assert (seen / seen.sum() - 0.25).abs().max() < 0.05  # the 2 waterbirds on land are drawn a quarter of the time
    normalised = GroupedData(**{**data.__dict__, "mean": IMAGENET_MEAN, "std": (0.5, 0.5, 0.5)})
    x = next(iter(normalised.batches(4)))["x"]
    expected = (data.images[:4].float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / 0.5
    torch.testing.assert_close(x, expected)


# --------------------------------------------------------------------------------------------------------------
# Real-data loaders on fixtures in the published layouts
# --------------------------------------------------------------------------------------------------------------
def _write_image(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _waterbirds_fixture(root):
    # The original archive: waterbird_complete95_forest2water2/metadata.csv beside one folder per species.
    folder = root / "waterbird_complete95_forest2water2"
    rows = [  # (img_id, y, split, place)
        (1, 0, 0, 0), (2, 0, 0, 1), (3, 1, 0, 0), (4, 1, 0, 1), (5, 1, 0, 1), (6, 0, 1, 0), (7, 1, 2, 0), (8, 0, 2, 1),
    ]
    folder.mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for img_id, y, split, place in rows:
            name = f"{'001.Albatross' if y else '002.Sparrow'}/bird_{img_id}.jpg"
            writer.writerow([img_id, name, y, split, place, f"/x/place_{img_id}.jpg"])
            _write_image(folder / name, (10 * img_id, 0, 0))
    return folder


def test_waterbirds_loader_reads_the_published_layout(tmp_path):
    _waterbirds_fixture(tmp_path)
    train = waterbirds(tmp_path, "train", image_size=16)
    assert train.labels.tolist() == [0, 0, 1, 1, 1] and train.spurious.tolist() == [0, 1, 0, 1, 1]
    assert train.groups.tolist() == [0, 1, 2, 3, 3] and train.group_counts().tolist() == [1, 1, 1, 2]
    assert train.images.shape == (5, 3, 16, 16) and train.mean == IMAGENET_MEAN
    assert abs(int(train.images[2, 0, 8, 8]) - 30) <= 3  # image 3's red value survived decoding, resize and crop
    test = waterbirds(tmp_path / "waterbird_complete95_forest2water2", "test", image_size=8)
    assert test.groups.tolist() == [2, 1]
    assert len(waterbirds(tmp_path, "train", image_size=8, n=3)) == 3


def test_waterbirds_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)metadata.csv.*wilds.*KDTEACH_DATA"):
        waterbirds(tmp_path, "train")


def _celeba_fixture(root):
    # torchvision's layout: root/celeba/{list_attr_celeba.txt, list_eval_partition.txt, img_align_celeba/}.
    folder = root / "celeba"
    attributes = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]
    table = [  # name, blond, male, partition
        ("000001.jpg", 1, -1, 0), ("000002.jpg", 1, 1, 0), ("000003.jpg", -1, 1, 0), ("000004.jpg", -1, -1, 1), ("000005.jpg", 1, 1, 2),
    ]
    folder.mkdir(parents=True)
    lines = [str(len(table)), " ".join(attributes)]
    lines += [f"{name}  -1  {blond:2d} {male:2d}  1" for name, blond, male, _ in table]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{name} {part}\n" for name, *_, part in table))
    for i, (name, *_) in enumerate(table):
        _write_image(folder / "img_align_celeba" / name, (0, 40 * i, 0), size=(178, 218))


def test_celeba_loader_reads_torchvisions_layout(tmp_path):
    _celeba_fixture(tmp_path)
    train = celeba(tmp_path, "train", image_size=8)
    assert train.labels.tolist() == [1, 1, 0] and train.spurious.tolist() == [0, 1, 1]
    assert train.groups.tolist() == [2, 3, 1] and train.images.shape == (3, 3, 8, 8)
    assert abs(int(train.images[1, 1, 4, 4]) - 40) <= 3
    assert celeba(tmp_path, "test", image_size=8).groups.tolist() == [3]
    with pytest.raises(ValueError, match="target"):
        celeba(tmp_path, "train", target="Blue_Hair")
    with pytest.raises(FileNotFoundError, match="(?s)celeba.*list_attr_celeba.txt.*KDTEACH_DATA"):
        celeba(tmp_path / "elsewhere", "train")


def test_group_grid_has_a_row_per_group_and_tolerates_small_groups():
    import matplotlib.pyplot as plt

    from kdteach.plots import plot_group_grid

    data = waterbirds_like("train", 60)  # the smallest group has fewer images than a row holds
    fig = plot_group_grid(data, per_group=6)
    rows = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel().split("\n")[0] for ax in rows] == data.group_names
    assert len(fig.axes) == 4 * 6
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Real-data loaders on broken copies: every problem names its file (and row and column)
# --------------------------------------------------------------------------------------------------------------
def _rewrite_line(path, line_number, text):
    lines = path.read_text().splitlines()
    lines[line_number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_celeba_images_missing_from_the_partition_list_are_an_error(tmp_path):
    _celeba_fixture(tmp_path)
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text("".join(line + "\n" for line in partition.read_text().splitlines()[:2]))  # drops 3, 4, 5
    with pytest.raises(ValueError, match=r"(?s)3 of the 5 images in .*list_attr_celeba.txt are missing from .*list_eval_partition.txt.*000003.jpg"):
        celeba(tmp_path, "train", image_size=8)


def test_celeba_split_without_images_is_an_error(tmp_path):
    _celeba_fixture(tmp_path)
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace(" 2\n", " 0\n"))  # nothing left in the test partition
    with pytest.raises(ValueError, match=r"list_eval_partition.txt puts no image in split 'test' \(partition 2\)"):
        celeba(tmp_path, "test", image_size=8)


@pytest.mark.parametrize("file, line, text, message", [
    ("list_attr_celeba.txt", 4, "000002.jpg  -1  1 x  1", r"list_attr_celeba.txt, line 4, column 'Male': expected an integer, got 'x'"),
    ("list_attr_celeba.txt", 5, "000003.jpg  -1  -1", r"list_attr_celeba.txt, line 5: expected an image name and 4 values, got 3 cells"),
    ("list_attr_celeba.txt", 1, "7", r"list_attr_celeba.txt declares 7 images on line 1 but holds 5 rows"),
    ("list_eval_partition.txt", 2, "000002.jpg 3", r"list_eval_partition.txt, line 2, column 'partition': expected one of \[0, 1, 2\], got 3"),
])
def test_celeba_malformed_rows_name_file_line_and_column(tmp_path, file, line, text, message):
    _celeba_fixture(tmp_path)
    _rewrite_line(tmp_path / "celeba" / file, line, text)
    with pytest.raises(ValueError, match=message):
        celeba(tmp_path, "train", image_size=8)


def test_a_truncated_or_missing_image_names_its_file(tmp_path):
    _celeba_fixture(tmp_path)
    image = tmp_path / "celeba" / "img_align_celeba" / "000002.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"000002.jpg: cannot decode this image .*truncated or corrupt"):
        celeba(tmp_path, "train", image_size=8)
    image.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"000002.jpg: cannot decode this image"):
        celeba(tmp_path, "train", image_size=8)
    image.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 images that .*list_attr_celeba.txt lists for this split are missing, e.g. .*000002.jpg"):
        celeba(tmp_path, "train", image_size=8)
    assert len(celeba(tmp_path, "val", image_size=8)) == 1  # the other splits still load


@pytest.mark.parametrize("line, text, message", [
    (3, "2,002.Sparrow/bird_2.jpg,zero,0,1,/x/place_2.jpg", r"metadata.csv, line 3, column 'y': expected an integer, got 'zero'"),
    (4, "3,001.Albatross/bird_3.jpg,1,0,7,/x/place_3.jpg", r"metadata.csv, line 4, column 'place': expected one of \[0, 1\], got 7"),
    (5, "4,001.Albatross/bird_4.jpg,1,0", r"metadata.csv, line 5: expected 6 comma-separated cells"),
    (2, "1,,0,0,0,/x/place_1.jpg", r"metadata.csv, line 2, column 'img_filename': empty"),
    (1, "img_id,img_filename,label,split,place,place_filename", r"metadata.csv lacks the columns \['y'\]"),
])
def test_waterbirds_malformed_metadata_names_file_line_and_column(tmp_path, line, text, message):
    folder = _waterbirds_fixture(tmp_path)
    _rewrite_line(folder / "metadata.csv", line, text)
    with pytest.raises(ValueError, match=message):
        waterbirds(tmp_path, "train", image_size=8)


def test_waterbirds_empty_split_and_missing_images_are_errors(tmp_path):
    folder = _waterbirds_fixture(tmp_path)
    _rewrite_line(folder / "metadata.csv", 7, "6,002.Sparrow/bird_6.jpg,0,0,0,/x/place_6.jpg")  # the one val row
    with pytest.raises(ValueError, match=r"metadata.csv lists no image for split 'val' \(split column = 1\)"):
        waterbirds(tmp_path, "val", image_size=8)
    (folder / "001.Albatross" / "bird_7.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of the 2 images that .*metadata.csv lists for this split are missing, e.g. .*bird_7.jpg.*wilds"):
        waterbirds(tmp_path, "test", image_size=8)
