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
    _save_tiny_tokenizer(tmp_path)
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
    # fp64 removes the rounding noise: the cached path is exact, not just close (fp64 rounding is ~1e-16;
    # 1e-4 would be the fp32 noise level again). SmolLM2 loads with SDPA, which keeps fp64 throughout;
    # HF's eager attention takes its softmax in fp32 and would leave ~1e-8 (tests/core/test_adapter.py).
    import copy

    from polar_rl.models.adapter import LayerModel

    lm64 = LayerModel(copy.deepcopy(lm.model).double(), lm.tokenizer, name="smollm2-fp64")
    c, lc = lm64.generate(ids, program, max_new_tokens=6, return_logits=True)
    d, ld = lm64.generate(ids, program, max_new_tokens=6, use_cache=False, return_logits=True)
    assert lm64.attn_implementation == "sdpa"
    assert torch.equal(c, d) and torch.equal(c, a)
    torch.testing.assert_close(lc, ld, atol=1e-9, rtol=0)


# ---- model coverage: attention choice, self-check, bad input (issue 11) -------------------------


def _save_tiny_tokenizer(path) -> None:
    """A word-level tokenizer beside a tiny model, so the folder loads like a real one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 97)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(path)


def test_gemma2_loads_with_eager_attention(tmp_path):
    """Gemma-2 has no SDPA support (soft-capping): the loader picks eager instead of failing."""
    from tests.conftest import tiny_hf_model

    tiny_hf_model("gemma2", 2).save_pretrained(tmp_path)
    _save_tiny_tokenizer(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.attn_implementation == "eager" and lm.layer_types == ("sliding_attention", "full_attention")
    ids = torch.randint(3, 97, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(lm.logits(ids), lm.model(input_ids=ids).logits, rtol=0, atol=0)


def test_sdpa_is_chosen_where_supported(tmp_path):
    from tests.conftest import tiny_hf_model

    tiny_hf_model("mistral", 2).save_pretrained(tmp_path)
    _save_tiny_tokenizer(tmp_path)
    assert load_model(str(tmp_path)).attn_implementation == "sdpa"


def test_encoder_decoder_is_refused_before_loading_weights(tmp_path):
    from transformers import T5Config

    from polar_rl.models.adapter import AdapterError

    T5Config(vocab_size=97, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8).save_pretrained(tmp_path)
    # no weights in the folder: the error must come from the config alone
    with pytest.raises(AdapterError, match=r"is an encoder-decoder model \(T5Config \(model_type 't5'\)\)"):
        load_model(str(tmp_path))


def test_unknown_family_is_checked_on_load_unless_told_not_to(tmp_path):
    """Bloom is not a known family: load_model runs the self-check (and refuses it); check=False skips it."""
    from transformers import BloomConfig, BloomForCausalLM

    from polar_rl.models.adapter import AdapterError

    BloomForCausalLM(BloomConfig(vocab_size=97, hidden_size=16, n_layer=2, n_head=4)).save_pretrained(tmp_path)
    _save_tiny_tokenizer(tmp_path)
    with pytest.raises(AdapterError, match="BloomForCausalLM .*first difference at the embeddings"):
        load_model(str(tmp_path))
    assert load_model(str(tmp_path), check=False).num_layers == 2


def test_chunked_gguf_is_joined_once_and_verified(tmp_path, monkeypatch):
    """An embedded GGUF split across packages is joined into the cache folder and checked against
    the main package's SHA256SUMS; bad chunks are an error, never a silently wrong model."""
    import hashlib

    from polar_rl.models import loading

    parts = [b"GGUF-part-one|", b"part-two|", b"three"]
    name = "toy.gguf"
    dirs = {}
    for i, data in enumerate(parts):
        d = tmp_path / f"part{i}"
        (d / "data").mkdir(parents=True)
        (d / "data" / f"{name}.part{i:02d}").write_bytes(data)
        dirs[f"toy_part{i}"] = d
    main = tmp_path / "main"
    (main / "data").mkdir(parents=True)
    (main / "data" / "SHA256SUMS").write_text(f"{hashlib.sha256(b''.join(parts)).hexdigest()}  {name}\n")
    dirs["toy_main"] = main
    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(loading.EMBEDDED_MODELS, "toy", ("toy_main", name))
    monkeypatch.setitem(loading.CHUNKED_MODELS, "toy", ("toy_part0", "toy_part1", "toy_part2"))
    monkeypatch.setattr(loading, "_package_dir", lambda spec, package: dirs[package])
    path = loading.embedded_gguf_path("toy")
    assert path == tmp_path / "cache" / "gguf" / name and path.read_bytes() == b"".join(parts)
    (dirs["toy_part1"] / "data" / f"{name}.part01").write_bytes(b"tampered|")
    assert loading.embedded_gguf_path("toy") == path  # the verified joined copy is reused
    path.unlink()
    with pytest.raises(ModelSpecError, match="the joined chunks have sha256"):
        loading.embedded_gguf_path("toy")
    assert not path.exists() and not list(path.parent.glob(".toy.gguf*"))  # no temp file left


def test_model_folder_trust(tmp_path, monkeypatch):
    """Issue 20: a folder without tokenizer files says so (it loaded an empty tokenizer, or asked for
    sentencepiece); a folder named like an embedded model is a path, hashed by its content."""
    from polar_rl.models.loading import EMBEDDED_MODELS, TOKENIZER_FILES, model_hash
    from tests.conftest import tiny_hf_model

    bare = tmp_path / "bare"
    tiny_hf_model("qwen2", 2).save_pretrained(bare)
    with pytest.raises(ModelSpecError) as err:
        load_model(str(bare))
    message = str(err.value)
    assert "has no tokenizer files" in message and str(bare) in message and len(message) < 400
    assert all(name in message for name in TOKENIZER_FILES)

    monkeypatch.setenv("POLAR_RL_CACHE", str(tmp_path / "cache"))
    for name in EMBEDDED_MODELS:  # a plain checkpoint the user converted and named like the embedded one
        folder = tmp_path / "mine" / name
        tiny_hf_model("llama", 2).save_pretrained(folder)
        _save_tiny_tokenizer(folder)
        lm = load_model(str(folder))
        assert lm.name == name and lm.num_layers == 2 and lm.model_hash == model_hash(str(folder))
    assert not (tmp_path / "cache").exists()  # the embedded cache was never read nor made
