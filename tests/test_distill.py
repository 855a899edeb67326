"""kd_loss and friends against independent numpy computations, and the frozen teacher's guarantees."""
import numpy as np
import pytest
import torch
from torch import nn

import kdteach as kd
from kdteach.distill import KDLoss, cache_teacher_logits, kd_loss, kd_loss_per_example, softmax_t


def np_softmax(z, t):
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def np_kd_loss(s, t_logits, y, temperature, soft_weight, weights=None):
    p, q = np_softmax(t_logits, temperature), np_softmax(s, temperature)
    soft = temperature**2 * (p * (np.log(p) - np.log(q))).sum(axis=1)
    hard = -np.log(np_softmax(s, 1.0)[np.arange(len(y)), y])
    per = soft_weight * soft + (1 - soft_weight) * hard
    if weights is not None:
        per = per * weights
    return per.mean()


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0, 20.0])
@pytest.mark.parametrize("soft_weight", [0.0, 0.3, 1.0])
def test_kd_loss_matches_numpy(temperature, soft_weight):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 5)) * 3
    y = rng.integers(0, 5, size=7)
    w = rng.uniform(0, 3, size=7)
    for weights in (None, w):
        got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=temperature, soft_weight=soft_weight,
                      weights=None if weights is None else torch.tensor(weights))
        assert got.item() == pytest.approx(np_kd_loss(s, t, y, temperature, soft_weight, weights), rel=1e-5, abs=1e-6)


def test_soft_term_divides_by_batch_not_by_classes():
    # reduction="mean" in F.kl_div divides by N*C; the loss must be the per-example sum over classes, averaged over N.
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    one = kd_loss(s[:1], t[:1], temperature=1.0, soft_weight=1.0)
    p, q = torch.softmax(t[:1], 1), torch.softmax(s[:1], 1)
    assert one.item() == pytest.approx((p * (p.log() - q.log())).sum().item(), rel=1e-5)


def test_temperature_squared_only_on_soft_term():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    hard_only = [kd_loss(s, t, y, temperature=T, soft_weight=0.0).item() for T in (1.0, 5.0, 50.0)]
    assert hard_only == pytest.approx([torch.nn.functional.cross_entropy(s, y).item()] * 3, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 20.0])
def test_soft_gradient_is_T_times_q_minus_p_per_example(temperature):
    s = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 10, dtype=torch.float64)
    kd_loss_per_example(s, t, temperature=temperature, soft_weight=1.0).sum().backward()
    expected = temperature * (torch.softmax(s.detach() / temperature, 1) - torch.softmax(t / temperature, 1))
    torch.testing.assert_close(s.grad, expected.float().double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd.distill.soft_target_gradient(s.detach(), t, temperature).double(), expected, rtol=1e-5, atol=1e-6)


def test_high_temperature_limit_is_logit_matching():
    rows = kd.distill.logit_matching_gap([1, 2, 5, 20, 100])
    gaps = [r["relative gap"] for r in rows]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.03 and gaps[0] > 0.3
    # The leading correction is O(1/T): from T=20 to T=100 the gap shrinks by about 5x.
    assert 4.5 < gaps[3] / gaps[4] < 5.5


def test_teacher_logits_are_detached():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    kd_loss(s, t, temperature=2.0, soft_weight=1.0).backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(temperature=0.0, soft_weight=0.5), "temperature"),
        (dict(temperature=-1.0, soft_weight=0.5), "temperature"),
        (dict(temperature=2.0, soft_weight=1.5), "soft_weight"),
        (dict(temperature=2.0, soft_weight=-0.1), "soft_weight"),
    ],
)
def test_bad_scalars_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        kd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.long), **kwargs)


def test_bad_tensors_raise_naming_the_argument():
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="teacher_logits has 5 classes"):
        kd_loss(s, torch.randn(3, 5), y, temperature=2.0, soft_weight=0.5)
    with pytest.raises(ValueError, match="teacher_logits has 2 rows"):
        kd_loss(s, torch.randn(2, 4), y, temperature=2.0, soft_weight=0.5)
    with pytest.raises(ValueError, match="student_logits"):
        kd_loss(torch.randn(3), t, y, temperature=2.0, soft_weight=0.5)
    with pytest.raises(ValueError, match="labels must be in"):
        kd_loss(s, t, torch.tensor([0, 1, 4]), temperature=2.0, soft_weight=0.5)
    with pytest.raises(ValueError, match="labels must be in"):
        kd_loss(s, t, torch.tensor([0, -1, 2]), temperature=2.0, soft_weight=0.5)
    with pytest.raises(ValueError, match="labels is None"):
        kd_loss(s, t, None, temperature=2.0, soft_weight=0.5)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        kd_loss(s, t, y, temperature=2.0, soft_weight=0.5, weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must be finite"):
        kd_loss(s, t, y, temperature=2.0, soft_weight=0.5, weights=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        kd_loss(s, t, y, temperature=2.0, soft_weight=0.5, weights=torch.ones(4))
    with pytest.raises(ValueError, match="temperature"):
        softmax_t(s, 0)


def test_softmax_t_flattens_with_temperature():
    z = torch.tensor([[4.0, 1.0, 0.0]])
    cold, warm = softmax_t(z, 0.5), softmax_t(z, 10.0)
    assert cold[0, 0] > softmax_t(z, 1.0)[0, 0] > warm[0, 0] > 1 / 3
    torch.testing.assert_close(softmax_t(z, 1.0), torch.softmax(z, 1))


class ConvTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.body(x)


def test_frozen_teacher_is_unchanged_by_distillation():
    torch.manual_seed(0)
    teacher = ConvTeacher()
    teacher.train()
    teacher(torch.randn(16, 1, 8, 8))  # give BatchNorm non-trivial running statistics
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    data = kd.data.Batches({"x": torch.randn(64, 1, 8, 8), "y": torch.randint(0, 3, (64,))}, 16, shuffle=True)
    loss = KDLoss(temperature=4.0, soft_weight=0.7, teacher=teacher)
    wrapper = nn.ModuleDict({"student": student, "teacher": loss.teacher})
    wrapper.train()  # a training loop calling .train() on everything must not wake the teacher up
    assert not loss.teacher.training and not teacher.training
    kd.train.fit(student, data, epochs=2, optimizer=torch.optim.SGD(student.parameters(), lr=0.1), loss_fn=loss, progress=False)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"teacher state {k} changed")
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # Dropout is off: two forward passes agree.
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(loss.teacher(x), loss.teacher(x))


def test_cache_teacher_logits_matches_forward_and_refuses_augmentation():
    teacher = ConvTeacher().eval()
    x = torch.randn(37, 1, 8, 8)
    cached = cache_teacher_logits(teacher, kd.data.Batches({"x": x}, 8, shuffle=True))
    with torch.no_grad():
        torch.testing.assert_close(cached, teacher(x), rtol=1e-5, atol=1e-5)
    augmented = kd.data.Batches({"x": x}, 8, augment=kd.data.translate_by(2))
    with pytest.raises(ValueError, match="augmented"):
        cache_teacher_logits(teacher, augmented)


def test_kdloss_reads_cached_logits_and_weights():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    w = torch.rand(6)
    index = torch.tensor([5, 0, 3, 1, 4, 2])  # the batch's rows in the dataset
    batch = {"x": torch.zeros(6, 1), "y": y, "teacher_logits": t, "index": index}
    source = type("Weights", (), {"weights_for": lambda self, rows: w[rows]})()  # weights the loss is given, by row
    got = KDLoss(temperature=3.0, soft_weight=0.8, instance_weights=source)(s, batch)
    torch.testing.assert_close(got, kd_loss(s, t, y, temperature=3.0, soft_weight=0.8, weights=w[index]))
    # A "weight" tensor riding in the batch is not a side channel into the loss: it is ignored.
    unweighted = KDLoss(temperature=3.0, soft_weight=0.8)(s, {**batch, "weight": w})
    torch.testing.assert_close(unweighted, kd_loss(s, t, y, temperature=3.0, soft_weight=0.8))
    with pytest.raises(ValueError, match="no teacher"):
        KDLoss(temperature=3.0, soft_weight=0.8)(s, {"x": batch["x"], "y": y})


# Bad inputs of issue 22: each refused with a ValueError naming the argument, before torch's index_add_ sees it.
@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 1, 2, 3]), r"labels must be in \[0, 3\), got values in \[0, 3\]"),  # equal to the class count
    (torch.tensor([0, 1, -1, 2]), r"labels must be in \[0, 3\), got values in \[-1, 2\]"),
    (torch.tensor([0.0, 1.0, 1.0, 2.0]), r"labels must hold integer class indices, got torch.float32"),
    (torch.tensor([0, 1, 2]), r"labels must have shape \(4,\), got \(3,\)"),
])
def test_mean_soft_targets_refuses_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        kd.distill.mean_soft_targets(torch.randn(4, 3), labels, 2.0)


def test_mean_soft_targets_checks_num_classes_and_averages_by_class():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"num_classes must be an integer, got 2.5"):
        kd.distill.mean_soft_targets(logits, torch.tensor([0, 1, 1, 2]), 2.0, num_classes=2.5)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), got values in \[0, 2\]"):
        kd.distill.mean_soft_targets(logits, torch.tensor([0, 1, 1, 2]), 2.0, num_classes=2)
    table = kd.distill.mean_soft_targets(logits, torch.tensor([0, 1, 1, 2]), 2.0)
    probs = torch.softmax(logits / 2.0, dim=1)
    torch.testing.assert_close(table[1], (probs[1] + probs[2]) / 2)


def test_soft_target_gradient_refuses_mismatched_class_counts():
    with pytest.raises(ValueError, match=r"teacher_logits must have the shape of student_logits, \(N, classes\) = \(4, 3\), got \(4, 5\)"):
        kd.distill.soft_target_gradient(torch.randn(4, 3), torch.randn(4, 5), 2.0)
    with pytest.raises(ValueError, match=r"teacher_logits must have the shape of student_logits, \(N, classes\) = \(4, 3\), got \(2, 3\)"):
        kd.distill.soft_target_gradient(torch.randn(4, 3), torch.randn(2, 3), 2.0)
    with pytest.raises(ValueError, match=r"student_logits must be a tensor of shape \(N, classes\), got \(3,\)"):
        kd.distill.soft_target_gradient(torch.randn(3), torch.randn(3), 2.0)
