"""Packed choices equal the naive computation; the reference accuracy of SmolLM2 on ARC-Easy."""

import pytest
import torch

from polar_rl.program import Program
from polar_rl.tasks import MCExample, load_task
from polar_rl.tasks.multiple_choice import pack_questions, packed_lengths, score_naive, score_packed

pytestmark = pytest.mark.real


def test_block_mask_lets_a_choice_see_context_and_itself_only(real_model):
    ex = MCExample("t/1", "Question: Sky colour?\nAnswer:", (" blue", " green sea"), 0)
    batch = pack_questions(real_model.tokenizer, [ex])
    allowed = batch.allowed[0]
    c = int(batch.context_last[0]) + 1
    first = c  # first token of choice 0
    n0 = len(real_model.tokenizer(" blue", add_special_tokens=False)["input_ids"])
    second = c + n0  # first token of choice 1
    assert allowed[second, :c].all()  # sees the whole context
    assert not allowed[second, first:second].any()  # never sees choice 0
    assert batch.position_ids[0, second] == batch.position_ids[0, first] == c  # same positions
    assert not allowed[:c, c:].any()  # the context never sees choices


@pytest.mark.parametrize("program_runs", [None, [1] * 10 + [0] * 5 + [2] * 3 + [1] * 12])
def test_packed_equals_naive(real_model, program_runs):
    examples = list(load_task("arc_easy", "val").examples[:12])
    program = None if program_runs is None else Program.from_runs(program_runs, 30)
    packed = score_packed(real_model, examples, program)
    naive, naive_tokens = score_naive(real_model, examples, program)
    for a, b in zip(packed.logprobs, naive.logprobs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert torch.equal(packed.pred, naive.pred)
    batch = pack_questions(real_model.tokenizer, examples)
    assert batch.num_tokens <= 0.5 * naive_tokens


def test_reference_accuracy_on_arc_easy(real_model):
    """Full model ~0.48 on the first 100 ARC-Easy validation questions (0-shot rc); skipping 20-24 drops it."""
    from polar_rl.tasks.sources import read_requests

    by_id = {ex.id: ex for ex in load_task("arc_easy", "all").examples}
    rows = read_requests("arc_easy", "rc_0shot", first_choice_only=True)[:100]  # validation, file order
    examples = [by_id[f"arc_easy/{r['native_id']}"] for r in rows]
    assert len(examples) == 100
    skip = Program.from_runs([0 if 20 <= i <= 24 else 1 for i in range(30)], 30)
    acc = {}
    for name, program in (("full", None), ("skip20_24", skip)):
        correct = []
        for lo in range(0, 100, 25):
            correct += score_packed(real_model, examples[lo : lo + 25], program).correct.tolist()
        acc[name] = sum(correct) / len(correct)
    assert abs(acc["full"] - 0.48) <= 0.04
    assert acc["skip20_24"] <= acc["full"] - 0.1


def test_packed_lengths_are_the_packed_rows_real_tokens(real_model):
    examples = list(load_task("arc_easy", "val").examples[:24])
    batch = pack_questions(real_model.tokenizer, examples, real_model.pad_token_id)
    lengths = packed_lengths(real_model.tokenizer, examples)
    assert lengths == batch.lengths.tolist() and len(set(lengths)) > 1
