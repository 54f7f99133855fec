"""Exactness invariants: identity program == stock forward; cached generation == recomputation."""

import pytest
import torch

from polar_rl.models.adapter import AdapterError, LayerModel
from polar_rl.program import Program
from tests.conftest import TINY_FAMILIES, tiny_hf_model, tiny_layer_model


def _batch(padding: str | None):
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (3, 9))
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 6:] = 0
        mask[2, 4:] = 0
    elif padding == "left":
        mask[1, :3] = 0
        mask[2, :5] = 0
    return ids, mask


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_identity_program_equals_stock_forward(family, padding):
    lm = tiny_layer_model(family, num_layers=4)
    ids, mask = _batch(padding)
    positions = LayerModel.positions_from_mask(mask)
    kwargs = {} if padding is None else {"attention_mask": mask, "position_ids": positions}
    with torch.inference_mode():
        stock = lm.model(input_ids=ids, **kwargs).logits
    ours_full = lm.logits(ids, mask if padding else None, program=Program.full(4), position_ids=positions)
    ours_none = lm.logits(ids, mask if padding else None, position_ids=positions)
    valid = mask.bool()
    torch.testing.assert_close(ours_full[valid], stock[valid], rtol=0, atol=0)
    torch.testing.assert_close(ours_none[valid], stock[valid], rtol=0, atol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_eager_attention_identity(family):
    lm = tiny_layer_model(family, num_layers=3, attn="eager")
    ids, mask = _batch("right")
    with torch.inference_mode():
        stock = lm.model(input_ids=ids, attention_mask=mask).logits
    ours = lm.logits(ids, mask)
    torch.testing.assert_close(ours[mask.bool()], stock[mask.bool()])


def test_programs_change_the_output():
    lm = tiny_layer_model("llama", num_layers=4)
    ids, _ = _batch(None)
    full = lm.logits(ids)
    skipped = lm.logits(ids, program=Program.from_runs([1, 0, 1, 1], 4))
    looped = lm.logits(ids, program=Program.from_runs([1, 2, 1, 1], 4))
    assert not torch.allclose(full, skipped) and not torch.allclose(full, looped)


PROGRAMS = {
    "skip_layer0": [0, 1, 1, 1, 1, 1],
    "skip_middle": [1, 1, 0, 0, 1, 1],
    "loop": [1, 2, 1, 2, 1, 1],
    "skip0_and_loop": [0, 2, 2, 0, 1, 2],
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cached_generation_equals_recomputation(family, name):
    lm = tiny_layer_model(family, num_layers=6)
    program = Program.from_runs(PROGRAMS[name], 6)
    ids, mask = _batch("left")
    cached, cached_logits = lm.generate(ids, program, max_new_tokens=8, attention_mask=mask, return_logits=True)
    plain, plain_logits = lm.generate(
        ids, program, max_new_tokens=8, attention_mask=mask, use_cache=False, return_logits=True
    )
    assert torch.equal(cached, plain)
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-4, rtol=0)


def test_no_cache_generation_matches_logits_of_full_sequence():
    """The recomputation reference itself equals a plain forward over the generated sequence."""
    lm = tiny_layer_model("llama", num_layers=6)
    program = Program.from_runs(PROGRAMS["skip0_and_loop"], 6)
    ids = torch.randint(3, 97, (1, 5))
    out, logits = lm.generate(ids, program, max_new_tokens=4, use_cache=False, return_logits=True)
    ref = lm.logits(out[:, :-1], program=program)[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert torch.equal(out[0, ids.shape[1]:], ref[0].argmax(-1))


def test_shared_slot_cache_would_differ():
    """Guard that the test above can fail: one slot per physical layer computes something else on loops."""
    from polar_rl.models.program_cache import ProgramCache

    lm = tiny_layer_model("llama", num_layers=6)
    program = Program.from_runs(PROGRAMS["loop"], 6)
    ids = torch.randint(3, 97, (1, 6))
    _, good = lm.generate(ids, program, max_new_tokens=4, return_logits=True)

    class PhysicalSlotCache(ProgramCache):  # the PoLar / Dr.LLM layout
        def update(self, k, v, layer_idx=None, *a, **kw):
            self.slot = layer_idx
            return super().update(k, v)

    original = ProgramCache.__init__
    import polar_rl.models.adapter as adapter

    adapter.ProgramCache = lambda n: PhysicalSlotCache(6)  # type: ignore[assignment]
    try:
        _, bad = lm.generate(ids, program, max_new_tokens=4, return_logits=True)
        differs = not torch.allclose(good, bad, atol=1e-4)
    except RuntimeError:  # the looped layer's doubled keys no longer fit the mask
        differs = True
    finally:
        adapter.ProgramCache = ProgramCache  # type: ignore[assignment]
    assert original is ProgramCache.__init__
    assert differs


def test_program_for_other_layer_count_is_rejected():
    lm = tiny_layer_model("llama", num_layers=4)
    with pytest.raises(AdapterError, match="program is for 6 layers but tiny-llama has 4"):
        lm.logits(torch.ones(1, 3, dtype=torch.long), program=Program.full(6))


def test_model_without_layer_list_is_rejected():
    model = tiny_hf_model("llama", 2)
    model.model.layers = torch.nn.Sequential(*model.model.layers)  # not a ModuleList any more
    with pytest.raises(AdapterError, match="LlamaForCausalLM: no decoder layer list"):
        LayerModel(model, None)


def test_unsupported_attention_implementation_is_rejected():
    model = tiny_hf_model("llama", 2)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(AdapterError, match="flash_attention_2"):
        LayerModel(model, None)
