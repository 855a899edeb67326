"""How close is kdteach's fit() to the hardware? A distillation epoch timed three ways on one GPU.

1. fit(): data resident on the GPU, teacher logits cached once, bf16 autocast, channels_last, no host sync per step;
2. a tutorial-style loop: a DataLoader over CPU tensors, fp32, the teacher run in every step, loss.item() per step;
3. the compute limit: the student's forward + backward + optimiser step alone, on one fixed batch already on the GPU.

Teacher ResNet-50, student ResNet-18 (torchvision's, adapted by kdteach), CIFAR-size synthetic images.
Usage: python benchmarks/kd_throughput.py [--images 50000] [--batch-size 512] [--compile] [--out results.json]
On a machine without CUDA it says so and exits 0 (unless --allow-cpu, which the tests use with tiny sizes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import kdteach as kd


def synthetic_images(n: int, num_classes: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 CIFAR-size images and labels (the benchmark measures speed, not accuracy)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return images.to(device), labels.to(device)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1], on the batch's device."""
    return x.float().div_(255)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fit(teacher, student_fn, images, labels, *, batch_size, device, compile) -> dict[str, float]:
    """One epoch of kd.train.fit with cached teacher logits (after a warm-up epoch); caching timed separately."""
    train = kd.data.Batches({"x": images, "y": labels}, batch_size, shuffle=True, transform=to_float, drop_last=True)
    sync(device)
    started = time.perf_counter()
    logits = kd.distill.cache_teacher_logits(teacher, train)
    sync(device)
    cache_seconds = time.perf_counter() - started
    train = kd.data.Batches({"x": images, "y": labels, "teacher_logits": logits}, batch_size, shuffle=True, transform=to_float, drop_last=True)
    student = student_fn()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    loss = kd.distill.KDLoss(temperature=4.0, soft_weight=0.9)
    kwargs = dict(optimizer=optimizer, loss_fn=loss, device=device, channels_last=True, compile=compile, progress=False)
    kd.train.fit(student, train, epochs=1, **kwargs)  # warm-up: cuDNN autotuning, compilation
    sync(device)
    started = time.perf_counter()
    kd.train.fit(student, train, epochs=1, **kwargs)
    sync(device)
    seconds = time.perf_counter() - started
    n = len(train) * batch_size
    return {"images_per_s": n / seconds, "epoch_seconds": seconds, "teacher_cache_seconds": cache_seconds}


def time_tutorial_loop(teacher, student_fn, images, labels, *, batch_size, device, max_steps=None) -> dict[str, float]:
    """One epoch of the loop most tutorials show: DataLoader, fp32, teacher every step, .item() every step."""
    dataset = torch.utils.data.TensorDataset(images.cpu(), labels.cpu())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=2)
    student = student_fn().to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    teacher.eval()
    temperature, soft_weight = 4.0, 0.9
    sync(device)
    started, steps, seen = time.perf_counter(), 0, 0
    for x, y in loader:
        x, y = to_float(x.to(device)), y.to(device)
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        soft = F.kl_div(F.log_softmax(s_logits / temperature, 1), F.softmax(t_logits / temperature, 1), reduction="batchmean")
        loss = soft_weight * temperature**2 * soft + (1 - soft_weight) * F.cross_entropy(s_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _ = loss.item()  # the per-step logging most tutorials do: a host synchronisation every step
        steps, seen = steps + 1, seen + len(y)
        if max_steps is not None and steps >= max_steps:
            break
    sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": seen / seconds, "epoch_seconds": seconds * len(loader) / steps}


def time_compute_limit(student_fn, images, labels, *, batch_size, steps, device) -> dict[str, float]:
    """The student's forward + backward + step alone on one fixed batch, same precision and layout as fit()."""
    student = student_fn().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    x = to_float(images[:batch_size]).contiguous(memory_format=torch.channels_last)
    y = labels[:batch_size]
    t_logits = torch.randn(batch_size, int(labels.max()) + 1, device=device)

    def step() -> None:
        with kd.distill.autocast_context(device):
            loss = kd.distill.kd_loss(student(x), t_logits, y, temperature=4.0, soft_weight=0.9)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - started
    return {"images_per_s": steps * batch_size / seconds}


def main(argv: list[str] | None = None) -> int:
    """Runs the three timings and prints images/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student inside fit()")
    parser.add_argument("--tutorial-steps", type=int, default=None, help="cap the tutorial loop (it is slow)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on a CPU anyway (tiny sizes, for tests)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("kd_throughput: this benchmark measures GPU training and needs a CUDA GPU; none found, nothing to do.")
        return 0
    device = kd.runtime.setup(0, verbose=False) if torch.cuda.is_available() else torch.device("cpu")
    images, labels = synthetic_images(args.images, args.classes, device)
    teacher = kd.models.resnet50(args.classes).to(device).to(memory_format=torch.channels_last)
    student_fn = lambda: kd.models.resnet18(args.classes)  # noqa: E731 - a fresh student for each timing

    fit = time_fit(teacher, student_fn, images, labels, batch_size=args.batch_size, device=device, compile=args.compile)
    tutorial = time_tutorial_loop(teacher, student_fn, images, labels, batch_size=args.batch_size, device=device, max_steps=args.tutorial_steps)
    limit = time_compute_limit(student_fn, images, labels, batch_size=args.batch_size, steps=max(args.images // args.batch_size, 1), device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {
        "device": name, "torch": torch.__version__, "images": args.images, "batch_size": args.batch_size, "compile": args.compile,
        "fit_images_per_s": fit["images_per_s"], "teacher_cache_seconds": fit["teacher_cache_seconds"],
        "tutorial_images_per_s": tutorial["images_per_s"], "limit_images_per_s": limit["images_per_s"],
        "fit_over_limit": fit["images_per_s"] / limit["images_per_s"], "fit_over_tutorial": fit["images_per_s"] / tutorial["images_per_s"],
    }
    print(f"device: {name}, torch {torch.__version__}, {args.images} images of 3x32x32, batch {args.batch_size}, compile={args.compile}")
    print(f"fit() with cached teacher logits: {fit['images_per_s']:>10.0f} images/s  (caching the teacher: {fit['teacher_cache_seconds']:.1f} s, once)")
    print(f"tutorial loop (fp32, teacher per step): {tutorial['images_per_s']:>10.0f} images/s")
    print(f"compute limit (student fwd+bwd alone):  {limit['images_per_s']:>10.0f} images/s")
    print(f"fit / limit = {results['fit_over_limit']:.2f}   fit / tutorial = {results['fit_over_tutorial']:.1f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
