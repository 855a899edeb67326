"""Argument checks, in one place: every public function of the package names the argument it refuses.

Each check raises ValueError with the argument's name and what it got, so a user sees "labels must be in [0, 10),
got values in [0, 12]" instead of a CUDA device-side assert or a traceback from inside torch.

Checks that read tensor values (ranges, finiteness) wait for the device when the tensor lives on a GPU. Functions
called inside a training step therefore run them only for CPU tensors (see `reads_values`); the step itself never
synchronises with the host.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch


def reads_values(tensor: torch.Tensor, check_values: bool | None = None) -> bool:
    """Whether a value check should read tensor: as asked, or by default only for tensors not on a GPU.

    Args:
        tensor: the tensor a check would read.
        check_values: True or False to decide explicitly; None: read only when tensor is not on CUDA.

    Returns:
        True when the values may be read without a host synchronisation in a GPU step.
    """
    if check_values is not None:
        return bool(check_values)
    return tensor.device.type != "cuda"


def _shape_or_type(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Refuses anything but an integer (a float such as 2.5, or 2.0, and a bool are refused too).

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        minimum: the smallest value allowed, if any.

    Returns:
        value as an int.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """Refuses anything but a finite real number inside [low, high] (open ends where asked).

    Args:
        name: the argument's name, for the message.
        value: what the caller passed.
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound itself.

    Returns:
        value as a float.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return v


def check_temperature(temperature: Any) -> float:
    """A distillation temperature: a finite number > 0 (T = inf or NaN is refused)."""
    return check_number("temperature", temperature, low=0.0, low_open=True)


def check_alpha(alpha: Any) -> float:
    """A miscoverage level in the open interval (0, 1)."""
    return check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)


def check_tensor(name: str, value: Any, *, dims: tuple[int, ...], floating: bool | None = None,
                 what: str | None = None) -> None:
    """Refuses a non-tensor, a tensor of another rank, or (where asked) of the wrong kind of dtype.

    Args:
        name: the argument's name.
        value: what the caller passed.
        dims: allowed numbers of dimensions.
        floating: True: must be floating point; False: must hold integers (not bool); None: either.
        what: the shape in words for the message, e.g. "(N, classes)".
    """
    shape_words = what or " or ".join(f"{d}-D" for d in dims)
    if not isinstance(value, torch.Tensor) or value.dim() not in dims:
        raise ValueError(f"{name} must be a tensor of shape {shape_words}, got {_shape_or_type(value)}")
    if floating is True and not value.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name} must hold integers, got {value.dtype}")


def check_not_empty(name: str, value: torch.Tensor, dim: int = 0) -> None:
    """Refuses a tensor with no rows (an empty batch or an empty evaluation set)."""
    if value.shape[dim] == 0:
        raise ValueError(f"{name} is empty (0 rows): nothing to compute on")


def check_finite(name: str, value: torch.Tensor, *, check_values: bool | None = None) -> None:
    """Refuses NaN or infinite entries (read only where `reads_values` allows: never inside a GPU step)."""
    if reads_values(value, check_values) and value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf)")


def check_logits(name: str, logits: Any, *, min_classes: int = 1, check_values: bool | None = None) -> None:
    """Refuses anything but a floating-point (N, classes) tensor with N >= 1 and finite values.

    Args:
        name: the argument's name.
        logits: what the caller passed.
        min_classes: the fewest classes allowed.
        check_values: read the values for NaN/inf (None: only off the GPU).
    """
    check_tensor(name, logits, dims=(2,), floating=True, what="(N, classes)")
    check_not_empty(name, logits)
    if logits.shape[1] < min_classes:
        raise ValueError(f"{name} must have at least {min_classes} classes, got {logits.shape[1]}")
    check_finite(name, logits, check_values=check_values)


def check_labels(name: str, labels: Any, n: int | None, num_classes: int | None, *,
                 check_values: bool | None = None) -> None:
    """Refuses labels that are not integer indices of shape (n,) inside [0, num_classes).

    The one label-range check of the package: losses, metrics, conformal functions, group ids and fit()'s
    first-batch check all call it.

    Args:
        name: the argument's name ("labels", "y", "group_ids", ...).
        labels: what the caller passed.
        n: the expected number of rows (None: any).
        num_classes: the exclusive upper bound of the values (None: no range check).
        check_values: read the values for the range check (None: only off the GPU).
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or (n is not None and labels.shape[0] != n):
        want = f"({n},)" if n is not None else "(N,)"
        raise ValueError(f"{name} must have shape {want}, got {_shape_or_type(labels)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got {labels.dtype}")
    if num_classes is not None and labels.numel() and reads_values(labels, check_values):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} must be in [0, {num_classes}), got values in [{low}, {high}]")


def check_same_shape(name: str, value: Any, reference_name: str, reference: torch.Tensor, *, what: str = "") -> None:
    """Refuses a tensor whose shape differs from reference's (a teacher's logits with another class count, ...).

    Args:
        name: the argument checked.
        value: what the caller passed.
        reference_name: the argument it must match.
        reference: that argument's tensor (already checked).
        what: the shape in words for the message, e.g. "(N, classes)".
    """
    if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
        shape = f"{what} = {tuple(reference.shape)}" if what else f"{tuple(reference.shape)}"
        raise ValueError(f"{name} must have the shape of {reference_name}, {shape}, got {_shape_or_type(value)}")


def check_values_in(name: str, value: torch.Tensor, low: float, high: float, *, meaning: str = "") -> None:
    """Refuses a tensor with a NaN or a value outside the closed interval [low, high] (reads the values).

    Args:
        name: the argument's name.
        value: a floating or integer tensor.
        low, high: the bounds.
        meaning: what the values are, for the message (e.g. "a softmax confidence").
    """
    words = f" ({meaning})" if meaning else ""
    v = value.detach().double()
    nan = torch.isnan(v)
    seen = v[~nan]
    if bool(nan.any()) or (seen.numel() and (float(seen.min()) < low or float(seen.max()) > high)):
        low_seen, high_seen = (float(seen.min()), float(seen.max())) if seen.numel() else (math.nan, math.nan)
        got = "no number" if not seen.numel() else f"{low_seen:g}" if low_seen == high_seen else f"values in [{low_seen:g}, {high_seen:g}]"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}]{words}, got {got}{' and NaN' if bool(nan.any()) else ''}")


def check_weight_source(name: str, value: Any) -> None:
    """Refuses an instance-weight source without weights_for(index) (DeDiERReweighting, debias.InstanceWeights)."""
    if not callable(getattr(value, "weights_for", None)):
        raise ValueError(f"{name} must have a weights_for(index) method, got {type(value).__name__}")
