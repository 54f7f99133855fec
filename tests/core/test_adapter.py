"""Exactness invariants, per family: identity program == stock forward; cached generation == recomputation.

Every family in ``TINY_FAMILIES`` (tests/conftest.py) runs every test here on a tiny random config.
"""

import copy

import pytest
import torch

from polar_rl.models.adapter import KNOWN_FAMILIES, AdapterError, LayerModel
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
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_custom_mask_path_equals_stock_forward(family, padding):
    """The path packed scoring and decoding use (masks from a bool "allowed" matrix, sliding windows
    from positions, ALiBi from key positions) equals the stock forward."""
    lm = tiny_layer_model(family, num_layers=4)
    ids, mask = _batch(padding)
    positions = LayerModel.positions_from_mask(mask)
    with torch.inference_mode():
        stock = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        hidden = lm.embed(ids, positions)
        inputs = lm.layer_inputs(hidden, positions, lm.mask_from_allowed(LayerModel._allowed(mask, ids.shape[1])))
        ours = lm.head(lm.norm(lm.run_layers(hidden, range(4), inputs)))
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], stock[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_known_families_pass_the_self_check(family):
    """The generic self-check (embeddings, each layer, logits, custom masks, one cached step) passes."""
    assert family.removesuffix("_alibi") in KNOWN_FAMILIES
    tiny_layer_model(family, num_layers=3).check_against_stock()


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


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cached_generation_equals_recomputation_in_fp64(family):
    """In fp64 the two paths agree to rounding (~1e-16), far below the fp32 tolerance above. Eager
    attention (Gemma-2 here) is the exception: HF's eager_attention_forward takes the softmax in fp32,
    which leaves ~1e-8 between the paths whatever the model's dtype."""
    lm = LayerModel(tiny_hf_model(family, num_layers=6).double(), tokenizer=None, name=f"tiny-{family}-fp64")
    program = Program.from_runs(PROGRAMS["skip0_and_loop"], 6)
    ids, mask = _batch("left")
    cached, cached_logits = lm.generate(ids, program, max_new_tokens=8, attention_mask=mask, return_logits=True)
    plain, plain_logits = lm.generate(
        ids, program, max_new_tokens=8, attention_mask=mask, use_cache=False, return_logits=True
    )
    assert cached_logits.dtype == torch.float64 and torch.equal(cached, plain)
    atol = 1e-9 if lm.attn_implementation == "sdpa" else 1e-6
    torch.testing.assert_close(cached_logits, plain_logits, atol=atol, rtol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_no_cache_generation_matches_logits_of_full_sequence(family):
    """The recomputation reference itself equals a plain forward over the generated sequence."""
    lm = tiny_layer_model(family, num_layers=6)
    program = Program.from_runs(PROGRAMS["skip0_and_loop"], 6)
    ids = torch.randint(3, 97, (1, 5))
    out, logits = lm.generate(ids, program, max_new_tokens=4, use_cache=False, return_logits=True)
    ref = lm.logits(out[:, :-1], program=program)[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert torch.equal(out[0, ids.shape[1]:], ref[0].argmax(-1))


def test_shared_slot_cache_would_differ(monkeypatch):
    """Guard that the test above can fail: one slot per physical layer computes something else on loops."""
    import polar_rl.models.adapter as adapter
    from polar_rl.models.program_cache import ProgramCache

    lm = tiny_layer_model("llama", num_layers=6)
    program = Program.from_runs(PROGRAMS["loop"], 6)
    ids = torch.randint(3, 97, (1, 6))
    _, good = lm.generate(ids, program, max_new_tokens=4, return_logits=True)

    class PhysicalSlotCache(ProgramCache):  # the PoLar / Dr.LLM layout
        def update(self, k, v, layer_idx=None, *a, **kw):
            self.slot = layer_idx
            return super().update(k, v)

    monkeypatch.setattr(adapter, "ProgramCache", lambda n: PhysicalSlotCache(6))
    try:
        _, bad = lm.generate(ids, program, max_new_tokens=4, return_logits=True)
        differs = not torch.allclose(good, bad, atol=1e-4)
    except RuntimeError:  # the looped layer's doubled keys no longer fit the mask
        differs = True
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
    with pytest.raises(AdapterError, match="LlamaForCausalLM: attention implementation 'flash_attention_2' cannot"):
        LayerModel(model, None)


# ---- per-layer attention types ----------------------------------------------------------------


def test_mistral_sliding_window_is_applied():
    """The issue's repro: sliding_window 8 on 24 tokens. Identity logits equal the stock forward, and
    the window matters (the same weights without a window give other logits), so the test can fail."""
    lm = tiny_layer_model("mistral", num_layers=3, sliding_window=8)
    ids = torch.randint(3, 97, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        stock = lm.model(input_ids=ids).logits
        unwindowed = tiny_hf_model("mistral", 3, sliding_window=None)(input_ids=ids).logits
    assert (stock - unwindowed).abs().max() > 1e-3
    torch.testing.assert_close(lm.logits(ids), stock, rtol=0, atol=0)
    _, steps = lm.generate(ids[:, :16], max_new_tokens=8, use_cache=True, return_logits=True)
    _, plain = lm.generate(ids[:, :16], max_new_tokens=8, use_cache=False, return_logits=True)
    torch.testing.assert_close(steps, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[:, 0], stock[:, 15], atol=1e-5, rtol=0)


def _rebuilt(lm: LayerModel, calls: tuple[int, ...]) -> torch.nn.Module:
    """A stock model whose layer list is the program's calls, each keeping its own layer type."""
    ref = copy.deepcopy(lm.model)
    layers = ref.model.layers
    ref.model.layers = torch.nn.ModuleList([layers[i] for i in calls])
    ref.config.num_hidden_layers = len(calls)
    if getattr(ref.config, "layer_types", None) is not None:
        ref.config.layer_types = [lm.layer_types[i] for i in calls]
    return ref


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "cohere2"])
@pytest.mark.parametrize("name", ["skip_layer0", "skip_middle", "loop"])
def test_each_call_keeps_its_layer_type(family, name):
    """Skip/loop programs equal the stock forward of a model rebuilt from the program's calls, where
    call i runs with its own layer's mask and rotary (not those of the i-th layer)."""
    lm = tiny_layer_model(family, num_layers=6)
    assert len(set(lm.layer_types)) == (1 if family == "mistral" else 2)
    program = Program.from_runs(PROGRAMS[name], 6)
    ids, mask = _batch("left")
    positions = LayerModel.positions_from_mask(mask)
    with torch.inference_mode():
        ref = _rebuilt(lm, program.layer_calls)
        stock = ref(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    ours = lm.logits(ids, mask, program=program, position_ids=positions)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], stock[valid], rtol=0, atol=0)


def test_unsupported_layer_type_is_rejected():
    model = tiny_hf_model("qwen2", 2)
    model.config.layer_types = ["full_attention", "chunked_attention"]
    with pytest.raises(AdapterError, match=r"Qwen2ForCausalLM: layer types \['chunked_attention'\] are not supported"):
        LayerModel(model, None)


# ---- the generic path checks itself -----------------------------------------------------------


def test_unknown_family_that_follows_the_layout_passes_the_check():
    """Phi (parallel block, partial rotary, final_layernorm) is not in KNOWN_FAMILIES: checked, accepted."""
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    cfg = PhiConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                    max_position_embeddings=64)
    model = PhiForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    lm = LayerModel(model, None)  # runs the check (phi is not a known family)
    assert lm.model_type not in KNOWN_FAMILIES
    ids = torch.randint(3, 97, (2, 7))
    with torch.inference_mode():
        torch.testing.assert_close(lm.logits(ids), model(input_ids=ids).logits, rtol=0, atol=0)


def test_unknown_family_that_differs_is_refused_with_the_place():
    """Bloom normalises its embeddings inside the base forward (and uses ALiBi): refused, naming where."""
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=97, hidden_size=16, n_layer=2, n_head=4))
    model.config._attn_implementation = "eager"
    with pytest.raises(AdapterError) as err:
        LayerModel(model, None)
    msg = str(err.value)
    assert "BloomForCausalLM (model_type 'bloom')" in msg and "first difference at the embeddings" in msg
    assert "open an issue with the model id" in msg and "check=False" in msg


def test_unknown_family_whose_layer_call_fails_names_the_call():
    """A layer that needs an input the adapter does not pass: the raw TypeError becomes a clear error."""
    model = tiny_hf_model("llama", 2)
    model.config.model_type = "needs_cache_llama"
    layer = model.model.layers[1]
    original = layer.forward

    def forward(hidden_states, *, cache, **kwargs):  # a required argument the stock forward always passes
        return original(hidden_states, cache=cache, **kwargs)

    layer.forward = forward
    with pytest.raises(AdapterError, match=r"LlamaForCausalLM \(model_type 'needs_cache_llama'\): the call of layer 1 "
                                          r"\(LlamaDecoderLayer\) failed \(TypeError: .*cache"):
        LayerModel(model, None)


def _scaled_embedding_model():
    """Stand-in for an unknown family whose base forward scales the embeddings (the adapter cannot know)."""
    from transformers import LlamaForCausalLM

    model = tiny_hf_model("llama", 3)
    model.config.model_type = "scaled_llama"
    embed = model.model.embed_tokens
    original = type(model.model).forward

    def forward(self, input_ids=None, inputs_embeds=None, **kw):
        return original(self, inputs_embeds=embed(input_ids) * 2.0, **kw)

    model.model.forward = forward.__get__(model.model)
    assert isinstance(model, LlamaForCausalLM)
    return model


def test_unknown_family_that_differs_names_the_first_difference():
    with pytest.raises(AdapterError, match=r"LlamaForCausalLM \(model_type 'scaled_llama'\).*first difference at the "
                                          r"embeddings \(input of layer 0\)"):
        LayerModel(_scaled_embedding_model(), None)


def test_check_can_be_skipped():
    lm = LayerModel(_scaled_embedding_model(), None, check=False)
    assert lm.num_layers == 3


def test_check_finds_a_wrong_head():
    """Gemma-2 logits are soft-capped after the head: without it the check names the logits."""
    lm = tiny_layer_model("gemma2", num_layers=2)
    lm._final_softcap = None
    with pytest.raises(AdapterError, match="first difference at the logits"):
        lm.check_against_stock()


# ---- bad input ----------------------------------------------------------------------------------


def test_encoder_decoder_is_rejected():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=97, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    with pytest.raises(AdapterError, match="T5ForConditionalGeneration is an encoder-decoder model"):
        LayerModel(model, None)


def test_bidirectional_attention_is_rejected():
    model = tiny_hf_model("gemma3_text", 2)
    model.config.use_bidirectional_attention = True
    with pytest.raises(AdapterError, match="use_bidirectional_attention"):
        LayerModel(model, None)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 97)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="</s>")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma2", "cohere2", "falcon_alibi"])
def test_packed_choices_equal_naive_rows_under_windows(family):
    """Packed scoring (choices restart at the context's end position) equals one row per choice:
    sliding windows and ALiBi follow positions, not row indices."""
    from polar_rl.tasks import MCExample
    from polar_rl.tasks.multiple_choice import score_naive, score_packed

    lm = tiny_layer_model(family, num_layers=4)
    lm.tokenizer = _word_tokenizer()
    rng = torch.Generator().manual_seed(5)

    def words(n):
        return " ".join(f"w{int(i)}" for i in torch.randint(3, 97, (n,), generator=rng))

    examples = [MCExample(f"t/{i}", words(6 + 2 * i), tuple(" " + words(2 + j) for j in range(3)), 1) for i in range(3)]
    program = Program.from_runs([1, 2, 0, 1], 4)
    for prog in (None, program):
        packed = score_packed(lm, examples, prog)
        naive, _ = score_naive(lm, examples, prog)
        for a, b in zip(packed.logprobs, naive.logprobs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_readme_supported_models_is_in_step_with_the_tests():
    """The README's table lists exactly the tested families (KNOWN_FAMILIES == the tiny configs here)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Supported models", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
    tested = {family.removesuffix("_alibi") for family in TINY_FAMILIES}
    assert listed == tested == set(KNOWN_FAMILIES)
