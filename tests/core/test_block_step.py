"""The shared block step (polar_rl/block_step.py): run counts, length buckets, repeats, the finite
check and the KV hook, on a tiny model and packed multiple-choice rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polar_rl.block_step import BlockRunner, PartialPrograms, block_runs, length_buckets
from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.models.program_cache import ProgramCache
from polar_rl.tasks.multiple_choice import pack_questions, packed_inputs
from tests.serving.helpers import tiny_lm, tiny_task

TOL = dict(atol=1e-5, rtol=1e-5)  # different batch shapes round differently


@pytest.fixture(scope="module")
def lm() -> LayerModel:
    return tiny_lm()


@pytest.fixture(scope="module")
def packed(lm: LayerModel) -> tuple[torch.Tensor, LayerInputs, torch.Tensor]:
    """(N, T, H) embedded packed questions of different lengths, their layer inputs and (N,) lengths."""
    batch = pack_questions(lm.tokenizer, list(tiny_task().examples[:4]), lm.pad_token_id)
    with torch.inference_mode():
        hidden, inputs = packed_inputs(lm, batch)
    assert len(set(batch.lengths.tolist())) > 1  # the buckets have something to crop
    return hidden, inputs, batch.lengths


def _alone(lm: LayerModel, hidden: torch.Tensor, inputs: LayerInputs, row: int, calls: list[int]) -> torch.Tensor:
    """(T, H): one row through ``calls`` on its own."""
    idx = torch.tensor([row])
    return lm.run_layers(hidden[idx], calls, inputs.select(idx))[0]


def test_block_runs_maps_actions_and_ends_rows() -> None:
    runs = block_runs(np.array([0, 1, 2, 2, 1]), 3, np.array([False, False, False, True, True]))
    assert runs.tolist() == [0, 1, 3, 0, 0] and runs.dtype.kind == "i"


def test_partial_programs_record_what_masks_and_features_read() -> None:
    progs = PartialPrograms.start(3)
    progs.record(np.array([0, 1, 2]), np.array([0, 1, 2]), block_size=5)
    progs.record(np.array([1, 2, 0]), np.array([1, 2, 0]), block_size=5)
    assert progs.runs == [[0, 1], [1, 2], [2, 0]]
    assert progs.calls.tolist() == [5, 15, 10] and progs.loops.tolist() == [0, 1, 1]
    assert progs.prev_action.tolist() == [1, 2, 0] and not progs.failed.any()


def _old_length_buckets(lengths: list[int], rows: list[int], slack: float) -> list[list[int]]:
    """The engine's definition before the move (quadratic), as the reference."""
    buckets: list[list[int]] = []
    for i in sorted(rows, key=lambda i: -lengths[i]):
        if buckets:
            cur = buckets[-1]
            if lengths[cur[0]] * (len(cur) + 1) <= (1 + slack) * (sum(lengths[j] for j in cur) + lengths[i]):
                cur.append(i)
                continue
        buckets.append([i])
    return buckets


@pytest.mark.parametrize("seed", range(5))
def test_length_buckets_keep_padding_under_the_slack(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 130, size=20).tolist()
    rows = sorted(rng.choice(20, size=14, replace=False).tolist())
    buckets = length_buckets(torch.tensor(lengths), rows, 0.25)
    assert buckets == _old_length_buckets(lengths, rows, 0.25)
    assert sorted(i for b in buckets for i in b) == rows
    for b in buckets:
        assert lengths[b[0]] * len(b) <= 1.25 * sum(lengths[i] for i in b)


@torch.inference_mode()
def test_buckets_equal_full_width_on_real_tokens_and_leave_other_rows(lm: LayerModel, packed) -> None:
    hidden, inputs, lengths = packed
    runner = BlockRunner(lm, block_size=2)
    cropped = runner.run_rows(1, hidden.clone(), inputs, [0, 2, 3], lengths)
    full = runner.run_rows(1, hidden.clone(), inputs, [0, 2, 3])
    assert torch.equal(cropped[1], hidden[1]) and torch.equal(full[1], hidden[1])
    for i in (0, 2, 3):
        n = int(lengths[i])
        torch.testing.assert_close(cropped[i, :n], full[i, :n], **TOL)
        torch.testing.assert_close(full[i], _alone(lm, hidden, inputs, i, [2, 3]), **TOL)
    assert runner.layer_seconds > 0


@torch.inference_mode()
def test_step_runs_each_row_its_run_count(lm: LayerModel, packed) -> None:
    hidden, inputs, lengths = packed
    runs = np.array([1, 2, 0, 2])
    rows = np.flatnonzero(runs)
    out, ok = BlockRunner(lm, block_size=1).step(0, hidden.clone(), inputs, runs, rows, lengths)
    assert ok.tolist() == [True, True, True]
    assert torch.equal(out[2], hidden[2])
    for i in rows.tolist():
        n = int(lengths[i])
        torch.testing.assert_close(out[i, :n], _alone(lm, hidden, inputs, i, [0] * int(runs[i]))[:n], **TOL)


@torch.inference_mode()
def test_step_zeroes_and_reports_nonfinite_rows(lm: LayerModel, packed) -> None:
    hidden, inputs, lengths = packed
    poisoned = hidden.clone()
    poisoned[1, 2] = float("inf")
    runs = np.array([1, 1, 0, 1])
    out, ok = BlockRunner(lm, block_size=2).step(0, poisoned, inputs, runs, np.array([0, 1, 3]), lengths)
    assert ok.tolist() == [True, False, True]
    assert (out[1] == 0).all() and torch.isfinite(out).all()


@torch.inference_mode()
def test_step_without_rows_runs_nothing(lm: LayerModel, packed) -> None:
    hidden, inputs, _ = packed
    runner = BlockRunner(lm, block_size=1)
    out, ok = runner.step(0, hidden, inputs, np.zeros(4, dtype=int), np.zeros(0, dtype=np.int64))
    assert out is hidden and ok.shape == (0,) and runner.layer_seconds == 0


@torch.inference_mode()
def test_kv_hook_gives_each_row_its_layer_calls_in_program_order(lm: LayerModel, packed) -> None:
    """What serving's prefill relies on: row i's hook entries equal its own cached run, slot by slot."""
    hidden, inputs, _ = packed
    kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(4)]

    def take(rows: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        assert keys.shape[0] == values.shape[0] == len(rows)
        for j, i in enumerate(rows):
            kv[i].append((keys[j : j + 1], values[j : j + 1]))

    runs = np.array([2, 1, 0, 1])
    runner = BlockRunner(lm, block_size=2)
    with_hook, _ = runner.step(0, hidden.clone(), inputs, runs, np.flatnonzero(runs), on_kv=take)
    without, _ = runner.step(0, hidden.clone(), inputs, runs, np.flatnonzero(runs))
    torch.testing.assert_close(with_hook, without, atol=1e-6, rtol=1e-6)
    assert [len(k) for k in kv] == [4, 2, 0, 2]
    calls = [0, 1, 0, 1]
    cache = ProgramCache(len(calls))
    lm.run_layers(hidden[:1], calls, inputs.select(torch.tensor([0])), cache)
    for slot, (k, v) in enumerate(kv[0]):
        torch.testing.assert_close(k, cache.keys[slot], **TOL)
        torch.testing.assert_close(v, cache.values[slot], **TOL)
