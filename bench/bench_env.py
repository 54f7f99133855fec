"""Environment benchmarks (SmolLM2 + ARC-Easy), each a ratio measured side by side in one run.

    .venv/bin/python bench/bench_env.py

- batched_vs_dummy_speedup: lockstep VecEnv (N = 16) vs SB3 DummyVecEnv of 16 single envs, same
  random programs, env steps per second.
- layer_time_share: share of the batched env's wall time spent inside the layer calls.
- prefix_cache_speedup: cache on vs off under a low-entropy policy (90 % of actions follow one fixed
  program), episodes per second.
"""

from __future__ import annotations

import time

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

import polar_rl
from bench.common import merge_results
from polar_rl.config import EnvConfig
from polar_rl.envs import LayerProgramEnv, LayerProgramVecEnv, LockstepEngine

N = 16


def steps_per_second(venv, episodes: int, seed: int) -> tuple[float, float]:
    """Random programs (uniform actions); returns env steps/s and the wall seconds."""
    rng = np.random.default_rng(seed)
    venv.reset()
    steps = 0
    t0 = time.perf_counter()
    for _ in range(episodes * 30):
        venv.step(rng.integers(0, 3, size=venv.num_envs))
        steps += venv.num_envs
    wall = time.perf_counter() - t0
    return steps / wall, wall


def main() -> None:
    lm = polar_rl.load_model()
    task = polar_rl.load_task("arc_easy", "train")
    cfg = EnvConfig(prefix_cache_gb=0.0, n_envs=N)
    reference: dict = {}
    # full-model references are computed once per example; warm them so both sides skip that work
    warm = LockstepEngine(lm, task, cfg, n_envs=N, shuffle=False, reference=reference)
    for lo in range(0, 6 * N, N):
        warm.reset(list(task.examples[lo : lo + N]))

    batched = LayerProgramVecEnv(lm, task, config=cfg, n_envs=N, seed=0, shuffle=False, reference=reference)
    dummy = DummyVecEnv(
        [lambda i=i: LayerProgramEnv(lm, task, config=cfg, shuffle=False, reference=reference) for i in range(N)]
    )
    for i, env in enumerate(dummy.envs):  # same examples as the batched env, one per env
        env.unwrapped.engine._order = np.roll(np.arange(len(task)), -i)
        env.unwrapped.engine._cursor = 0
        env.unwrapped._seeded = True
    sps_batched, wall_batched = steps_per_second(batched, episodes=2, seed=1)
    layer_share = batched.engine.layer_seconds / wall_batched
    sps_dummy, _ = steps_per_second(dummy, episodes=1, seed=1)

    # ---- prefix cache under a low-entropy policy ------------------------------------------
    examples = list(task.examples[:32])
    fixed = np.array(([1, 1, 0] * 10)[:30])
    eps: dict[str, float] = {}
    for name, gb in (("off", 0.0), ("on", 4.0)):
        engine = LockstepEngine(lm, task, EnvConfig(prefix_cache_gb=gb), n_envs=N, reference=reference)
        for lo in range(0, 32, N):  # references for these examples (not timed)
            engine.reset(examples[lo : lo + N])
        rng = np.random.default_rng(2)
        t0, episodes = time.perf_counter(), 0
        for _ in range(4):  # 4 passes over the same 32 examples
            for lo in range(0, 32, N):
                engine.reset(examples[lo : lo + N])
                for b in range(30):
                    follow = rng.random(N) < 0.9
                    actions = np.where(follow, fixed[b], rng.integers(0, 3, size=N))
                    engine.step(actions)
                episodes += N
        eps[name] = episodes / (time.perf_counter() - t0)
        if engine.cache is not None:
            hit_rate = engine.cache.hit_rate
    merge_results(
        {
            "batched_vs_dummy_speedup": round(sps_batched / sps_dummy, 3),
            "batched_env_steps_per_s": round(sps_batched, 2),
            "dummy_env_steps_per_s": round(sps_dummy, 2),
            "layer_time_share": round(layer_share, 4),
            "prefix_cache_speedup": round(eps["on"] / eps["off"], 3),
            "prefix_cache_hit_rate": round(hit_rate, 4),
        }
    )


if __name__ == "__main__":
    main()
