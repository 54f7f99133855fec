"""MaskRules: the one set of action masks the environment and the serving runtime share."""

from __future__ import annotations

import numpy as np

from polar_rl.masks import MaskRules, masked_argmax


def test_always_execute_loops_and_budget() -> None:
    rules = MaskRules(num_layers=6, block_size=2, loop_runs=2, always_execute=frozenset({0, 2}), max_loops=1,
                      max_compute_fraction=1.0)
    # block 0 is forced: no SKIP; block 2 still forced later, so 2 calls are reserved
    m = rules.masks(0, calls=[0, 0], loops=[0, 1])
    assert m.tolist() == [[False, True, True], [False, True, False]]  # max_loops reached in row 1
    # block 1 with 2 calls used: room = 6 - 2 - 2 = 2 -> EXECUTE fits, LOOP (4 calls) does not
    assert rules.masks(1, [2], [0]).tolist() == [[True, True, False]]
    # block 1 with 4 calls used: no room, SKIP only
    assert rules.masks(1, [4], [0]).tolist() == [[True, False, False]]
    # forced block over budget: every action masked, so EXECUTE once
    assert rules.masks(2, [6], [0]).tolist() == [[False, True, False]]


def test_round_trip_and_masked_argmax() -> None:
    rules = MaskRules(30, 1, 3, frozenset({0, 29}), None, 0.9)
    assert MaskRules.from_dict(rules.to_dict()) == rules
    logits = np.array([[5.0, 1.0, 0.0], [0.0, 1.0, 9.0]])
    masks = np.array([[False, True, True], [True, True, False]])
    assert masked_argmax(logits, masks).tolist() == [1, 1]
