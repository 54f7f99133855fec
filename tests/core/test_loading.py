import json

import pytest
import torch

from polar_rl.models.loading import ModelSpecError, ensure_pad_token, load_model, resolve_dtype, resolve_model
from polar_rl.program import Program


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("smollm3-9000", "unknown model spec 'smollm3-9000'"),
        ("./no/such/dir", "model path './no/such/dir' does not exist"),
        ("", "non-empty string"),
    ],
)
def test_bad_specs_name_the_value(spec, needle):
    with pytest.raises(ModelSpecError, match=needle.replace("(", r"\(")):
        resolve_model(spec)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelSpecError, match="holds no config.json"):
        resolve_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(ModelSpecError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_tokenizer_without_pad_token_gets_eos():
    class Tok:
        pad_token_id = None
        pad_token = None
        eos_token = "</s>"

        def __setattr__(self, k, v):
            object.__setattr__(self, k, v)
            if k == "pad_token":
                object.__setattr__(self, "pad_token_id", 2)

    tok = Tok()
    ensure_pad_token(tok)
    assert tok.pad_token == "</s>" and tok.pad_token_id == 2


def test_tokenizer_with_nothing_to_pad_with_is_an_error():
    class Tok:
        pad_token_id = None
        eos_token = unk_token = bos_token = None

    with pytest.raises(ModelSpecError, match="no pad, eos, unk or bos"):
        ensure_pad_token(Tok())


def test_local_directory_loads_and_runs(tmp_path):
    """A saved local model directory loads as a LayerModel without any network."""
    from tests.conftest import tiny_hf_model

    tiny_hf_model("qwen2", 2).save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.num_layers == 2
    assert lm.name == tmp_path.name


@pytest.mark.real
def test_embedded_model_identity_and_cache(real_model):
    """SmolLM2-135M: 30 layers, 576 hidden; identity program equals the stock forward bit for bit."""
    lm = real_model
    assert (lm.num_layers, lm.hidden_size, lm.model_type) == (30, 576, "llama")
    enc = lm.tokenizer(["Question: Which gas do plants absorb?\nAnswer:", "Hi"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        stock = lm.model(**enc).logits
    ours = lm.logits(enc["input_ids"], enc["attention_mask"], program=Program.full(30))
    valid = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[valid], stock[valid], rtol=0, atol=0)
    from polar_rl.models.loading import cache_root

    manifest = json.loads((cache_root() / "models" / "smollm2-135m" / "polar_rl_manifest.json").read_text())
    assert len(manifest["weights_sha256"]) == 64


@pytest.mark.real
def test_embedded_model_cached_generation_under_loops_and_skips(real_model):
    lm = real_model
    runs = [0] + [1] * 9 + [2] * 3 + [0] * 3 + [1] * 14
    program = Program.from_runs(runs, 30)
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    a, la = lm.generate(ids, program, max_new_tokens=6, return_logits=True)
    b, lb = lm.generate(ids, program, max_new_tokens=6, use_cache=False, return_logits=True)
    assert torch.equal(a, b)
    # fp32: 30+ layer calls with loops accumulate ~1e-5 relative rounding noise on logits of size ~30
    # (stock HF's own cached-vs-recomputed gap is ~5e-5 on the identity program).
    torch.testing.assert_close(la, lb, atol=1e-3, rtol=0)
    # fp64 removes the rounding noise: the cached path is exact, not just close.
    import copy

    from polar_rl.models.adapter import LayerModel

    lm64 = LayerModel(copy.deepcopy(lm.model).double(), lm.tokenizer, name="smollm2-fp64")
    c, lc = lm64.generate(ids, program, max_new_tokens=6, return_logits=True)
    d, ld = lm64.generate(ids, program, max_new_tokens=6, use_cache=False, return_logits=True)
    assert torch.equal(c, d) and torch.equal(c, a)
    torch.testing.assert_close(lc, ld, atol=1e-4, rtol=0)
