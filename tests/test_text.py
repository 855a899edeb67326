"""Notebook 04's text track: group definitions on fixtures in the real datasets' layouts, the offline stand-in and
tokenizer, the tiny BERT / DistilBERT models and their early readout, and a short distillation run. Nothing here
downloads anything."""
from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from kdteach.data.text import (
    CIVIL_GROUP_NAMES,
    CIVIL_IDENTITIES,
    NLI_GROUP_NAMES,
    civil_membership,
    civilcomments_split,
    conflicting_groups,
    encode_text,
    example_rows,
    group_count_rows,
    has_negation,
    load_civilcomments,
    load_multinli,
    multinli_split,
    negation_groups,
    nli_standin,
    shortcut_rates,
    standin_tokenizer,
)
from kdteach.debias import EarlyReadout
from kdteach.report import to_jsonable
from kdteach.models.text import tiny_bert, tiny_distilbert, unpack_text

datasets = pytest.importorskip("datasets")


pytestmark = pytest.mark.usefixtures("one_thread")  # the fixture lives in conftest.py


@pytest.fixture(scope="module")
def standin():
    splits = nli_standin(600, 120, 120, seed=0)
    train = splits["train"]
    tokenizer = standin_tokenizer(train.texts + train.pairs)
    return splits, tokenizer


# ---------------------------------------------------------------- group definitions


def test_negation_words_are_whole_words():
    assert has_negation("Nobody came to the party.")
    assert has_negation("There is NO cat")
    assert has_negation("nobody's home") and has_negation("It never rains")
    assert not has_negation("I know the answer")  # "know" holds "no" but is not the word
    assert not has_negation("nothingness and nobodies") and not has_negation("")


def test_multinli_groups_on_a_fixture_in_the_hub_layout():
    rows = datasets.Dataset.from_dict({
        "premise": ["a", "b", "c", "d", "e"],
        "hypothesis": ["The man sleeps.", "Nobody sleeps.", "He never left.", "unlabelled pair", "No way."],
        "label": [0, 1, 2, -1, 0],  # -1: no gold label, dropped
        "genre": ["fiction"] * 5,
    })
    split = multinli_split(rows)
    assert split.pairs == ["The man sleeps.", "Nobody sleeps.", "He never left.", "No way."]
    assert split.labels.tolist() == [0, 1, 2, 0]
    # group = 2 * label + negation, named in that order
    assert split.groups.tolist() == [0, 3, 5, 1]
    assert [split.group_names[g] for g in split.groups] == [
        "entailment, no negation", "neutral, negation", "contradiction, negation", "entailment, negation"]
    assert split.group_names == NLI_GROUP_NAMES


def test_negation_groups_reject_bad_input():
    with pytest.raises(ValueError, match="labels"):
        negation_groups([0, 3], ["a", "b"])
    with pytest.raises(ValueError, match="hypotheses"):
        negation_groups([0, 1], ["a"])
    with pytest.raises(ValueError, match="premise"):
        multinli_split({"hypothesis": ["a"], "label": [0]})


def _civil_rows() -> dict[str, list]:
    rows = {"comment_text": ["hi all", "women and muslims are X", "a man said", "you idiot", "christians ok"],
            "toxicity": [0.0, 0.8, 0.1, 0.9, None]}
    for name in CIVIL_IDENTITIES:
        rows[name] = [None] * 5
    rows["female"] = [0.0, 1.0, 0.0, 0.0, 0.0]
    rows["muslim"] = [0.0, 0.7, None, 0.0, 0.0]
    rows["male"] = [0.0, 0.0, 0.6, 0.4, 0.0]  # 0.4 is below the 0.5 threshold: not a mention
    rows["christian"] = [0.0, 0.0, 0.0, 0.0, 0.5]
    return rows


def test_civilcomments_groups_overlap():
    member = civil_membership(_civil_rows())
    assert member.shape == (5, 2 * len(CIVIL_IDENTITIES)) and member.dtype == torch.bool
    names = [[CIVIL_GROUP_NAMES[g] for g in torch.nonzero(row).flatten().tolist()] for row in member]
    assert names[0] == []  # no identity: in no group
    assert names[1] == ["female, toxic", "muslim, toxic"]  # two identities: two groups at once
    assert names[2] == ["male, non-toxic"]
    assert names[3] == []  # toxic, but male 0.4 is no mention
    assert names[4] == ["christian, non-toxic"]  # missing toxicity counts as 0
    split = civilcomments_split(_civil_rows())
    assert split.labels.tolist() == [0, 1, 0, 1, 0] and split.pairs is None


def test_civilcomments_csv_fixture_in_the_wilds_layout(tmp_path):
    rows = _civil_rows()
    path = tmp_path / "civilcomments" / "all_data_with_identities.csv"
    path.parent.mkdir()
    columns = ["id", "comment_text", "split", "toxicity", *CIVIL_IDENTITIES]
    splits = ["train", "test", "train", "val", "train"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(5):
            writer.writerow([i, rows["comment_text"][i], splits[i], rows["toxicity"][i] if rows["toxicity"][i] is not None else ""]
                            + ["" if rows[n][i] is None else rows[n][i] for n in CIVIL_IDENTITIES])
    train = load_civilcomments("train", path=path, cache_dir=tmp_path / "hf")
    assert train.texts == ["hi all", "a man said", "christians ok"]
    assert train.groups.sum(dim=1).tolist() == [0, 1, 1]
    test = load_civilcomments("test", path=path, cache_dir=tmp_path / "hf")
    assert test.labels.tolist() == [1] and int(test.groups.sum()) == 2


def test_absent_civilcomments_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="all_data_with_identities.csv") as error:
        load_civilcomments("train", path=tmp_path / "nowhere.csv")
    assert "download=True" in str(error.value)
    with pytest.raises(ValueError, match="split"):
        load_civilcomments("validation", path=tmp_path / "nowhere.csv")


def test_offline_multinli_gives_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    # Offline whatever the environment says, so this never touches the network.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="MultiNLI could not be loaded") as error:
        load_multinli("validation_matched", cache_dir=tmp_path)
    assert "stand-in" in str(error.value)
    with pytest.raises(ValueError, match="split"):
        load_multinli("test")


# ---------------------------------------------------------------- the stand-in


def _shortcut_rate(split, label: int) -> float:
    member = split.labels == label
    return float((split.groups[member] % 2).float().mean())


def test_standin_plants_the_shortcut_in_training_only():
    splits = nli_standin(3000, 600, 1200, seed=1)
    train, test = splits["train"], splits["test"]
    assert abs(_shortcut_rate(train, 2) - 0.9) < 0.04  # contradictions carry a negation word ...
    assert _shortcut_rate(train, 0) < 0.09 and _shortcut_rate(train, 1) < 0.09  # ... other pairs rarely
    for label in range(3):  # in test, negation says nothing about the label
        assert abs(_shortcut_rate(test, label) - 0.5) < 0.09
    # Every minority group exists in training, so a model can in principle learn the real rule.
    assert (torch.bincount(train.groups, minlength=6) > 20).all()


def test_standin_labels_follow_the_rule():
    split = nli_standin(300, 1, 1, seed=2)["train"]
    for premise, hypothesis, label in zip(split.texts, split.pairs, split.labels.tolist()):
        name, verb = premise.split()[:2]
        h_name, h_verb = hypothesis.split()[:2]
        expected = 1 if h_name != name else (0 if h_verb == verb else 2)
        assert label == expected, (premise, hypothesis, label)


def test_standin_neutral_shows_in_one_word_and_the_rest_needs_both_verbs():
    # Neutral hypotheses are about people no premise mentions; entailment and contradiction repeat the premise's
    # person, so only the verbs tell them apart (the part that needs the two sentences compared).
    split = nli_standin(600, 1, 1, seed=5)["train"]
    premise_names = {p.split()[0] for p in split.texts}
    for hypothesis, label in zip(split.pairs, split.labels.tolist()):
        assert (hypothesis.split()[0] not in premise_names) == (label == 1)
    same_name = [(p.split()[1], h.split()[1]) for p, h, y in zip(split.texts, split.pairs, split.labels.tolist()) if y != 1]
    premise_verbs = {v for v, _ in same_name}
    assert premise_verbs == {h for _, h in same_name}  # every verb appears on both sides: no verb gives the label


def test_standin_is_reproducible_and_checks_arguments():
    a, b = nli_standin(50, 10, 10, seed=3), nli_standin(50, 10, 10, seed=3)
    assert a["train"].pairs == b["train"].pairs and torch.equal(a["test"].labels, b["test"].labels)
    with pytest.raises(ValueError, match="n_train"):
        nli_standin(0)
    with pytest.raises(ValueError, match="shortcut_rate"):
        nli_standin(10, 10, 10, shortcut_rate=1.5)


def test_tokenizer_frames_pairs_like_bert(standin):
    splits, tokenizer = standin
    x = encode_text(tokenizer, splits["val"], max_length=12)
    assert x.shape == (120, 3, 12) and x.dtype == torch.int64
    ids, mask, types = unpack_text(x)
    first = tokenizer.convert_ids_to_tokens(ids[0][mask[0].bool()].tolist())
    assert first[0] == "[CLS]" and first.count("[SEP]") == 2 and "[UNK]" not in first
    assert " ".join(first[1:first.index("[SEP]")]) == splits["val"].texts[0]
    # token type 0 on [CLS] premise [SEP], 1 on hypothesis [SEP], padding masked out
    sep = first.index("[SEP]")
    assert types[0, : sep + 1].eq(0).all() and types[0, sep + 1 : len(first)].eq(1).all()
    assert mask.sum(dim=1).max() <= 12


# ---------------------------------------------------------------- models and readout


@pytest.mark.parametrize("build", [tiny_bert, tiny_distilbert])
def test_tiny_models_logits_and_layer_taps(standin, build):
    splits, tokenizer = standin
    x = encode_text(tokenizer, splits["val"], max_length=12)[:7]
    model = build(len(tokenizer), 3, hidden=32, layers=3, heads=2, max_length=16).eval()
    assert model.stage_names == ("layer1", "layer2", "layer3")
    assert model(x).shape == (7, 3)
    taps = model.features(x)
    assert list(taps) == ["layer1", "layer2", "layer3"] and all(t.shape == (7, 32) for t in taps.values())
    assert list(model.features(x, upto="layer2")) == ["layer1", "layer2"]
    # mean pooling ignores padding: the same example padded longer gives the same pooled state
    longer = torch.nn.functional.pad(x, (0, 4))
    assert torch.allclose(model.features(x, pool="mean")["layer1"], model.features(longer, pool="mean")["layer1"], atol=1e-5)
    with pytest.raises(ValueError, match="upto"):
        model.features(x, upto="layer9")


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="x must be packed text"):
        unpack_text(torch.zeros(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden"):
        tiny_bert(50, 3, hidden=30, heads=4)
    with pytest.raises(ValueError, match="num_classes"):
        tiny_distilbert(50, 1)


def test_readout_on_an_early_layer_gives_one_logit_row_per_example(standin):
    from kdteach.data.batches import Batches

    splits, tokenizer = standin
    train = splits["train"]
    x = encode_text(tokenizer, train, max_length=12)
    model = tiny_distilbert(len(tokenizer), 3, hidden=32, layers=2, heads=2, max_length=12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = Batches({"x": x, "y": train.labels}, 64, shuffle=True)
    readout = EarlyReadout("layer1", 3, head="linear", epochs=1)
    readout.fit(model, batches)
    logits = readout.predict(model, batches)
    assert logits.shape == (len(train), 3) and torch.isfinite(logits).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the student is untouched


def test_short_training_on_the_standin_lowers_the_loss(standin):
    from kdteach.data.batches import Batches
    from kdteach.train import fit

    torch.manual_seed(0)
    splits, tokenizer = standin
    train = splits["train"]
    model = tiny_distilbert(len(tokenizer), 3, hidden=32, layers=2, heads=2, max_length=12, dropout=0.0)
    batches = Batches({"x": encode_text(tokenizer, train, max_length=12), "y": train.labels}, 32, shuffle=True)
    history = fit(model, batches, epochs=3, optimizer=torch.optim.AdamW(model.parameters(), lr=2e-3), progress=False)
    losses = history.column("train_loss")
    assert losses[-1] < losses[0] - 0.1, losses


def test_the_experiment_runs_end_to_end_on_a_tiny_configuration():
    from kdteach.experiments import text

    cfg = dataclasses.replace(text.config("smoke", "standin"), sizes=(240, 60, 60), teacher_size=(32, 2, 2), student_size=(16, 2, 2),
                              teacher_epochs=1, epochs=2, start_after=1)
    outcome = text.run_experiment(cfg, device="cpu", progress=False)
    result = outcome.result
    assert [(m.model, m.seed) for m in result.models] == [("teacher", 0), ("KD", 0), ("DeDiER", 0)]
    for m in result.models:
        assert 0.0 <= m.test.worst_group <= m.test.mean_over_groups <= 1.0
        assert len(m.val_worst_group) == (1 if m.model == "teacher" else 2) and 0 <= m.best_epoch < len(m.val_worst_group)
    dedier = next(s for s in outcome.students if s.method == "DeDiER")
    weights = dedier.reweighting.weights
    assert weights.shape == (240,) and (weights >= 1).all()
    assert "readout_train_acc" in dedier.history.epochs[-1]
    assert [g.group for g in result.readout] == list(NLI_GROUP_NAMES) and sum(g.n for g in result.readout) == 240
    assert outcome.readout_logits.shape == (240, 3)
    # A rerun reloads every model from its checkpoint and measures the same numbers.
    again = text.run_experiment(cfg, device="cpu", progress=False).result
    assert json.dumps(to_jsonable(again)) == json.dumps(to_jsonable(result))  # NaN-safe: no group has training counts
    with pytest.raises(ValueError, match="dataset"):
        text.config("smoke", "imdb")


def test_checkpoint_keys_follow_the_fields_that_decide_each_model():
    from kdteach.data.text import TextData
    from kdteach.experiments import text

    cfg = text.config("smoke", "standin")
    data = TextData("standin", {}, {}, None, torch.zeros(1), (), seed=0)
    # A student-only field leaves the teacher's checkpoint alone; a teacher field or the data's seed moves it.
    assert text.teacher_path(dataclasses.replace(cfg, lr=1e-3, alpha=0.5), data) == text.teacher_path(cfg, data)
    assert text.teacher_path(dataclasses.replace(cfg, teacher_lr=1e-3), data) != text.teacher_path(cfg, data)
    assert text.teacher_path(cfg, dataclasses.replace(data, seed=1)) != text.teacher_path(cfg, data)
    assert set(text.DEDIER_FIELDS).isdisjoint(text.TEACHER_FIELDS) and "lr" in text.STUDENT_FIELDS
    assert all(hasattr(cfg, f) for f in text.TEACHER_FIELDS + text.STUDENT_FIELDS + text.DEDIER_FIELDS)


def test_linear_warmup_gives_the_old_schedules_factors():
    """common's "linear" schedule with warmup_steps: (step + 1) / warmup, then linear decay to zero."""
    from kdteach.experiments import common

    steps, warmup = 20, 5
    _, scheduler = common.optimizer_and_schedule(torch.nn.Linear(2, 2), total_steps=steps, lr=1.0, schedule="linear", warmup_steps=warmup)
    factors = []
    for _ in range(steps):
        factors.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    expected = [(s + 1) / warmup if s < warmup else (steps - s) / (steps - warmup) for s in range(steps)]
    assert factors == pytest.approx(expected)


@pytest.fixture
def local_checkpoints(tmp_path):
    """Tiny BERT and DistilBERT saved like Hub checkpoints (config, weights, tokenizer) in local folders."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    standin = nli_standin(90, 40, 1, seed=4)
    words = standin["train"].texts + standin["train"].pairs + [" ".join(CIVIL_IDENTITIES).lower()]
    tokenizer = standin_tokenizer(words)
    teacher_dir, student_dir = tmp_path / "bert", tmp_path / "distilbert"
    tokenizer.save_pretrained(teacher_dir)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(teacher_dir)
    DistilBertModel(DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                     max_position_embeddings=32)).save_pretrained(student_dir)
    return standin, str(teacher_dir), str(student_dir)


def _full_config(dataset, teacher, student, sizes):
    from kdteach.experiments import text

    return dataclasses.replace(text.config("full", dataset), teacher=teacher, student=student, sizes=sizes, max_length=16,
                               batch_size=16, teacher_epochs=1, epochs=2, warmup_steps=2, seeds=(0,))  # DeDiER keeps an epoch after its first reweighting


def test_full_mode_path_runs_offline_with_local_checkpoints_and_a_multinli_fixture(local_checkpoints, tmp_path, monkeypatch):
    """Full mode's code path (Hub-style checkpoints and tokenizer through from_pretrained, MultiNLI through
    datasets.load_dataset, checkpoints and resume) with everything local: tiny saved models and a fixture."""
    from kdteach.experiments import text

    standin, teacher, student = local_checkpoints

    def fake_load_dataset(name, split=None, **kwargs):  # the Hub layout of nyu-mll/multi_nli
        assert name == "nyu-mll/multi_nli" and split in ("train", "validation_matched")
        part = standin["train" if split == "train" else "val"]
        return datasets.Dataset.from_dict({"premise": part.texts, "hypothesis": part.pairs, "label": part.labels.tolist()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "cache"))
    cfg = _full_config("multinli", teacher, student, (80, None, None))
    data = text.load_data(cfg)
    assert len(data.splits["train"]) == 80 and len(data.splits["val"]) + len(data.splits["test"]) == 40
    result = text.run_experiment(cfg, data=data, device="cpu", progress=False).result
    assert [m.model for m in result.models] == ["teacher", "KD", "DeDiER"]
    assert result.readout_stage == "layer2" and len(result.readout) == 6
    written = sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "text").iterdir())
    assert written == ["DeDiER", "KD", "teacher"]  # one checkpoint per model


def test_civilcomments_path_with_overlapping_groups(local_checkpoints, tmp_path, monkeypatch):
    """CivilComments end to end from a WILDS-layout CSV: overlapping groups in the metrics, (any identity) x label
    groups for the teacher's balanced batches and the readout's diagnostics."""
    from kdteach.experiments import text

    _, teacher, student = local_checkpoints
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "civil.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["comment_text", "split", "toxicity", *CIVIL_IDENTITIES])
        for i in range(120):
            mentions = (torch.rand(len(CIVIL_IDENTITIES), generator=generator) < 0.25).float().tolist()
            words = [n.lower() for n, m in zip(CIVIL_IDENTITIES, mentions) if m] or ["alice"]
            writer.writerow([" ".join(words) + " runs", ("train", "train", "val", "test")[i % 4], float(i % 3 == 0), *mentions])
    monkeypatch.setenv("KDTEACH_DATA", str(tmp_path))
    (tmp_path / "civilcomments").mkdir()
    path.rename(tmp_path / "civilcomments" / "all_data_with_identities.csv")
    monkeypatch.setenv("KDTEACH_CACHE", str(tmp_path / "cache"))
    cfg = _full_config("civilcomments", teacher, student, (None, None, None))
    data = text.load_data(cfg)
    train = data.splits["train"]
    assert len(train) == 60 and train.groups.shape == (60, 16) and (train.groups.sum(dim=1) > 1).any()  # overlaps
    assert data.balance_names == ("non-toxic, no identity", "non-toxic, identity", "toxic, no identity", "toxic, identity")
    assert sum(r["train"] for r in group_count_rows(data)) == int(train.groups.sum())
    assert len(shortcut_rates(train)) == 2 and example_rows(train)
    result = text.run_experiment(cfg, data=data, device="cpu", progress=False).result
    assert all(0.0 <= m.test.worst_group <= m.test.mean_over_groups + 1e-9 for m in result.models)
    assert len(result.readout) == 4 and conflicting_groups(data) == [1, 2] and result.conflicting == (1, 2)
