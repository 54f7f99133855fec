"""LRU cache of hidden states after a program prefix, with a byte budget.

The state after running a program prefix on an example is deterministic, so it is keyed by
(example id, run counts so far). On a hit no layer runs. Entries are unpadded (L, H) tensors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch


class PrefixCache:
    """Least-recently-used map key -> tensor whose total size never exceeds ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"prefix cache budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: Hashable) -> torch.Tensor | None:
        value = self._store.get(key)
        if value is None:
            self.misses += 1
            return None
        self._store.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self._store.pop(key, None)
        if old is not None:
            self.nbytes -= old.numel() * old.element_size()
        while self._store and self.nbytes + size > self.max_bytes:
            _, evicted = self._store.popitem(last=False)
            self.nbytes -= evicted.numel() * evicted.element_size()
        self._store[key] = value
        self.nbytes += size

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate,
                "entries": len(self), "bytes": self.nbytes}
