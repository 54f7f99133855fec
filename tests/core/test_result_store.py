"""The one per-example result store (polar_rl/search/store.py): keys, edits, timings, concurrency."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from polar_rl.search.store import MAX_TIMINGS, ResultStore, StoreKey

KEY = StoreKey("hash-a", "float32", "cpu", "rc v1; record")


def _rows(n: int, tag: str = "") -> list[tuple[str, str, dict]]:
    return [(f"q{i}", f"h{i}{tag}", {"example_id": f"q{i}", "correct": i % 2 == 0, "tag": tag}) for i in range(n)]


def test_round_trip_and_every_part_of_the_key_separates_results(tmp_path: Path) -> None:
    store = ResultStore(KEY, tmp_path)
    assert store.save("p1", _rows(3))
    hashes = {f"q{i}": f"h{i}" for i in range(3)}
    assert store.load("p1", hashes) == {i: r for i, _, r in _rows(3)}
    assert store.load("p2", hashes) == {}  # another program
    for other in (StoreKey("hash-b", "float32", "cpu", KEY.scoring), StoreKey("hash-a", "bfloat16", "cpu", KEY.scoring),
                  StoreKey("hash-a", "float32", "cuda:0", KEY.scoring), StoreKey("hash-a", "float32", "cpu", "v2")):
        assert ResultStore(other, tmp_path).load("p1", hashes) == {}, other
    assert StoreKey("m", "float32", "cuda:1", "s").device == "cuda"  # the device kind, not the index


def test_an_edited_example_is_never_served_and_its_old_row_is_replaced(tmp_path: Path) -> None:
    store = ResultStore(KEY, tmp_path)
    store.save("p1", _rows(2))
    edited = {"q0": "h0-new", "q1": "h1"}
    assert store.load("p1", edited) == {"q1": _rows(2)[1][2]}
    assert store.stale("p1", edited) == 1
    store.save("p1", [("q0", "h0-new", {"example_id": "q0", "correct": False, "tag": "new"})])
    assert store.load("p1", edited)["q0"]["tag"] == "new" and store.stale("p1", edited) == 0
    assert store.load("p1", {"q0": "h0"}) == {}  # the old content's row is gone


def test_a_save_touches_only_its_rows(tmp_path: Path) -> None:
    store = ResultStore(KEY, tmp_path)
    store.save("p1", _rows(4))
    store.save("p1", [("q2", "h2", {"example_id": "q2", "correct": True, "tag": "again"})])
    got = store.load("p1", {f"q{i}": f"h{i}" for i in range(4)})
    assert [got[f"q{i}"]["tag"] for i in range(4)] == ["", "", "again", ""]


def test_timings_are_kept_per_question_set_newest_only(tmp_path: Path) -> None:
    store = ResultStore(KEY, tmp_path)
    store.save_seconds("p1", "whole-split", 0.117)
    store.save_seconds("p1", "limit-8", 0.317)
    assert store.load_seconds("p1", "whole-split") == pytest.approx(0.117)  # a subset never replaces it
    assert store.load_seconds("p1", "limit-8") == pytest.approx(0.317)
    for i in range(MAX_TIMINGS):
        store.save_seconds("p1", f"set-{i}", float(i))
    assert store.load_seconds("p1", "whole-split") is None and store.load_seconds("p1", f"set-{MAX_TIMINGS - 1}") == 15.0
    assert store.load_seconds("p2", "set-1") is None


def _writer(root: str, start: int) -> None:
    store = ResultStore(KEY, Path(root))
    for i in range(start, start + 40):
        assert store.save("p1", [(f"q{i}", f"h{i}", {"example_id": f"q{i}"})])


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    """Two processes saving row by row at once (``sweep --parallel``): every row of both is there."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), start)) for start in (0, 40)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = ResultStore(KEY, tmp_path).load("p1", {f"q{i}": f"h{i}" for i in range(80)})
    assert len(got) == 80


def test_a_cache_that_cannot_be_opened_warns_once_and_costs_nothing(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = ResultStore(KEY, blocker / "cache")  # nothing can be created under a file
    assert store.save("p1", _rows(2)) is False
    assert store.load("p1", {"q0": "h0"}) == {} and store.load_seconds("p1", "x") is None
    out = capsys.readouterr().out
    assert out.count("warning: result cache") == 1 and "cannot open it" in out


def test_a_legacy_file_is_imported_once_per_version(tmp_path: Path) -> None:
    legacy = tmp_path / "old.json"
    legacy.write_text("{}")
    store = ResultStore(KEY, tmp_path)
    assert store.import_once(legacy, [("p1", "q0", "h0", {"example_id": "q0"})]) is True
    assert store.import_once(legacy, [("p1", "q1", "h1", {"example_id": "q1"})]) is False  # same file: not again
    assert store.load("p1", {"q0": "h0", "q1": "h1"}) == {"q0": {"example_id": "q0"}}
