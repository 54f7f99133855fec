"""gsm8k with the real model: greedy answers under programs, cached decoding equals stock HF."""

import pytest
import torch

from polar_rl.program import Program
from polar_rl.tasks import GenExample, load_task
from polar_rl.tasks.generative_scoring import generate_answers, stop_token_ids

pytestmark = pytest.mark.real


def test_full_program_answer_equals_stock_greedy_generate(real_model):
    ex = load_task("gsm8k", "test").examples[0]
    lm = real_model
    [ours] = generate_answers(lm, [ex], None, max_new_tokens=24)
    ids = lm.tokenizer(ex.context, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        stock = lm.model.generate(ids, max_new_tokens=24, do_sample=False,
                                  eos_token_id=stop_token_ids(lm.tokenizer, ex.stop), pad_token_id=lm.pad_token_id)
    text = lm.tokenizer.decode(stock[0, ids.shape[1]:], skip_special_tokens=True)
    assert ours.text == text.split("\n\n")[0].split("Question:")[0]
    assert ours.correct == (ours.prediction == ex.answer)


def test_batched_left_padded_answers_equal_one_at_a_time(real_model):
    examples = list(load_task("gsm8k", "test").examples[:2])
    program = Program.from_runs([1] * 12 + [0, 0] + [2] + [1] * 15, 30)
    batched = generate_answers(real_model, examples, program, max_new_tokens=12, batch_size=2)
    single = [generate_answers(real_model, [ex], program, max_new_tokens=12)[0] for ex in examples]
    assert [r.text for r in batched] == [r.text for r in single]


def test_answer_extraction_scores_a_planted_answer(real_model):
    """A context that forces the answer: the pipeline extracts and matches the number."""
    ex = GenExample("toy/1", "Question: Repeat: So the answer is 42.\nAnswer: So the answer is", "42", ("\n\n",))
    [r] = generate_answers(real_model, [ex], None, max_new_tokens=4)
    assert r.prediction == "42" and r.correct, r.text  # the planted answer is found and scored right
