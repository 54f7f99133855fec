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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polar_rl.config import ConfigError
from polar_rl.models.program_cache import ProgramCache
from polar_rl.program import Program

#: model_type values verified against the stock forward in tests (identity parity and cached decoding).
KNOWN_FAMILIES = (
    "llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "gemma2", "gemma3_text", "olmo2",
    "cohere2", "granite", "stablelm", "falcon",
)
FULL, SLIDING = "full_attention", "sliding_attention"
_LAYER_LIST_NAMES = ("layers", "h", "blocks")
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
_CACHE_KWARGS = ("cache", "layer_past", "past_key_values")
_ISSUE_HINT = "open an issue with the model id"


class AdapterError(ValueError):
    """A model whose layout the adapter cannot drive."""


class InputTooLongError(ConfigError):
    """An input (prompt, context + choice, prompt + new tokens) longer than the model's position limit."""


#: config attributes that bound the positions a model takes, in the order they are looked up
_MAX_POSITION_NAMES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class LayerInputs:
    """What every layer call of one forward shares, keyed by layer type where layers differ.

    masks: layer type ("full_attention", "sliding_attention") -> attention mask in the format the
    attention implementation takes ((B, 1|heads, Q, K) bool for sdpa, additive float for eager), or
    None (plain causal). position_ids: (B, Q). position_embeddings: layer type -> rotary (cos, sin),
    each (B, Q, D); empty for models without rotary. alibi: (B, heads, 1, K) ALiBi bias or None.
    """

    masks: Mapping[str, torch.Tensor | None]
    position_ids: torch.Tensor
    position_embeddings: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    alibi: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor, str], torch.Tensor]) -> LayerInputs:
        """Apply ``fn(tensor, kind)`` to every tensor once (types that share a tensor keep sharing it)."""
        done: dict[int, Any] = {}

        def once(t: Any, kind: str) -> Any:
            if t is None:
                return None
            if id(t) not in done:
                done[id(t)] = tuple(fn(x, kind) for x in t) if isinstance(t, tuple) else fn(t, kind)
            return done[id(t)]

        return LayerInputs(
            masks={k: once(m, "mask") for k, m in self.masks.items()},
            position_ids=once(self.position_ids, "positions"),
            position_embeddings={k: once(pe, "rotary") for k, pe in self.position_embeddings.items()},
            alibi=once(self.alibi, "alibi"),
        )

    def select(self, rows: torch.Tensor) -> LayerInputs:
        """The same inputs for a subset of the batch rows (index tensor)."""
        return self._map(lambda t, kind: t if t.shape[0] == 1 else t.index_select(0, rows))  # size 1: broadcast

    def narrow(self, width: int) -> LayerInputs:
        """The same inputs cropped to the first ``width`` tokens (queries and keys; no cache)."""

        def crop(t: torch.Tensor, kind: str) -> torch.Tensor:
            if kind == "mask":
                return t[..., :width, :width]
            if kind == "alibi":
                return t[..., :width]
            return t[:, :width]

        return self._map(crop)


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
    if getattr(model.config, "is_encoder_decoder", False):
        raise AdapterError(
            f"{cls} is an encoder-decoder model; polar-rl drives decoder-only causal LMs (a *ForCausalLM whose "
            f"blocks form one decoder layer list)"
        )
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


def _layer_types(model: nn.Module, num_layers: int) -> tuple[str, ...]:
    """Each layer's attention type, by the rule transformers' own mask builders follow.

    ``config.layer_types`` where the config has it; else every layer slides when
    ``config.sliding_window`` is set; else every layer is full attention.
    """
    cls, config = type(model).__name__, model.config
    if getattr(config, "use_bidirectional_attention", False):
        raise AdapterError(f"{cls}: use_bidirectional_attention=True is not a causal LM; polar-rl needs causal attention")
    if getattr(config, "attention_chunk_size", None) is not None and getattr(config, "layer_types", None) is None:
        raise AdapterError(f"{cls}: chunked attention (attention_chunk_size) is not supported; {_ISSUE_HINT}")
    types = getattr(config, "layer_types", None)
    if types is None:
        types = [SLIDING if getattr(config, "sliding_window", None) is not None else FULL] * num_layers
    types = tuple(types)
    if len(types) < num_layers:
        raise AdapterError(f"{cls}: config.layer_types lists {len(types)} layers but the model has {num_layers}")
    unknown = sorted(set(types[:num_layers]) - {FULL, SLIDING})
    if unknown:
        raise AdapterError(
            f"{cls}: layer types {unknown} are not supported (polar-rl drives {FULL!r} and {SLIDING!r} "
            f"layers); {_ISSUE_HINT}"
        )
    if SLIDING in types[:num_layers] and getattr(config, "sliding_window", None) is None:
        raise AdapterError(f"{cls}: config.layer_types has sliding layers but config.sliding_window is not set")
    return types[:num_layers]


class LayerModel:
    """A causal LM that runs any sequence of its layers.

    Attributes: ``num_layers``, ``hidden_size``, ``tokenizer``, ``name``, ``model`` (the HF model),
    ``layer_types`` (each layer's attention type; a skipped or looped call keeps its layer's type).

    ``check``: run a short input through the layer-by-layer path and the stock forward and raise an
    ``AdapterError`` on any difference. None (default) checks families not in ``KNOWN_FAMILIES``;
    False skips the check (very large models).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, name: str = "model", model_hash: str = "", check: bool | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.model_hash = model_hash
        self.config: Any = model.config
        self.parts = _locate_parts(model)
        self.num_layers = len(self.parts.layers)
        self.hidden_size = int(self.config.hidden_size)
        self.attn_implementation = getattr(self.config, "_attn_implementation", None) or "eager"
        if self.attn_implementation not in ("sdpa", "eager"):
            raise AdapterError(
                f"{type(model).__name__}: attention implementation {self.attn_implementation!r} cannot take the "
                f"custom 4D masks polar-rl builds (packed scoring, per-slot cache); load the model with "
                f"attn_implementation='sdpa' or 'eager'"
            )
        self.layer_types = _layer_types(model, self.num_layers)
        self.sliding_window: int | None = getattr(self.config, "sliding_window", None) if SLIDING in self.layer_types else None
        rotary = self.parts.rotary
        self._rotary_per_type = rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters
        layer_params = inspect.signature(self.parts.layers[0].forward).parameters
        self._takes_alibi = "alibi" in layer_params
        self._alibi_slopes = self._find_alibi_slopes()
        self._embed_multiplier = getattr(self.parts.base, "embedding_multiplier", None)  # Granite
        self._logit_scale = getattr(model, "logit_scale", None)  # Cohere: logits * scale
        if not isinstance(self._logit_scale, (int, float)):
            self._logit_scale = None
        self._logits_divisor = getattr(self.config, "logits_scaling", None)  # Granite: logits / scaling
        self._final_softcap = getattr(self.config, "final_logit_softcapping", None)  # Gemma 2/3
        if check is None:
            check = self.model_type not in KNOWN_FAMILIES
        if check:
            self.check_against_stock()

    def _find_alibi_slopes(self) -> torch.Tensor | None:
        """(heads,) ALiBi slopes, bf16-rounded as the stock builder rounds them (Falcon with alibi)."""
        if not getattr(self.parts.base, "use_alibi", False):
            return None
        import sys

        build = getattr(sys.modules[type(self.parts.base).__module__], "build_alibi_tensor", None)
        if build is None:
            raise AdapterError(f"{type(self.model).__name__}: uses ALiBi but has no build_alibi_tensor; {_ISSUE_HINT}")
        heads = int(self.config.num_attention_heads)
        ones = torch.ones((1, 2), dtype=torch.long)
        return build(ones, heads, torch.float32).reshape(heads, 2)[:, 1]  # position 1 -> the slope itself

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
    def max_positions(self) -> int | None:
        """The most positions the model takes (``config.max_position_embeddings`` or its family's
        name for it); None when the config sets no limit (ALiBi models)."""
        for name in _MAX_POSITION_NAMES:
            value = getattr(self.config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def check_length(self, num_tokens: int, what: str) -> None:
        """InputTooLongError when ``num_tokens`` positions exceed :attr:`max_positions`.

        ``what`` names the input and its parts, e.g. ``"prompt (9,000 tokens) + max_new_tokens 2,000"``;
        callers check before any layer runs, so a too-long input costs no compute.
        """
        limit = self.max_positions
        if limit is not None and num_tokens > limit:
            raise InputTooLongError(f"{what} = {num_tokens:,} positions, but {self.name} takes at most {limit:,} "
                                    f"(config max positions); shorten the input")

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        return int(pad) if pad is not None else 0

    # ---- pieces ---------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) input hidden states (learned positions added where the model has them)."""
        hidden = self.parts.embed(input_ids)
        if self._embed_multiplier is not None:  # scaling outside the embedding module (Granite)
            hidden = hidden * self._embed_multiplier
        if self.parts.learned_positions is not None:
            hidden = hidden + self.parts.learned_positions(position_ids).to(hidden.device)
        return hidden

    def layer_inputs(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        key_positions: torch.Tensor | None = None,
    ) -> LayerInputs:
        """The inputs every layer call shares, from the full-attention mask.

        hidden: (B, Q, H). position_ids: (B, Q) positions of the queries. mask: the full-attention
        mask (``mask_from_allowed``; None = plain causal). key_positions: (B, K) positions of the keys
        where they are not the queries (a cache holds earlier tokens). Sliding-window layers get the
        mask restricted to keys less than ``sliding_window`` positions back; ALiBi models get the bias.
        """
        k_pos = position_ids if key_positions is None else key_positions
        masks: dict[str, torch.Tensor | None] = {}
        for kind in sorted(set(self.layer_types)):
            masks[kind] = mask if kind == FULL else self._restrict_to_window(mask, position_ids, k_pos)
        alibi = None
        if self._alibi_slopes is not None:
            alibi = self._alibi(k_pos, hidden.dtype)
            masks = {kind: self._add_alibi(m, alibi, position_ids.shape[-1], k_pos.shape[-1]) for kind, m in masks.items()}
        return LayerInputs(masks, position_ids, self._rotary(hidden, position_ids), alibi)

    def _rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Layer type -> (cos, sin): one rotary module for all types, or one per type (Gemma-3)."""
        rotary = self.parts.rotary
        if rotary is None:
            return {}
        kinds = sorted(set(self.layer_types))
        if self._rotary_per_type:
            return {kind: rotary(hidden, position_ids, layer_type=kind) for kind in kinds}
        shared = rotary(hidden, position_ids=position_ids)
        return {kind: shared for kind in kinds}

    def _restrict_to_window(
        self, mask: torch.Tensor | None, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> torch.Tensor:
        """A full-attention mask -> the sliding-window one: a query sees keys < window positions back."""
        window = int(self.sliding_window)  # type: ignore[arg-type]
        within = (q_pos[:, :, None] - k_pos[:, None, :]) < window  # (B, Q, K)
        if mask is None:  # plain causal: the queries are the last Q of the K keys
            q_len, k_len = q_pos.shape[-1], k_pos.shape[-1]
            q_idx = torch.arange(k_len - q_len, k_len, device=q_pos.device)[:, None]
            causal = torch.arange(k_len, device=q_pos.device)[None, :] <= q_idx  # (Q, K)
            return self.mask_from_allowed(causal[None] & within)
        if mask.dtype == torch.bool:
            return mask & within[:, None]
        return mask.masked_fill(~within[:, None], torch.finfo(mask.dtype).min)

    def _alibi(self, k_pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, K) key positions -> (B, heads, 1, K) ALiBi bias, rounded as the stock builder rounds it."""
        slopes = self._alibi_slopes.to(k_pos.device).bfloat16()  # type: ignore[union-attr]
        return (slopes[None, :, None] * k_pos[:, None, :]).to(dtype)[:, :, None, :]

    def _add_alibi(self, mask: torch.Tensor | None, alibi: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
        """Fold the bias into the mask as the stock Falcon forward does: (B, heads, Q, K) additive."""
        if mask is None:
            q_idx = torch.arange(k_len - q_len, k_len, device=alibi.device)[:, None]
            blocked = (torch.arange(k_len, device=alibi.device)[None, :] > q_idx)[None, None]
        elif mask.dtype == torch.bool:
            blocked = ~mask
        else:
            blocked = mask < -1
        head_dim = self.hidden_size // int(self.config.num_attention_heads)
        return torch.masked_fill(alibi / math.sqrt(head_dim), blocked, torch.finfo(alibi.dtype).min)

    def stock_inputs(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> LayerInputs:
        """The layer inputs built exactly as the stock forward builds them (causal + padding, per type)."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kwargs: dict[str, Any] = dict(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
            position_ids=position_ids,
        )
        if self._alibi_slopes is not None:  # the bias is added onto a materialised mask
            return self.layer_inputs(hidden, position_ids, create_causal_mask(**kwargs, allow_is_causal_skip=False))
        builders = {FULL: create_causal_mask, SLIDING: create_sliding_window_causal_mask}
        masks = {kind: builders[kind](**kwargs) for kind in sorted(set(self.layer_types))}
        return LayerInputs(masks, position_ids, self._rotary(hidden, position_ids))

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
        """One decoder-layer call: (B, T, H) -> (B, T, H), with the mask and rotary of the layer's own type."""
        kind = self.layer_types[layer]
        kwargs: dict[str, Any] = {
            "attention_mask": inputs.masks[kind],
            "position_ids": inputs.position_ids,
            "use_cache": cache is not None,
        }
        if kind in inputs.position_embeddings:
            kwargs["position_embeddings"] = inputs.position_embeddings[kind]
        if self._takes_alibi:
            kwargs["alibi"] = inputs.alibi
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
        """(..., H) final-normed states -> (..., V) logits, scaled and soft-capped as the stock head does."""
        logits = self.parts.head(normed)
        if self._logit_scale is not None:  # Cohere
            logits = logits * self._logit_scale
        if self._logits_divisor is not None:  # Granite
            logits = logits / self._logits_divisor
        if self._final_softcap is not None:  # Gemma 2/3
            logits = torch.tanh(logits / self._final_softcap) * self._final_softcap
        return logits

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
        inputs = self.stock_inputs(hidden, attention_mask, position_ids)
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

    # ---- self-check -----------------------------------------------------------------------
    @torch.inference_mode()
    def check_against_stock(self, tokens: int = 8) -> None:
        """Run a short input through the layer-by-layer path and the stock forward; AdapterError on any difference.

        Compares the embeddings, each layer's output (against the stock ``hidden_states``), the
        logits, then the custom-mask path and one cached decoding step. The error names the class,
        the first place the two differ (or the call that raised) and what to do.
        """
        cls = f"{type(self.model).__name__} (model_type {self.model_type!r})"
        advice = (
            f"polar-rl checks families outside its tested list ({', '.join(KNOWN_FAMILIES)}) before use; "
            f"{_ISSUE_HINT}. To skip this check (very large models, at your own risk): load_model(..., check=False) "
            f"or model.check: false in the config"
        )
        half = self.dtype in (torch.float16, torch.bfloat16)
        tol = 3e-2 if half else 1e-4
        ids = ((torch.arange(tokens, device=self.device) * 7 + 1) % max(self.vocab_size - 1, 2))[None, :]  # (1, T)
        positions = torch.arange(tokens, device=self.device)[None, :]

        def step(what: str, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except AdapterError:
                raise
            except Exception as e:  # any failure inside transformers becomes one clear error
                raise AdapterError(f"{cls}: {what} failed ({type(e).__name__}: {e}). {advice}") from e

        def compare(where: str, ours: torch.Tensor, stock: torch.Tensor) -> None:
            if ours.shape != stock.shape or not torch.allclose(ours.float(), stock.float(), atol=tol, rtol=tol):
                diff = (ours.float() - stock.float()).abs().max().item() if ours.shape == stock.shape else float("nan")
                raise AdapterError(
                    f"{cls}: running its layers one by one does not reproduce its stock forward; first difference "
                    f"at {where} (max abs diff {diff:.3g}, tolerance {tol:g}). {advice}"
                )

        out = step("the stock forward", lambda: self.model(input_ids=ids, output_hidden_states=True))
        stock_hidden: Any = getattr(out, "hidden_states", None)
        by_layer = stock_hidden is not None and len(stock_hidden) == self.num_layers + 1
        hidden = step("the embedding", lambda: self.embed(ids, positions))
        if by_layer:
            compare("the embeddings (input of layer 0)", hidden, stock_hidden[0])
        inputs = step("building masks and positions", lambda: self.stock_inputs(hidden, None, positions))
        for layer in range(self.num_layers):
            hidden = step(
                f"the call of layer {layer} ({type(self.parts.layers[layer]).__name__})",
                lambda: self.run_layer(layer, hidden, inputs),  # noqa: B023 (called at once)
            )
            if by_layer and layer < self.num_layers - 1:
                compare(f"the output of layer {layer}", hidden, stock_hidden[layer + 1])
        normed = step("the final norm", lambda: self.norm(hidden))
        if by_layer:
            compare("the final norm (after the last layer)", normed, stock_hidden[-1])
        compare("the logits (the LM head and its scaling)", step("the LM head", lambda: self.head(normed)), out.logits)
        calls, ones = tuple(range(self.num_layers)), torch.ones_like(ids)
        custom = step("the custom-mask path", lambda: self._forward_step(ids, ones, calls, None))
        compare("the custom-mask path (the 4D masks polar-rl builds)", custom, out.logits[:, -1])
        cache = ProgramCache(len(calls))
        step("a cached prefill", lambda: self._forward_step(ids[:, :-1], ones[:, :-1], calls, cache))
        cached = step("a cached decoding step", lambda: self._forward_step(ids[:, -1:], ones, calls, cache))
        compare("a cached decoding step (the per-slot cache)", cached, out.logits[:, -1])

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
        prefilled: tuple[ProgramCache, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding under a program. (B, T) -> (B, T + n).

        Prompts may be left-padded (pass ``attention_mask``). With ``use_cache`` every executed
        (layer, repeat) keeps its own KV slot and positions come from the token count, never from a
        layer's cache length; ``use_cache=False`` recomputes the whole sequence each step (the
        reference the cached path must equal). Rows that produced EOS keep emitting the pad token.
        ``prefilled``: (cache, (B, V) logits at the prompt's last token) of a prefill done elsewhere
        (the serving runtime decides the program block by block during its prefill); decoding
        continues from it instead of running the prompt again.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        calls = self.program_calls(program)
        ids = input_ids.to(self.device)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(self.device).long()
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=self.device)
        cache = ProgramCache(len(calls)) if use_cache else None
        if prefilled is not None:
            cache, first = prefilled
            if not use_cache or cache.num_slots != len(calls):
                raise ValueError(f"a prefilled cache needs use_cache and one slot per layer call ({len(calls)}), "
                                 f"got {cache.num_slots} slots")
        step_logits: list[torch.Tensor] = []
        new_ids = ids  # what is fed this step (the whole prompt first, then one token)
        for step in range(max_new_tokens):
            if step == 0 and prefilled is not None:
                last = first.to(self.device)
            else:
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
        key_positions = self.positions_from_mask(mask)  # (B, K) from the token count, not a cache length
        positions = key_positions[:, -q_len:]
        hidden = self.embed(new_ids, positions)
        full = self.mask_from_allowed(self._allowed(mask, q_len))
        inputs = self.layer_inputs(hidden, positions, full, key_positions=key_positions)
        return self.head(self.norm(self.run_layers(hidden, calls, inputs, cache)[:, -1]))

    @staticmethod
    def _allowed(mask: torch.Tensor, q_len: int) -> torch.Tensor:
        """(B, K) key validity -> (B, Q, K) causal & valid, for the last ``q_len`` tokens as queries."""
        k_len = mask.shape[1]
        q_idx = torch.arange(k_len - q_len, k_len, device=mask.device)[:, None]  # (Q, 1)
        k_idx = torch.arange(k_len, device=mask.device)[None, :]  # (1, K)
        allowed = (k_idx <= q_idx)[None] & mask.bool()[:, None, :]  # (B, Q, K)
        return allowed | (k_idx == q_idx)[None]  # a padded query still sees itself (no empty rows)


__all__ = ["AdapterError", "InputTooLongError", "KNOWN_FAMILIES", "LayerInputs", "LayerModel"]
