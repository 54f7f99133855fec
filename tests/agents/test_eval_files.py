"""An evaluation's files are one set (issue 20, section 1): a kill or a full disk between its files
never leaves a mix of two evaluations, and a reader that finds an incomplete set says so in one line.

A tiny random model (a local folder with a byte-level tokenizer) trains one short run; each test
re-evaluates a copy of it on 4, then 8 train questions and asserts what is left on disk.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polar_rl.agents import cli
from polar_rl.agents.report import EVAL_DIR, check_evaluation, eval_files, read_evaluation
from polar_rl.config import ConfigError
from tests.agents.helpers import POLAR_RL, REPO, cli_env, tiny_model_dir

SPEC = REPO / "configs" / "tasks" / "example_spec.yaml"
TRAIN = ["--config", "configs/smoke.yaml", "--task.name", str(SPEC), "--env.block_size", "1",
         "--training.total_timesteps", "64", "--training.eval_freq", "64", "--training.checkpoint_freq", "64",
         "--training.progress_bar", "false", "--baselines.search_limit", "4"]
EVALUATE = ["--split", "train", "--no-progress"]  # the spec's train split: 12 questions
SET = "eval_train.json"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval_files")


@pytest.fixture(scope="module")
def evaluated_run(root: Path) -> Path:
    """A tiny finished run, then evaluated on 4 train questions (the set every test starts from)."""
    model = tiny_model_dir(root / "tinymodel")
    proc = subprocess.run([*POLAR_RL, "train", *TRAIN, "--model.name", str(model), "--output_dir", str(root / "runs")],
                          cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (root / "runs").iterdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLAR_RL_CACHE", str(root / "cache"))
        assert cli.main(["evaluate", str(run), *EVALUATE, "--limit", "4"]) == 0
    return run


@pytest.fixture
def run(evaluated_run: Path, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the evaluated run (its links copied as links), with the shared cache."""
    monkeypatch.setenv("POLAR_RL_CACHE", str(root / "cache"))
    copy = tmp_path / evaluated_run.name
    shutil.copytree(evaluated_run, copy, symlinks=True)
    return copy


def _env(root: Path) -> dict[str, str]:
    return cli_env(POLAR_RL_CACHE=str(root / "cache"))


def _snapshot(run: Path) -> dict[str, bytes]:
    """What a reader of the set sees: each name's content through the run folder."""
    return {name: (run / name).read_bytes() for name in eval_files(run, SET).names if (run / name).is_file()}


def _n(run: Path) -> int:
    result, records = read_evaluation(eval_files(run, SET))
    assert len({r["example_id"] for r in records}) == result["n"]
    return result["n"]


def _leftovers(run: Path) -> list[str]:
    hidden = [p for p in (run / EVAL_DIR).glob(".*")] + list(run.glob(".*.link"))
    return sorted(p.name for p in hidden)


def _make_plain(run: Path) -> None:
    """The layout before sets: every file a plain file in the run folder, no ``evals/``."""
    for name in eval_files(run, SET).names:
        data = (run / name).read_bytes()
        (run / name).unlink()
        (run / name).write_bytes(data)
    shutil.rmtree(run / EVAL_DIR / "eval_train")


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1, err
    return lines[0]


# what a killed writer had done: `at` is the function it was inside when SIGKILL came
_KILLER = """
import os, signal, sys, tempfile
from pathlib import Path
import polar_rl.agents.plots, polar_rl.agents.report

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def kill_between_renames(tmp, target):  # replace_folder moved the old set aside, then died
    target = Path(target)
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(aside / target.name)
    kill()

at = sys.argv[1]
if at == "plot_layers":  # records, report and pareto plot written
    polar_rl.agents.plots.plot_layers = kill
elif at == "swap":
    polar_rl.agents.report.replace_folder = kill_between_renames
elif at == "link":  # the old plain files moved into evals/, the first of them linked
    real = polar_rl.agents.report._link
    def link_once(*args):
        real(*args)
        kill()
    polar_rl.agents.report._link = link_once
from polar_rl.agents import cli
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("before", "at"), [("first", "plot_layers"), ("earlier set", "plot_layers"),
                                            ("earlier set", "swap"), ("plain files", "link")])
def test_an_evaluation_killed_between_its_files_leaves_the_earlier_set_whole(
        run: Path, root: Path, before: str, at: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The defect: a re-evaluation killed between files left its new records and report (8 questions)
    beside the old eval json and plots (4 questions), the old records gone, nothing flagged."""
    if before == "first":
        for name in eval_files(run, SET).names:
            (run / name).unlink()
        shutil.rmtree(run / EVAL_DIR / "eval_train")
    elif before == "plain files":
        _make_plain(run)
    seen = _snapshot(run)
    proc = subprocess.run([sys.executable, "-c", _KILLER, at, "evaluate", str(run), *EVALUATE, "--limit", "8"],
                          cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    if at != "swap":  # killed in replace_folder: the earlier set is aside until the next writer puts it back
        assert _snapshot(run) == seen
    code = cli.main(["evaluate", str(run), "--checkpoint", str(run / "no_such.zip")])  # recovers, then fails
    assert code == 2 and "no_such.zip" in capsys.readouterr().err
    assert _snapshot(run) == seen and not _leftovers(run)
    assert check_evaluation(eval_files(run, SET)) is None
    if before == "first":
        assert not seen and not (run / SET).exists()  # nothing that looks like an evaluation
    else:
        assert _n(run) == 4
    assert cli.main(["evaluate", str(run), *EVALUATE, "--limit", "8"]) == 0  # and the next one completes
    assert _n(run) == 8 and not _leftovers(run) and all((run / n).is_symlink() for n in eval_files(run, SET).names)


@pytest.mark.parametrize("before", ["earlier set", "first"])
def test_disk_full_mid_evaluation_is_one_line_and_keeps_the_earlier_set(
        run: Path, before: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The defect: ENOSPC while writing the evaluation's files was a traceback, after some were replaced."""
    import polar_rl.agents.plots as plots

    if before == "first":
        for name in eval_files(run, SET).names:
            (run / name).unlink()
        shutil.rmtree(run / EVAL_DIR / "eval_train")
    seen = _snapshot(run)

    def disk_full(fig, path: Path) -> None:
        path.write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(plots, "_save", disk_full)
    code = cli.main(["evaluate", str(run), *EVALUATE, "--limit", "8"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert str(run) in line and "OSError" in line and "No space left on device" in line, line
    assert _snapshot(run) == seen and not _leftovers(run)
    assert check_evaluation(eval_files(run, SET)) is None
    assert (before == "first") == (not (run / SET).exists())


def _records_of(run: Path, n: int) -> str:
    """Records of ``n`` questions in the set's format (the first question's, renumbered)."""
    first = [json.loads(x) for x in (run / "eval_train_records.jsonl").read_text().splitlines()][:1]
    return "".join(json.dumps({**first[0], "method": m, "example_id": f"q{i}"}) + "\n"
                   for m in json.loads((run / SET).read_text())["methods"] for i in range(n))


@pytest.mark.parametrize(("damage", "expected"), [
    ("plain, records of another evaluation", "eval_train_records.jsonl holds 8 questions of full, eval_train.json 4"),
    ("a plot missing", "layers_train.png is missing"),
    ("records of another evaluation", "eval_train_records.jsonl is not the file eval_train.json lists"),
    ("no result json", "without eval_train.json"),
])
def test_a_reader_given_an_incomplete_set_says_so(run: Path, damage: str, expected: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's state (new records beside an old eval json) and its relatives: one line naming the
    folder and the file; ``read_evaluation`` refuses the set, ``evaluate`` warns and replaces it."""
    files = eval_files(run, SET)
    folder = run / EVAL_DIR / "eval_train"
    if damage.startswith("plain"):  # as written before sets: no file list in the json
        _make_plain(run)
        result = json.loads((run / SET).read_text())
        del result["files"]
        (run / SET).write_text(json.dumps(result))
        assert check_evaluation(files) is None  # a whole set of that layout passes
        (run / "eval_train_records.jsonl").write_text(_records_of(run, 8))
    elif damage == "a plot missing":
        (folder / "layers_train.png").unlink()
    elif damage == "records of another evaluation":
        (folder / "eval_train_records.jsonl").write_text(_records_of(run, 4))
    else:
        (folder / SET).unlink()
    line = check_evaluation(files)
    assert line is not None and "\n" not in line
    assert line.startswith(f"{run}: the evaluation eval_train is incomplete") and expected in line, line
    with pytest.raises(ConfigError, match="is incomplete"):
        read_evaluation(files)
    assert cli.main(["evaluate", str(run), *EVALUATE, "--limit", "4"]) == 0
    assert f"warning: {line}; this evaluation replaces it" in capsys.readouterr().out
    assert check_evaluation(files) is None and _n(run) == 4
