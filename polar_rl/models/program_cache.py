"""ProgramCache: a KV cache with one slot per executed (layer, repeat) of a program.

A program may skip layer 0 or run a layer twice. Sharing one slot per physical layer (as the public
PoLar / Dr.LLM code does) appends a looped layer's keys twice into one slot and takes positions
from layer 0's cache length, which silently computes something else. Here the adapter sets
``slot`` before each layer call (call i of ``program.layer_calls`` -> slot i), and positions come
from the token count, so cached decoding equals recomputation.

It implements the part of transformers' cache interface that attention layers call:
``update(key_states, value_states, layer_idx, ...)`` returning the full keys and values.
"""

from __future__ import annotations

from typing import Any

import torch


class ProgramCache:
    """Per-slot key/value tensors, each (B, kv_heads, T, head_dim)."""

    is_compileable = False

    def __init__(self, num_slots: int) -> None:
        if num_slots < 0:
            raise ValueError(f"num_slots must be >= 0, got {num_slots}")
        self.keys: list[torch.Tensor | None] = [None] * num_slots
        self.values: list[torch.Tensor | None] = [None] * num_slots
        self.slot = 0

    @property
    def num_slots(self) -> int:
        return len(self.keys)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int | None = None, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append to the active slot (``layer_idx`` is ignored on purpose) and return its full K, V."""
        i = self.slot
        k, v = self.keys[i], self.values[i]
        if k is None or v is None:
            k, v = key_states, value_states
        else:
            k = torch.cat([k, key_states], dim=-2)
            v = torch.cat([v, value_states], dim=-2)
        self.keys[i], self.values[i] = k, v
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        k = self.keys[self.slot] if self.keys else None
        return 0 if k is None else int(k.shape[-2])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
