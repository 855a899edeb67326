"""fit(): resume equals an uninterrupted run, atomic checkpoints, clear errors, model selection."""
import contextlib
import math

import pytest
import torch
from torch import nn

import kdteach as kd
from kdteach.train import fit, load_checkpoint


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return x, y


def make_model(seed=0):
    torch.manual_seed(seed)
    return kd.models.MLP((36, 16, 3), dropout=0.3, max_norm=1.0)


def train(epochs, checkpoint=None, resume=False, stop_after=None):
    x, y = toy_data()
    model = make_model()
    batches = kd.data.Batches({"x": x, "y": y}, 16, shuffle=True, seed=3, augment=kd.data.translate_by(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4 * len(batches))

    def crash(epoch, _model):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt  # a killed run: the checkpoint of this epoch has not been written yet

    history = fit(model, batches, epochs=epochs, optimizer=opt, scheduler=sched, checkpoint=checkpoint, resume=resume,
                  on_epoch_end=crash, progress=False)
    return model, history


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    reference, ref_history = train(4)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(4, checkpoint=ckpt, stop_after=2)
    assert load_checkpoint(ckpt)["epoch"] == 1  # epochs 0 and 1 finished before the crash
    resumed, history = train(4, checkpoint=ckpt, resume=True)
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{k} differs after resume")
    assert [r["train_loss"] for r in history.epochs] == pytest.approx([r["train_loss"] for r in ref_history.epochs])
    assert not list(tmp_path.glob("*.tmp")), "a temporary checkpoint file was left behind"


def test_finished_run_returns_at_once_from_its_checkpoint(tmp_path):
    ckpt = tmp_path / "run.pt"
    first, _ = train(2, checkpoint=ckpt)
    again, history = train(2, checkpoint=ckpt, resume=True)
    assert len(history.epochs) == 2
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_checkpoint_loads_with_weights_only(tmp_path):
    ckpt = tmp_path / "run.pt"
    train(1, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)  # raises if anything but tensors and plain containers was pickled
    assert {"signature", "model", "optimizer"} <= set(state) and state["signature"]["epochs"] == 1


def test_max_norm_constraint_holds_after_training():
    model, _ = train(1)
    for layer in model.hidden:
        assert float(layer.weight.detach().norm(dim=1).max()) <= 1.0 + 1e-5


def test_nan_loss_raises_a_clear_error():
    x, y = toy_data()
    model = make_model()

    def nan_loss(outputs, batch):
        return outputs.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="loss became nan in epoch 1"):
        fit(model, kd.data.Batches({"x": x, "y": y}, 32), epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss_fn=nan_loss, progress=False)


def test_labels_out_of_range_raise_value_error():
    x, y = toy_data()
    model = make_model()
    with pytest.raises(ValueError, match=r"train\[.y.\] must be in \[0, 3\)"):
        fit(model, kd.data.Batches({"x": x, "y": y + 1}, 32), epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            progress=False)


def test_select_keeps_the_best_epoch_and_says_so():
    x, y = toy_data()
    model = make_model()
    scores = iter([0.2, 0.9, 0.1])
    snapshots = []

    def metric(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"val_score": next(scores)}

    history = fit(model, kd.data.Batches({"x": x, "y": y}, 32, shuffle=True), epochs=3,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.5), metrics=metric, select="val_score", progress=False)
    assert history.best_epoch == 1 and history.selected_by == "val_score"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[1][k])


def test_evaluate_and_predict_agree():
    x, y = toy_data()
    model = make_model().eval()
    batches = kd.data.Batches({"x": x, "y": y}, 10, shuffle=True)
    logits = kd.train.predict(model, batches)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
    result = kd.train.evaluate(model, batches)
    assert result["errors"] == float((model(x).argmax(1) != y).sum())
    assert result["accuracy"] == pytest.approx(1 - result["errors"] / len(y))


def test_bad_arguments():
    x, y = toy_data()
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, kd.data.Batches({"x": x, "y": y}, 32), epochs=0, optimizer=opt, progress=False)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        fit(model, kd.data.Batches({"x": x, "y": y}, 32), epochs=1, optimizer=opt, resume=True, progress=False)


def test_max_grad_norm_bounds_each_step():
    # Plain SGD with lr 1 moves the parameters by exactly the (clipped) gradient, so one step's size is its norm.
    x, y = toy_data()
    model = kd.models.MLP((36, 16, 3))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(model, kd.data.Batches({"x": x, "y": y}, 96), epochs=1, optimizer=opt, max_grad_norm=1e-3, progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(1e-3, rel=1e-3)  # the unclipped gradient is far larger
    with pytest.raises(ValueError, match="max_grad_norm"):
        fit(model, kd.data.Batches({"x": x, "y": y}, 32), epochs=1, optimizer=opt, max_grad_norm=0.0, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_amp_channels_last_fit_runs():
    x = torch.randn(256, 3, 16, 16)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    history = fit(model, kd.data.Batches({"x": x, "y": y}, 64, shuffle=True).to("cuda"), epochs=3, device="cuda",
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1), channels_last=True, progress=False)
    assert math.isfinite(history.last["train_loss"])


def small_fit(x, y, **kwargs):
    torch.manual_seed(0)
    model = kwargs.pop("model", None) or kd.models.MLP((36, 8, 3))
    optimizer = kwargs.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs.setdefault("progress", False)
    return fit(model, kd.data.Batches({"x": x, "y": y}, 32), epochs=kwargs.pop("epochs", 1), optimizer=optimizer, **kwargs)


@pytest.mark.usefixtures("one_thread")
class TestFirstBatchChecks:
    def test_x_of_the_wrong_trailing_shape_names_train_and_the_shape(self):
        x, y = toy_data()
        with pytest.raises(ValueError, match=r"train\['x'\] does not fit the model: rows of shape \(1, 5, 5\)"):
            small_fit(x[:, :, :5, :5], y)

    def test_integer_x_without_an_embedding_layer(self):
        x, y = toy_data()
        with pytest.raises(ValueError, match=r"train\['x'\] holds torch.uint8.*no embedding layer"):
            small_fit((x * 50).clamp(0, 255).to(torch.uint8), y)

    def test_float_and_bool_labels(self):
        x, y = toy_data()
        with pytest.raises(ValueError, match=r"train\['y'\] must hold integer class indices, got torch.float32"):
            small_fit(x, y.float())
        with pytest.raises(ValueError, match=r"train\['y'\] must hold integer class indices, got torch.bool"):
            small_fit(x, y > 0)

    def test_val_is_checked_before_the_first_epoch(self):
        x, y = toy_data()
        calls = []
        val = kd.data.Batches({"x": x, "y": y + 5}, 32)
        with pytest.raises(ValueError, match=r"val\['y'\] must be in \[0, 3\), got values in \[5, 7\]"):
            small_fit(x, y, val=val, on_epoch_end=lambda epoch, model: calls.append(epoch))
        assert calls == []  # refused before any training

    def test_integers_given_as_floats(self):
        x, y = toy_data()
        with pytest.raises(ValueError, match=r"epochs must be an integer, got 2.5"):
            small_fit(x, y, epochs=2.5)
        with pytest.raises(ValueError, match=r"batch_size must be an integer, got 2.5"):
            kd.data.Batches({"x": x, "y": y}, 2.5)
        with pytest.raises(ValueError, match=r"max_grad_norm must be a finite number, got nan"):
            small_fit(x, y, max_grad_norm=float("nan"))

    def test_an_optimizer_over_another_model(self):
        x, y = toy_data()
        other = kd.models.MLP((36, 8, 3))
        with pytest.raises(ValueError, match="optimizer holds none of model's parameters"):
            small_fit(x, y, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))

    def test_the_check_leaves_random_streams_and_mode_alone(self):
        x, y = toy_data()
        model = make_model()  # dropout 0.3: a train-mode forward would draw from the RNG
        model.train()
        rng = torch.get_rng_state()
        kd.train.check_first_batch(model, kd.data.Batches({"x": x, "y": y}, 16), "train", device=torch.device("cpu"))
        assert torch.equal(rng, torch.get_rng_state()) and model.training

    def test_evaluate_and_predict(self):
        x, y = toy_data()
        model = make_model()
        with pytest.raises(ValueError, match=r"batches is empty \(0 rows\)"):
            kd.train.evaluate(model, kd.data.Batches({"x": x[:0], "y": y[:0]}, 8))
        with pytest.raises(ValueError, match=r"batches\['y'\] must be in \[0, 3\), got values in \[0, 9\]"):
            kd.train.evaluate(model, kd.data.Batches({"x": x, "y": torch.where(y == 2, 9, y)}, 8))
        with pytest.raises(ValueError, match=r"batches\['y'\] must hold integer"):
            kd.train.evaluate(model, kd.data.Batches({"x": x, "y": y.float()}, 8))
        with pytest.raises(ValueError, match=r"batches\['x'\] does not fit the model: rows of shape \(35,\)"):
            kd.train.predict(model, kd.data.Batches({"x": x.flatten(1)[:, :35]}, 8))


def test_one_progress_bar_per_run(capsys):
    # Issue 14: a saved notebook must not carry one "epoch k" stub per epoch; the epoch bar is the only bar.
    x, y = toy_data()
    small_fit(x, y, epochs=3, progress=True, desc="tiny run")
    err = capsys.readouterr().err
    assert "tiny run" in err and "3/3" in err
    assert "epoch 1" not in err and "epoch 2" not in err


@pytest.mark.parametrize("capability, dtype, scaled", [((7, 5), torch.float16, True),   # T4: bf16 only emulated
                                                       ((8, 0), torch.bfloat16, False),  # A100
                                                       ((9, 0), torch.bfloat16, False)])  # H100
def test_precision_rule_follows_the_compute_capability(monkeypatch, capability, dtype, scaled):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # what a T4 reports too
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert kd.runtime.amp_dtype("cuda") == dtype
    assert kd.runtime.amp_dtype(torch.device("cuda", 0)) == dtype
    assert kd.runtime.amp_dtype("cpu") is None
    assert kd.train.grad_scaler(torch.device("cuda"), amp=True).is_enabled() is scaled
    assert not kd.train.grad_scaler(torch.device("cuda"), amp=False).is_enabled()
    assert kd.distill.autocast_context("cuda").fast_dtype == dtype


def test_no_autocast_and_no_scaler_on_a_cpu():
    assert kd.runtime.amp_dtype("cpu") is None and kd.runtime.amp_dtype("mps") is None
    assert not kd.train.grad_scaler(torch.device("cpu"), amp=True).is_enabled()
    assert isinstance(kd.distill.autocast_context("cpu"), contextlib.nullcontext)
