"""The GPU-resident batch iterator and the on-device jitter."""
import pytest
import torch

from kdteach.data import Batches, random_translate, translate_by


def epoch_order(batches):
    return torch.cat([b["index"] for b in batches]).tolist()


def test_same_seed_same_batches_and_every_row_once():
    x = torch.arange(50).float()[:, None]
    a = Batches({"x": x, "y": torch.arange(50)}, 8, shuffle=True, seed=7)
    b = Batches({"x": x, "y": torch.arange(50)}, 8, shuffle=True, seed=7)
    assert epoch_order(a) == epoch_order(b)
    assert sorted(epoch_order(a)) == list(range(50))
    for batch in a:
        assert torch.equal(batch["y"], batch["index"])
        assert torch.equal(batch["x"][:, 0].long(), batch["index"])
    a.set_epoch(1)
    assert epoch_order(a) != epoch_order(b), "each epoch should have its own order"
    c = Batches({"x": x}, 8, shuffle=True, seed=8)
    assert epoch_order(c) != epoch_order(b)


def test_length_and_drop_last():
    x = torch.zeros(50, 1)
    assert len(Batches({"x": x}, 8)) == 7 and sum(len(b["index"]) for b in Batches({"x": x}, 8)) == 50
    assert len(Batches({"x": x}, 8, drop_last=True)) == 6
    assert all(len(b["index"]) == 8 for b in Batches({"x": x}, 8, drop_last=True))


def test_augmentation_is_reproducible_per_epoch():
    x = torch.rand(20, 1, 6, 6)
    a = Batches({"x": x}, 5, shuffle=True, seed=1, augment=translate_by(2))
    b = Batches({"x": x}, 5, shuffle=True, seed=1, augment=translate_by(2))
    for ba, bb in zip(a, b):
        assert torch.equal(ba["x"], bb["x"])


def test_random_translate_moves_a_pixel_by_the_drawn_offset():
    images = torch.zeros(200, 1, 7, 7)
    images[:, 0, 3, 3] = 1.0
    shifted = random_translate(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    positions = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = positions // 7 - 3, positions % 7 - 3
    assert torch.all(shifted.flatten(1).sum(1) == 1.0), "a pixel within range must move, not vanish"
    assert rows.abs().max() == 2 and cols.abs().max() == 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 25, "all 5x5 offsets should occur in 200 draws"


def test_translate_fills_with_zeros_and_zero_shift_is_identity():
    images = torch.ones(50, 2, 5, 5)
    shifted = random_translate(images, 1, torch.Generator().manual_seed(0))
    assert shifted.sum() < images.sum()
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}
    assert random_translate(images, 0, torch.Generator()) is images


def test_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        Batches({"x": torch.zeros(3), "y": torch.zeros(4)}, 2)
    with pytest.raises(ValueError, match="batch_size"):
        Batches({"x": torch.zeros(3)}, 0)
    with pytest.raises(ValueError, match="index"):
        Batches({"index": torch.zeros(3)}, 2)
    with pytest.raises(ValueError, match="images must have shape"):
        random_translate(torch.zeros(3, 4), 1, torch.Generator())
