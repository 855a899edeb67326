"""Checkpoints: a different run never resumes silently, a corrupt file is set aside, a NaN keeps the good file."""
import math

import pytest
import torch

import kdteach as kd
from kdteach.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries
from kdteach.train import cross_entropy_loss, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def run(ckpt, *, epochs=2, rows=32, width=8, lr=0.1, steps=None, loss_fn=cross_entropy_loss, resume=False):
    """A tiny MLP on a few dozen rows; every keyword is one field of the run signature."""
    x, y = toy_data(rows)
    torch.manual_seed(0)
    model = kd.models.MLP((6, width, 2))
    batches = kd.data.Batches({"x": x, "y": y}, 8, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps or epochs * len(batches))
    history = fit(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, loss_fn=loss_fn, checkpoint=ckpt,
                  resume=resume, progress=False)
    return model, history


class ScaledLoss:
    """A loss object (its class is part of the signature, like KDLoss or GroupDROLoss)."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, outputs, batch):
        return self.scale * cross_entropy_loss(outputs, batch)


@pytest.mark.parametrize(
    "change, field, saved, asked",
    [
        ({"epochs": 3}, "epochs", "2", "3"),
        ({"lr": 0.05}, "optimizer.lr", "0.004", "0.002"),  # OneCycleLR starts at max_lr / 25
        ({"width": 16}, "model.hidden.0.weight", r"\[8, 6\]", r"\[16, 6\]"),
        ({"rows": 24}, "train.rows", "32", "24"),
        ({"steps": 9}, "scheduler.total_steps", "8", "9"),
        ({"loss_fn": ScaledLoss()}, "loss", "'kdteach.train.cross_entropy_loss'", "'test_checkpoint.ScaledLoss'"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, change, field, saved, asked):
    ckpt = tmp_path / "run.pt"
    run(ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=rf"checkpoint {ckpt} was written for {field}={saved}\S*, this run asks for {asked}\S*.*delete it or pass a new path"):
        run(ckpt, resume=True, **change)
    assert ckpt.read_bytes() == before  # refused, not overwritten


def test_a_loss_hyperparameter_is_part_of_the_signature(tmp_path):
    ckpt = tmp_path / "run.pt"
    run(ckpt, epochs=1, loss_fn=ScaledLoss(1.0))
    with pytest.raises(ValueError, match=r"loss.scale=1.0, this run asks for 2.0"):
        run(ckpt, epochs=1, loss_fn=ScaledLoss(2.0), resume=True)


def test_a_checkpoint_without_a_signature_is_refused(tmp_path):
    ckpt = tmp_path / "old.pt"
    run(ckpt, epochs=1)
    state = load_checkpoint(ckpt)
    del state["signature"]
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=rf"checkpoint {ckpt} holds no run signature.*delete it"):
        run(ckpt, epochs=1, resume=True)


def test_same_run_resumes_and_a_finished_one_returns_its_history(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, history = run(ckpt)
    again, resumed = run(ckpt, resume=True)
    assert resumed.epochs == history.epochs
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_checkpoint_names_its_file(tmp_path):
    ckpt = tmp_path / "run.pt"
    run(ckpt, epochs=1)
    truncate(ckpt)
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt} cannot be read .*truncated or corrupt\. Delete it"):
        load_checkpoint(ckpt)
    assert issubclass(CheckpointError, ValueError)


def test_resume_sets_a_corrupt_checkpoint_aside_and_trains_from_scratch(tmp_path):
    ckpt = tmp_path / "run.pt"
    run(ckpt, epochs=1)
    truncate(ckpt)
    cut = ckpt.read_bytes()
    with pytest.warns(UserWarning, match=rf"checkpoint {ckpt} cannot be read .*moved it to {ckpt}\.corrupt and training from scratch"):
        _, history = run(ckpt, epochs=1, resume=True)
    assert (tmp_path / "run.pt.corrupt").read_bytes() == cut  # kept for inspection, not deleted
    assert len(history.epochs) == 1
    assert load_checkpoint(ckpt)["epoch"] == 0  # a fresh, readable checkpoint in its place


def test_stale_temporary_files_are_removed_when_fit_starts(tmp_path):
    ckpt = tmp_path / "run.pt"
    stale = tmp_path / "run.ptab_c12x9.tmp"  # what save_atomic's mkstemp leaves when killed mid-write
    other = tmp_path / "notes.tmp"  # not ours: left alone
    stale.write_bytes(b"half a checkpoint")
    other.write_bytes(b"keep")
    run(ckpt, epochs=1)
    assert not stale.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "missing-folder" / "x.pt") == []


def step_counter(explode_at, how):
    """cross-entropy, with step `explode_at` (0-based, counted over the run) blown up one of two ways."""
    calls = []

    def loss_fn(outputs, batch):
        calls.append(None)
        loss = cross_entropy_loss(outputs, batch)
        if len(calls) - 1 == explode_at:
            if how == "loss":
                return loss * float("nan")
            # The loss of this step stays finite; its gradient (and so the weights after the step) does not.
            outputs.register_hook(lambda grad: grad * float("inf"))
        return loss

    return loss_fn


@pytest.mark.parametrize("how, message", [("loss", "training loss became nan in epoch 2"),
                                          ("weights", "weights became NaN or infinite in epoch 2")])
def test_a_blow_up_in_the_last_step_keeps_the_previous_checkpoint(tmp_path, how, message):
    ckpt = tmp_path / "run.pt"
    last_step_of_epoch_2 = 2 * 4 - 1  # 32 rows in batches of 8
    with pytest.raises(FloatingPointError, match=rf"{message}.*last good checkpoint is {ckpt}, written after epoch 1"):
        run(ckpt, epochs=3, loss_fn=step_counter(last_step_of_epoch_2, how))
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    assert math.isfinite(state["history"][0]["train_loss"])


def test_a_blow_up_without_a_checkpoint_names_none():
    with pytest.raises(FloatingPointError, match=r"weights became NaN or infinite in epoch 1") as error:
        run(None, epochs=1, loss_fn=step_counter(3, "weights"))
    assert "checkpoint" not in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# The last good checkpoint is good: a learning rate that explodes in an epoch's last step
# ---------------------------------------------------------------------------------------------------------------
def lr_run(ckpt, *, lr=0.1, explode_at=None, resume=False, epochs=3, width=8):
    """Plain SGD on the toy data; explode_at: the optimiser step (0-based, over the run) whose lr is 1e6 times lr."""
    x, y = toy_data(32)
    torch.manual_seed(0)
    model = kd.models.MLP((6, width, 2))
    batches = kd.data.Batches({"x": x, "y": y}, 8, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    # LambdaLR sets the lr of step s to lr * factor(s): one step of the run takes a step a million times too long.
    sched = None if explode_at is None else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1e6 if s == explode_at else 1.0)
    history = fit(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, checkpoint=ckpt, resume=resume, progress=False)
    return model, history


def cross_entropy_of(state, width=8):
    """The loss of saved weights on the toy data, computed here, independently of fit()'s probe."""
    x, y = toy_data(32)
    model = kd.models.MLP((6, width, 2))
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def test_an_lr_that_explodes_in_an_epochs_last_step_leaves_the_previous_checkpoint_and_names_it(tmp_path):
    ckpt = tmp_path / "run.pt"
    last_step_of_epoch_2 = 2 * 4 - 1  # 32 rows in batches of 8
    with pytest.raises(FloatingPointError) as error:
        lr_run(ckpt, explode_at=last_step_of_epoch_2)
    message = str(error.value)
    # The epoch's own loss was finite (taken before the exploding step): only the probe of the weights sees it.
    recorded = float(message.split("the epoch's recorded loss, ")[1].split(",")[0])
    assert math.isfinite(recorded) and recorded < 5
    assert "the weights after epoch 2 give a cross-entropy of" in message and "above the bound" in message
    assert f"the last good checkpoint is {ckpt}, written after epoch 1, and it was kept" in message
    assert "Lower the learning rate" in message and "resume='weights'" in message and "delete it" in message
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 0  # epoch 2's checkpoint was not written
    assert cross_entropy_of(state["model"]) < 1.0  # the named checkpoint's weights give a sane loss (ln 2 = 0.69)


def test_the_exploded_weights_are_what_the_old_rule_let_through(tmp_path):
    """The case of the issue: finite loss, finite weights, a loss above 1e3 on the training data."""
    x, y = toy_data(32)
    torch.manual_seed(0)
    exploded = kd.models.MLP((6, 8, 2))
    opt = torch.optim.SGD(exploded.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1e6 if s == 7 else 1.0)
    batches = kd.data.Batches({"x": x, "y": y}, 8, shuffle=True)
    with pytest.raises(FloatingPointError, match="after epoch 2"):
        fit(exploded, batches, epochs=3, optimizer=opt, scheduler=sched, progress=False)
    assert all(bool(torch.isfinite(p).all()) for p in exploded.parameters())
    assert cross_entropy_of(exploded.state_dict()) > 1e3


def test_resume_weights_continues_from_the_last_good_checkpoint_at_a_new_learning_rate(tmp_path):
    ckpt = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError):
        lr_run(ckpt, explode_at=7)
    good = ckpt.read_bytes()
    # A plain resume with a new learning rate is another run: refused, and the refusal says what to ask for.
    with pytest.raises(ValueError, match=r"optimizer.lr=0.1, this run asks for 0.05.*delete it or pass a new path; or, "
                                         r"to continue from its weights and epoch with this new optimiser.*resume='weights'"):
        lr_run(ckpt, lr=0.05, resume=True)
    assert ckpt.read_bytes() == good
    # Other fields still decide: a different model is refused even with resume="weights".
    with pytest.raises(ValueError, match=r"model.hidden.0.weight=\[8, 6\], this run asks for \[16, 6\]"):
        lr_run(ckpt, lr=0.05, resume="weights", width=16)
    model, history = lr_run(ckpt, lr=0.05, resume="weights")
    assert [row["epoch"] for row in history.epochs] == [0.0, 1.0, 2.0]  # epoch 1's row kept, 2 and 3 trained
    assert all(math.isfinite(row["train_loss"]) for row in history.epochs)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and state["signature"]["optimizer.lr"] == 0.05
    assert cross_entropy_of(model.state_dict()) < 1.0
    for a, b in zip(model.state_dict().values(), state["model"].values()):
        assert torch.equal(a, b)
    # The file now belongs to the new run: a plain resume at the new rate returns it at once.
    again, resumed = lr_run(ckpt, lr=0.05, resume=True)
    assert resumed.epochs == history.epochs


def test_resume_weights_equals_a_run_that_lowered_its_rate_at_that_epoch(tmp_path):
    """Weights, epoch and random streams come from the file, the optimiser is the one passed: epoch 2 at lr 0.05
    after the kept epoch 1 at lr 0.1 ends where one uninterrupted run with that schedule does."""
    ckpt = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError):
        lr_run(ckpt, epochs=2, explode_at=7)
    resumed, history = lr_run(ckpt, lr=0.05, resume="weights", epochs=2)
    x, y = toy_data(32)
    torch.manual_seed(0)
    reference = kd.models.MLP((6, 8, 2))
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    halved = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 4 else 0.5)  # 0.1 for epoch 1, 0.05 after
    ref_history = fit(reference, kd.data.Batches({"x": x, "y": y}, 8, shuffle=True), epochs=2, optimizer=opt,
                      scheduler=halved, progress=False)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs")
    assert [r["train_loss"] for r in history.epochs] == pytest.approx([r["train_loss"] for r in ref_history.epochs])


def test_resume_weights_needs_the_file_and_resume_takes_three_values(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"resume='weights' continues from an existing checkpoint, and there is none at {tmp_path / 'none.pt'}"):
        lr_run(tmp_path / "none.pt", resume="weights")
    with pytest.raises(ValueError, match=r"resume must be False, True or 'weights', got 'weight'"):
        lr_run(tmp_path / "x.pt", resume="weight")
    with pytest.raises(ValueError, match=r"resume must be False, True or 'weights', got 1"):
        lr_run(tmp_path / "x.pt", resume=1)
    with pytest.raises(ValueError, match=r"resume='weights' needs a checkpoint path"):
        lr_run(None, resume="weights")


def test_a_checkpoint_holding_exploded_weights_is_not_resumed_from(tmp_path):
    """One written before the rule (or changed since): named, never continued or reloaded as good."""
    ckpt = tmp_path / "run.pt"
    lr_run(ckpt, epochs=2)
    state = load_checkpoint(ckpt)
    state["model"] = {k: v * 1e5 for k, v in state["model"].items()}
    torch.save(state, ckpt)
    with pytest.raises(FloatingPointError, match=rf"the weights in checkpoint {ckpt} \(after epoch 2\) give a cross-entropy "
                                                 r"of .* above the bound .*not a good checkpoint.*Delete it"):
        lr_run(ckpt, epochs=2, resume=True)
