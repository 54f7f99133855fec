"""Trust, round two (issue 20), the task side: data that cannot be scored fairly, names that collide
with built-ins, one YAML loader, bounded messages, data files that name their bad line, and rows too
long for the model. One test per defect class: the error type (exit status 2 on the command line),
a short message naming the bad value, and what is or is not left on disk."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from polar_rl.agents import cli
from polar_rl.config import ConfigError, shorten
from polar_rl.models.adapter import InputTooLongError, LayerModel
from polar_rl.search.results import ProgramResultStore, ReferenceStore
from polar_rl.tasks import GenExample, MCExample, Task, TaskError, load_task
from polar_rl.tasks.generative_scoring import generate_answers
from polar_rl.tasks.multiple_choice import check_fits, pack_questions, packed_inputs, score_packed

Spec = Callable[..., dict[str, Any]]
SHORT = 400  # characters: an error is one line a person reads


def _refused(source: Any, *fragments: str, error: type[Exception] = TaskError) -> str:
    with pytest.raises(error) as err:
        load_task(source, "all")
    message = str(err.value)
    assert len(message) < SHORT and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _train_refuses(spec_path: Path, out: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    """``polar-rl train`` on the spec: exit 2, one short error line, and no run folder at all."""
    code = cli.main(["train", "--task.name", str(spec_path), "--output_dir", str(out),
                     "--training.progress_bar", "false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("polar-rl train: error: ") and "\n" not in err, err
    assert len(err) < SHORT + 100, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not out.exists()


def _write_spec(tmp_path: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


# ---- 1. task data that cannot be scored fairly -------------------------------------------------


@pytest.mark.parametrize(
    ("choices", "prefix", "fragments"),
    [
        (["4", "5", "4"], " ", ["choices 0 and 2 are identical", "' 4'"]),  # gold on a copy never wins the tie
        (["4", "", "6"], " ", ["choice 1 is empty", "' '"]),  # would be scored as a lone space
        (["4", "", "6"], "", ["choice 1 is empty", "''"]),  # would tokenise to nothing mid-rollout
    ],
    ids=["duplicate", "empty", "empty-no-prefix"],
)
def test_unscorable_choices_are_refused_at_load(toy_spec: Spec, toy_rows: Callable[..., list], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], choices: list[str], prefix: str,
                                                fragments: list[str]) -> None:
    rows = toy_rows(6)
    rows[3]["choices"], rows[3]["key"] = choices, "C"
    spec = toy_spec(rows, choice_prefix=prefix)
    _refused(spec, "'toy/r3'", "row 3", *fragments)
    _train_refuses(_write_spec(tmp_path, spec), tmp_path / "runs", capsys, "toy/r3", *fragments)
    with pytest.raises(TaskError, match="identical"):  # the rule lives in the example itself
        MCExample("x/1", "Q?", (" a", " b", " a"), 2)


# ---- 2. a spec may not take a built-in's name; timings are kept per question set ---------------


@pytest.mark.parametrize("name", ["arc_easy", "ARC-Easy", "piqa"])
def test_spec_named_like_a_builtin_is_refused(toy_spec: Spec, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    spec = toy_spec(name=name)
    _refused(spec, f"task spec name {name!r} is the built-in task", "own name")
    _refused({"name": name, "mixture": [{"task": "piqa"}]}, f"mixture name {name!r}")
    _train_refuses(_write_spec(tmp_path, spec), tmp_path / "runs", capsys, "built-in task")
    unnamed = {k: v for k, v in spec.items() if k != "name"}  # the name falls back to the file's stem
    _refused(_write_spec(tmp_path, unnamed, "arc_easy.yaml"), "'arc_easy' is the built-in task")
    assert not (tmp_path / "cache").exists()  # nothing of the built-in's caches was touched


def _mc(i: int, context: str = "Question: {}?\nAnswer:") -> MCExample:
    return MCExample(f"arc_easy/q{i}", context.format(i), (" yes", " no"), 0)


def test_full_model_timing_is_kept_per_question_set(tmp_path: Path) -> None:
    """A --limit subset (or other questions under the same task name) never replaces the split's timing."""
    def store(examples: list[MCExample], cls: type = ReferenceStore) -> Any:
        return cls("m0", Task("arc_easy", "test", "multiple_choice", tuple(examples)), root=tmp_path)

    split = [_mc(i) for i in range(8)]
    store(split).save_seconds(0.117)
    store(split[:4]).save_seconds(0.317)  # polar-rl evaluate --limit 4 reran the full model
    assert store(split).load_seconds() == 0.117 and store(split[:4]).load_seconds() == 0.317
    other = [_mc(i, "Another question {}?\nAnswer:") for i in range(8)]  # same ids, other content
    assert store(other).load_seconds() is None

    programs, runs = store(split, ProgramResultStore), [1, 0, 1, 1]
    records = [{"example_id": ex.id, "correct": True} for ex in split]
    programs.save({tuple(runs): (records, 0.2)}, 1, 2)
    programs.save({tuple(runs): (records[:4], 0.9)}, 1, 2)
    assert programs.load(runs, 1, 2, [ex.id for ex in split]) == (records, 0.2)
    assert programs.load(runs, 1, 2, [ex.id for ex in split[:4]]) == (records[:4], 0.9)
    assert programs.load(runs, 1, 2, [ex.id for ex in split[:2]]) == (records[:2], None)  # never measured


# ---- 3. one YAML loader for every file a user writes -------------------------------------------


def test_task_spec_yaml_goes_through_the_config_loader(toy_spec: Spec, tmp_path: Path) -> None:
    path = _write_spec(tmp_path, toy_spec())
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "context: 'Q: {question}'\n", encoding="utf-8")  # a second context: last won
    _refused(path, str(path), "duplicate key 'context'", "line ")
    path.write_text(text.replace("name: toy", "name: toy\nsplits: {train: 5e-1, val: 5.0e-1}"), encoding="utf-8")
    assert len(load_task(path, "train")) + len(load_task(path, "val")) == 40  # YAML 1.2 floats, as in configs


# ---- 4. bounded messages -----------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=False):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines[:levels]) + "\n"


def test_alias_bombs_and_huge_values_give_one_short_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb() + "name: *i\ncontext: *i\n", encoding="utf-8")
    assert bomb.stat().st_size < 700
    _refused(bomb, str(bomb), "aliases expand")
    (tmp_path / "loop.yaml").write_text("name: &n [*n]\n", encoding="utf-8")
    _refused(tmp_path / "loop.yaml", "recursively")
    small = tmp_path / "small.yaml"  # a few aliases are fine; a value too big to quote is cut
    small.write_text("name: toy\ndescription: [&b [1, 2], *b, *b]\nsource: {path: x.jsonl}\ncontext: Q\n"
                     "choices: c\ngold: g\n", encoding="utf-8")
    with pytest.raises(TaskError, match="not found"):
        load_task(small, "all")
    _refused({"name": "toy", "context": ["x" * 1000] * 100_000, "source": "x", "choices": "c", "gold": "g"},
             "'context' must be a string template", "...")
    assert len(shorten("y" * 10**7)) < 120 and "10,000,000 chars" in shorten("y" * 10**7)


# ---- 5. data files that name the file, the line and the problem --------------------------------


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("empty.jsonl", "", ["the file is empty"]),
        ("blank.jsonl", "\n\n\n", ["only blank lines"]),
        ("bad.jsonl", None, ["line 3, column 15", "not valid JSON", "oops"]),
        ("list.json", '[{"qid": "a"},\n {"qid": "b"},]', ["line 2, column 15", "not valid JSON"]),
        ("header.csv", "qid,question,choices,key\n", ["header line but no data rows"]),
    ],
    ids=["empty", "blank-lines", "bad-jsonl-line", "bad-json-list", "csv-header-only"],
)
def test_data_file_problems_name_the_file_and_line(toy_spec: Spec, toy_rows: Callable[..., list], tmp_path: Path,
                                                   name: str, content: str | None, fragments: list[str]) -> None:
    path = tmp_path / name
    if content is None:
        good = [json.dumps(r) for r in toy_rows(4)]
        content = "\n".join([*good[:2], '{"qid": "r2", oops}', *good[2:]]) + "\n"
    path.write_text(content, encoding="utf-8")
    _refused(toy_spec(source={"path": str(path)}), f"cannot read data file {path}", *fragments)


# ---- 7. rows too long for the model: refused before any layer runs -----------------------------


class _CharTokenizer:
    """One token per character (ids 3..96)."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        encode = lambda t: [3 + ord(c) % 94 for c in t]  # noqa: E731
        return {"input_ids": encode(text) if isinstance(text, str) else [encode(t) for t in text]}

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + (int(i) - 3) % 94) for i in ids if int(i) >= 3)


@pytest.fixture
def short_lm(monkeypatch: pytest.MonkeyPatch) -> LayerModel:
    """A tiny model that takes 32 positions, whose layer calls fail the test."""
    from tests.conftest import tiny_hf_model

    lm = LayerModel(tiny_hf_model("llama", 2, max_position_embeddings=32), _CharTokenizer(), name="tiny-32")

    def no_layers(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a layer ran on a row the model cannot take")

    monkeypatch.setattr(lm, "run_layer", no_layers)
    return lm


def test_rows_too_long_for_the_model_are_refused_before_any_layer(short_lm: LayerModel) -> None:
    fits = MCExample("toy/ok", "Q: 1+1?", (" 2", " 3"), 0)  # 7 + 2 positions
    long = MCExample("toy/long", "Q: " + "x" * 26, (" yes", " no"), 0)  # 29 + 4 = 33 > 32
    for call in (lambda: check_fits(short_lm, [fits, long]), lambda: score_packed(short_lm, [fits, long]),
                 lambda: packed_inputs(short_lm, pack_questions(short_lm.tokenizer, [long, fits]))):  # engine path
        with pytest.raises(InputTooLongError) as err:
            call()
        message = str(err.value)
        assert isinstance(err.value, ConfigError) and len(message) < SHORT, message
        for fragment in ("'toy/long'", "context (29 tokens) + longest choice (4 tokens)", "33 positions", "at most 32"):
            assert fragment in message, message
    check_fits(short_lm, [fits])  # a set that fits passes

    prompt = GenExample("gsm/1", "x" * 20, "1")
    with pytest.raises(InputTooLongError, match=r"'gsm/1': prompt \(20 tokens\) \+ max_new_tokens 13 = 33"):
        generate_answers(short_lm, [prompt], max_new_tokens=13)
    with pytest.raises(TaskError, match="'gsm/2': empty prompt"):
        GenExample("gsm/2", "  ", "1")
