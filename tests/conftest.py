"""Shared fixtures: tiny random models for fast unit tests, the real model for integration tests."""

from __future__ import annotations

import pytest
import torch

from polar_rl.models.adapter import LayerModel

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox")


def tiny_hf_model(family: str, num_layers: int = 4, attn: str = "sdpa") -> torch.nn.Module:
    """A tiny random causal LM of a family, built from its config (hidden size 16)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(vocab_size=97, max_position_embeddings=128)
    if family == "llama":
        cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                          num_key_value_heads=2, **common)
        model = LlamaForCausalLM(cfg)
    elif family == "mistral":
        cfg = MistralConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers,
                            num_attention_heads=4, num_key_value_heads=2, **common)
        model = MistralForCausalLM(cfg)
    elif family == "qwen3":
        cfg = Qwen3Config(hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=4, **common)
        model = Qwen3ForCausalLM(cfg)
    elif family == "qwen2":
        cfg = Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                          num_key_value_heads=2, **common)
        model = Qwen2ForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=16, n_layer=num_layers, n_head=4, vocab_size=97, n_positions=128)
        model = GPT2LMHeadModel(cfg)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers,
                            num_attention_heads=4, **common)
        model = GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(family)
    model.config._attn_implementation = attn
    return model.eval()


def tiny_layer_model(family: str = "llama", num_layers: int = 4, attn: str = "sdpa") -> LayerModel:
    return LayerModel(tiny_hf_model(family, num_layers, attn), tokenizer=None, name=f"tiny-{family}")


@pytest.fixture(scope="session")
def real_model() -> LayerModel:
    """SmolLM2-135M-Instruct from the embedded GGUF (converted once into the cache folder)."""
    from polar_rl.models import load_model

    return load_model("smollm2-135m")
