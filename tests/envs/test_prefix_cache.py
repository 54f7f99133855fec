import pytest
import torch

from polar_rl.envs.prefix_cache import PrefixCache


def test_lru_eviction_respects_budget():
    t = torch.zeros(10)  # 40 bytes
    cache = PrefixCache(100)
    cache.put("a", t)
    cache.put("b", t)
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", t)  # 120 > 100: evicts b (least recent)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 80 <= cache.max_bytes
    assert cache.hits == 3 and cache.misses == 1 and cache.hit_rate == 0.75


def test_oversized_entry_is_not_stored():
    cache = PrefixCache(10)
    cache.put("big", torch.zeros(100))
    assert len(cache) == 0 and cache.nbytes == 0


def test_replacing_a_key_keeps_byte_count():
    cache = PrefixCache(1000)
    cache.put("k", torch.zeros(10))
    cache.put("k", torch.zeros(20))
    assert cache.nbytes == 80 and len(cache) == 1


def test_negative_budget_rejected():
    with pytest.raises(ValueError, match="-1"):
        PrefixCache(-1)
