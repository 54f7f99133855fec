"""LayerModel: drive a pretrained causal LM layer by layer from outside.

This is the ONLY module that touches transformers internals (embeddings, positions, masks, the
decoder-layer call signature, the final norm, the head, the cache argument). That contract changes
between versions (4.x layers returned tuples and took ``past_key_value``; 5.24 returns a tensor
and takes ``cache``), so everything version-specific lives here.

Data flow: input_ids -> ``embed`` -> ``run_layers`` (any sequence of layer indices, the program's
``layer_calls``) -> ``norm`` -> ``head``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polar_rl.models.program_cache import ProgramCache
from polar_rl.program import Program

#: model_type values verified against the stock forward in tests.
KNOWN_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox")
_LAYER_LIST_NAMES = ("layers", "h", "blocks")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
_CACHE_KWARGS = ("cache", "layer_past", "past_key_values")


class AdapterError(ValueError):
    """A model whose layout the adapter cannot drive."""


@dataclass(frozen=True)
class LayerInputs:
    """What every layer call of one forward shares: mask, positions, rotary embeddings.

    mask: attention mask in the format the model's attention implementation expects, or None
    (plain causal). position_ids: (B, T). position_embeddings: rotary (cos, sin), each (B, T, D).
    """

    mask: torch.Tensor | None
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None

    def select(self, rows: torch.Tensor) -> LayerInputs:
        """The same inputs for a subset of the batch rows (index tensor)."""
        pe = self.position_embeddings
        return LayerInputs(
            mask=None if self.mask is None else self.mask.index_select(0, rows),
            position_ids=self.position_ids.index_select(0, rows),
            position_embeddings=None if pe is None else (pe[0].index_select(0, rows), pe[1].index_select(0, rows)),
        )


@dataclass(frozen=True)
class _Parts:
    base: nn.Module
    embed: nn.Module
    learned_positions: nn.Module | None
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    rotary: nn.Module | None
    cache_kwarg: str | None


def _locate_parts(model: nn.Module) -> _Parts:
    cls = type(model).__name__
    prefix = getattr(model, "base_model_prefix", "model")
    base = getattr(model, prefix, None)
    if not isinstance(base, nn.Module):
        raise AdapterError(f"{cls}: no base model at attribute {prefix!r} (base_model_prefix)")
    layers = next(
        (getattr(base, n) for n in _LAYER_LIST_NAMES if isinstance(getattr(base, n, None), nn.ModuleList)), None
    )
    if layers is None or len(layers) == 0:
        raise AdapterError(
            f"{cls}: no decoder layer list found (looked for {prefix}.{'/'.join(_LAYER_LIST_NAMES)} as an "
            f"nn.ModuleList); polar-rl needs a standard decoder layout"
        )
    norm = next((getattr(base, n) for n in _NORM_NAMES if isinstance(getattr(base, n, None), nn.Module)), None)
    if norm is None:
        raise AdapterError(f"{cls}: no final norm found (looked for {prefix}.{'/'.join(_NORM_NAMES)})")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise AdapterError(f"{cls}: no LM head (get_output_embeddings() returned None); need a *ForCausalLM model")
    params = inspect.signature(layers[0].forward).parameters
    cache_kwarg = next((n for n in _CACHE_KWARGS if n in params), None)
    wpe = getattr(base, "wpe", None)
    return _Parts(
        base=base,
        embed=model.get_input_embeddings(),
        learned_positions=wpe if isinstance(wpe, nn.Embedding) else None,
        layers=layers,
        norm=norm,
        head=head,
        rotary=getattr(base, "rotary_emb", None),
        cache_kwarg=cache_kwarg,
    )


class LayerModel:
    """A causal LM that runs any sequence of its layers.

    Attributes: ``num_layers``, ``hidden_size``, ``tokenizer``, ``name``, ``model`` (the HF model).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "model", model_hash: str = "") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.model_hash = model_hash
        self.config = model.config
        self.parts = _locate_parts(model)
        self.num_layers = len(self.parts.layers)
        self.hidden_size = int(self.config.hidden_size)
        self.attn_implementation = getattr(self.config, "_attn_implementation", None) or "eager"
        if self.attn_implementation not in ("sdpa", "eager"):
            raise AdapterError(
                f"attention implementation {self.attn_implementation!r} is not supported (polar-rl builds "
                f"custom masks for packed scoring); load the model with attn_implementation='sdpa' or 'eager'"
            )

    # ---- properties -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", type(self.model).__name__))

    @property
    def vocab_size(self) -> int:
        return int(self.parts.head.weight.shape[0])

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        return int(pad) if pad is not None else 0

    # ---- pieces ---------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) input hidden states (learned positions added where the model has them)."""
        hidden = self.parts.embed(input_ids)
        if self.parts.learned_positions is not None:
            hidden = hidden + self.parts.learned_positions(position_ids).to(hidden.device)
        return hidden

    def layer_inputs(self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None) -> LayerInputs:
        rotary = None
        if self.parts.rotary is not None:
            rotary = self.parts.rotary(hidden, position_ids=position_ids)
        return LayerInputs(mask=mask, position_ids=position_ids, position_embeddings=rotary)

    def causal_mask(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> torch.Tensor | None:
        """The stock causal(+padding) mask, built exactly as the stock forward builds it."""
        from transformers.masking_utils import create_causal_mask

        return create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
            position_ids=position_ids,
        )

    def mask_from_allowed(self, allowed: torch.Tensor) -> torch.Tensor:
        """(B, Q, K) bool "query may attend key" -> the 4D mask the attention implementation takes."""
        allowed = allowed[:, None, :, :]  # (B, 1, Q, K)
        if self.attn_implementation == "sdpa":
            return allowed
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min)

    def run_layer(
        self, layer: int, hidden: torch.Tensor, inputs: LayerInputs, cache: ProgramCache | None = None
    ) -> torch.Tensor:
        """One decoder-layer call: (B, T, H) -> (B, T, H)."""
        kwargs: dict[str, Any] = {
            "attention_mask": inputs.mask,
            "position_ids": inputs.position_ids,
            "use_cache": cache is not None,
        }
        if inputs.position_embeddings is not None:
            kwargs["position_embeddings"] = inputs.position_embeddings
        if cache is not None:
            if self.parts.cache_kwarg is None:
                raise AdapterError(f"{type(self.parts.layers[layer]).__name__} takes no cache argument")
            kwargs[self.parts.cache_kwarg] = cache
        out = self.parts.layers[layer](hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def run_layers(
        self, hidden: torch.Tensor, calls: Sequence[int], inputs: LayerInputs, cache: ProgramCache | None = None
    ) -> torch.Tensor:
        """Run layer calls in order; with a cache, call i uses cache slot i (one slot per (layer, repeat))."""
        for slot, layer in enumerate(calls):
            if cache is not None:
                cache.slot = slot
            hidden = self.run_layer(layer, hidden, inputs, cache)
        return hidden

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.parts.norm(hidden)

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """(..., H) final-normed states -> (..., V) logits."""
        return self.parts.head(normed)

    def program_calls(self, program: Program | None) -> tuple[int, ...]:
        if program is None:
            return tuple(range(self.num_layers))
        if program.num_layers != self.num_layers:
            raise AdapterError(
                f"program is for {program.num_layers} layers but {self.name} has {self.num_layers}"
            )
        return program.layer_calls

    # ---- whole forwards -------------------------------------------------------------------
    @staticmethod
    def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) 0/1 mask -> (B, T) positions counting real tokens only (left padding safe)."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    @torch.inference_mode()
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        program: Program | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) final-normed hidden states under a program (None = full model)."""
        calls = self.program_calls(program)
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(input_ids.shape[1], device=self.device)[None, :]
            else:
                position_ids = self.positions_from_mask(attention_mask)
        hidden = self.embed(input_ids, position_ids)
        mask = self.causal_mask(hidden, attention_mask, position_ids)
        inputs = self.layer_inputs(hidden, position_ids, mask)
        return self.norm(self.run_layers(hidden, calls, inputs))

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        program: Program | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) logits; ``program=None`` or the full program equals the stock forward."""
        with torch.inference_mode():
            return self.head(self.hidden_states(input_ids, attention_mask, program, position_ids))

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        program: Program | None = None,
        max_new_tokens: int = 32,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        use_cache: bool = True,
        return_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding under a program. (B, T) -> (B, T + n).

        Prompts may be left-padded (pass ``attention_mask``). With ``use_cache`` every executed
        (layer, repeat) keeps its own KV slot and positions come from the token count, never from a
        layer's cache length; ``use_cache=False`` recomputes the whole sequence each step (the
        reference the cached path must equal). Rows that produced EOS keep emitting the pad token.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        calls = self.program_calls(program)
        ids = input_ids.to(self.device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device).long()
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=self.device)
        cache = ProgramCache(len(calls)) if use_cache else None
        step_logits: list[torch.Tensor] = []
        new_ids = ids  # what is fed this step (the whole prompt first, then one token)
        for _ in range(max_new_tokens):
            last = self._forward_step(ids if cache is None else new_ids, mask, calls, cache)
            step_logits.append(last)
            token = last.argmax(-1)  # (B,)
            token = torch.where(done, torch.full_like(token, self.pad_token_id), token)
            if eos:
                done |= torch.isin(token, torch.tensor(sorted(eos), device=self.device))
            new_ids = token[:, None]
            ids = torch.cat([ids, new_ids], dim=1)
            mask = torch.cat([mask, torch.ones_like(new_ids)], dim=1)
            if bool(done.all()):
                break
        if return_logits:
            logits = torch.stack(step_logits, dim=1) if step_logits else ids.new_zeros((ids.shape[0], 0, self.vocab_size))
            return ids, logits
        return ids

    def _forward_step(
        self, new_ids: torch.Tensor, mask: torch.Tensor, calls: Sequence[int], cache: ProgramCache | None
    ) -> torch.Tensor:
        """Feed ``new_ids`` (the last tokens of the sequence ``mask`` covers); (B, V) logits at the end.

        Without a cache ``new_ids`` is the whole sequence (recomputation); with one, only the new tokens.
        """
        q_len = new_ids.shape[1]
        positions = self.positions_from_mask(mask)[:, -q_len:]  # from the token count, not a cache length
        hidden = self.embed(new_ids, positions)
        inputs = self.layer_inputs(hidden, positions, self.mask_from_allowed(self._allowed(mask, q_len)))
        return self.head(self.norm(self.run_layers(hidden, calls, inputs, cache)[:, -1]))

    @staticmethod
    def _allowed(mask: torch.Tensor, q_len: int) -> torch.Tensor:
        """(B, K) key validity -> (B, Q, K) causal & valid, for the last ``q_len`` tokens as queries."""
        k_len = mask.shape[1]
        q_idx = torch.arange(k_len - q_len, k_len, device=mask.device)[:, None]  # (Q, 1)
        k_idx = torch.arange(k_len, device=mask.device)[None, :]  # (1, K)
        allowed = (k_idx <= q_idx)[None] & mask.bool()[:, None, :]  # (B, Q, K)
        return allowed | (k_idx == q_idx)[None]  # a padded query still sees itself (no empty rows)


__all__ = ["AdapterError", "KNOWN_FAMILIES", "LayerInputs", "LayerModel"]
