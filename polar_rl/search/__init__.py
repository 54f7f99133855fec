"""Fixed programs, no RL: run them, search them, store their results, compare them.

    runner.py    ProgramScorer / program_accuracies: skip-execute programs over packed, length-sorted
                 chunks; programs that share a prefix share its layer calls; no observations
    families.py  the static search (bi, skip_rank, greedy, random), StaticBaselines, max_skips
    store.py     ResultStore: per-example results of any program (the full model is the identity
                 program) in one sqlite database
    frontier.py  best static program at a compute, non-dominated points, the router ceiling

This package imports no gymnasium, SB3, W&B, :mod:`polar_rl.envs` or :mod:`polar_rl.agents`; the
scoring rules it ranks by live in :mod:`polar_rl.tasks.rewards`.
"""
