"""Shared fixtures: tiny random models for fast unit tests, the real model for integration tests."""

from __future__ import annotations

import pytest
import torch

from polar_rl.models.adapter import LayerModel

#: Tiny random configs, one per family (hidden 16-32, 2-6 layers): what each exercises is in its comment.
#: Sliding windows are 4 tokens so 9-token tests see them bite.
_TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("Llama", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)),
    # every layer slides (config.sliding_window, no layer_types)
    "mistral": ("Mistral", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                                sliding_window=4)),
    # layer_types: full below max_window_layers, sliding above
    "qwen2": ("Qwen2", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                            use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    # QK-norm, explicit head_dim, mixed layer types
    "qwen3": ("Qwen3", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=4, use_sliding_window=True, sliding_window=4, max_window_layers=2)),
    # learned positions, Conv1D, tied head
    "gpt2": ("GPT2", dict(n_embd=16, n_head=4, n_positions=128)),
    # parallel attention + MLP, partial rotary
    "gpt_neox": ("GPTNeoX", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4)),
    # partial rotary, fused qkv, sliding window
    "phi3": ("Phi3", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                          sliding_window=4, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 0.5})),
    # alternating sliding/full, attention and final-logit soft-capping, scaled embedding, eager only
    "gemma2": ("Gemma2", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=8, sliding_window=4, query_pre_attn_scalar=8, final_logit_softcapping=0.5,
                              attn_logit_softcapping=2.0)),
    # one rotary module per layer type (position_embeddings chosen per layer)
    "gemma3_text": ("Gemma3Text", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                                       final_logit_softcapping=0.5,
                                       rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                                        "full_attention": {"rope_type": "default", "rope_theta": 1e4}})),
    # post-norm, QK-norm
    "olmo2": ("Olmo2", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2)),
    # alternating layers (rotary on sliding layers only), parallel block, logit_scale
    "cohere2": ("Cohere2", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                sliding_window=4, logit_scale=0.5)),
    # embedding/residual/attention multipliers, logits_scaling
    "granite": ("Granite", dict(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                                embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3,
                                logits_scaling=4.0)),
    # partial rotary, QK layernorm, parallel residual
    "stablelm": ("StableLm", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  qk_layernorm=True, use_parallel_residual=True)),
    # rotary Falcon: multi-query, parallel attention + MLP
    "falcon": ("Falcon", dict(hidden_size=32, num_attention_heads=4, alibi=False)),
    # ALiBi Falcon (falcon-rw): the bias is built from key positions
    "falcon_alibi": ("Falcon", dict(hidden_size=32, num_attention_heads=4, alibi=True, multi_query=False,
                                    parallel_attn=False)),
}
TINY_FAMILIES = tuple(_TINY_CONFIGS)


def tiny_hf_model(family: str, num_layers: int = 4, attn: str = "sdpa", **overrides) -> torch.nn.Module:
    """A tiny random causal LM of a family, built from its config (vocab 97).

    ``attn`` falls back to eager for families without SDPA support (Gemma-2), as the loader does.
    """
    import transformers

    prefix, kwargs = _TINY_CONFIGS[family]
    torch.manual_seed(0)
    layers_key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    kwargs = {**kwargs, layers_key: num_layers, "vocab_size": 97, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2, **overrides}
    if family != "gpt2":
        kwargs.setdefault("max_position_embeddings", 128)
    if family == "gemma3_text":  # alternate sliding and full layers (the default pattern is 5:1)
        kwargs.setdefault("layer_types", ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)])
    cfg = getattr(transformers, f"{prefix}Config")(**kwargs)
    cls = getattr(transformers, "GPT2LMHeadModel" if family == "gpt2" else f"{prefix.removesuffix('Text')}ForCausalLM")
    model = cls(cfg)
    model.config._attn_implementation = attn if (attn == "eager" or cls._supports_sdpa) else "eager"
    return model.eval()


def tiny_layer_model(family: str = "llama", num_layers: int = 4, attn: str = "sdpa", **overrides) -> LayerModel:
    model = tiny_hf_model(family, num_layers, attn, **overrides)
    return LayerModel(model, tokenizer=None, name=f"tiny-{family}")


@pytest.fixture(scope="session")
def real_model() -> LayerModel:
    """SmolLM2-135M-Instruct from the embedded GGUF (converted once into the cache folder)."""
    from polar_rl.models import load_model

    return load_model("smollm2-135m")
