"""A batch iterator over tensors that already live on the device.

Small datasets (MNIST, the course's stand-ins, CIFAR-size images) fit in GPU memory whole. Keeping them there
removes the DataLoader, its worker processes and the host-to-device copy of every batch: a batch is an index
into tensors that are already where the model is. Shuffling and augmentation are seeded per epoch, so epoch k
looks the same whether a run got there directly or resumed from a checkpoint.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping

import torch

from kdteach.checks import check_int

Batch = dict[str, torch.Tensor]


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shifts each image by its own random offset of up to max_shift pixels, filling with zeros.

    This is the "jitter" Hinton et al. used on MNIST. It runs as one gather on the images' device.

    Args:
        images: (N, C, H, W) float or uint8 images.
        max_shift: largest shift in pixels, in each direction.
        generator: a CPU generator; the offsets are drawn from it, so the result is reproducible.

    Returns:
        Shifted images, same shape, dtype and device.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).to(images.device)
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    rows = torch.arange(h, device=images.device)[None, :] + max_shift - offsets[:, :1]  # (N, H)
    cols = torch.arange(w, device=images.device)[None, :] + max_shift - offsets[:, 1:]  # (N, W)
    batch_index = torch.arange(n, device=images.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return shifted.permute(0, 3, 1, 2).contiguous()


class Batches:
    """Iterates over aligned tensors in minibatches, on the tensors' device.

    Each batch is a dict with the same keys as `tensors` plus "index" (the rows' positions in the dataset), so a
    loss can look up per-example state such as cached teacher logits or instance weights.

    Args:
        tensors: name -> tensor, all with the same first dimension (e.g. {"x": images, "y": labels}).
        batch_size: rows per batch.
        shuffle: reshuffle every epoch (seeded by seed and the epoch number).
        seed: seed of the shuffling and augmentation streams.
        augment: optional function (x, generator) -> x applied to tensors["x"] of each batch.
        drop_last: drop a final incomplete batch.
        transform: optional function x -> x applied to every batch's "x" after augmentation (e.g. uint8 -> float).
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        drop_last: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not tensors:
            raise ValueError("tensors must hold at least one tensor")
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors must all have the same length, got {lengths}")
        if "index" in tensors:
            raise ValueError("'index' is added by Batches and cannot be one of the tensors")
        batch_size = check_int("batch_size", batch_size, minimum=1)
        self.tensors = dict(tensors)
        self.n = next(iter(lengths.values()))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last
        self.transform = transform
        self.epoch = 0
        self.device = next(iter(self.tensors.values())).device

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def set_epoch(self, epoch: int) -> None:
        """Selects the shuffling and augmentation stream of this epoch (fit() calls it)."""
        self.epoch = epoch

    def to(self, device: torch.device | str) -> "Batches":
        """Moves every tensor to device once; returns self."""
        self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        self.device = torch.device(device)
        return self

    def _generator(self) -> torch.Generator:
        # One stream per (seed, epoch): resuming at epoch k reproduces epoch k exactly.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        generator = self._generator()
        if self.shuffle:
            order = torch.randperm(self.n, generator=generator).to(self.device)
        else:
            order = torch.arange(self.n, device=self.device)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, self.n), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = {name: t[index] for name, t in self.tensors.items()}
            batch["index"] = index
            if "x" in batch:
                if self.augment is not None:
                    batch["x"] = self.augment(batch["x"], generator)
                if self.transform is not None:
                    batch["x"] = self.transform(batch["x"])
            yield batch


def translate_by(max_shift: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """An augment function for Batches: random translation by up to max_shift pixels."""

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_translate(x, max_shift, generator)

    augment.max_shift = max_shift  # lets cache_teacher_logits name what it refuses
    return augment
