"""The lockstep engine: N program-building episodes advanced one block at a time.

Every program has exactly B decisions, so all N episodes stand at the same block at every step.
Block b runs once as one batched call over the episodes that EXECUTE or LOOP, once more over those
that LOOP; SKIP leaves the state as it is. All episodes end together (after block B-1: final norm,
head, scoring) and the next ``reset`` draws the next N examples. The single env and the VecEnv are
views of this engine (N = 1 and N = n_envs); it is the only place that batches episodes.

The observation (:func:`polar_rl.observation.observe_programs`) and the block step
(:mod:`polar_rl.block_step`: run counts, length buckets, repeats, the finite check) are the core's,
shared with the serving runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from polar_rl.block_step import BlockRunner, PartialPrograms, block_runs
from polar_rl.config import REWARD_MODES, EnvConfig
from polar_rl.envs.prefix_cache import PrefixCache
from polar_rl.masks import NUM_ACTIONS, MaskRules  # noqa: F401 - NUM_ACTIONS re-exported
from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.observation import ObservationSpec, context_mask, observe_programs
from polar_rl.program import Action, Program, check_block_size
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.multiple_choice import (
    PackedBatch,
    check_fits,
    choice_scores,
    pack_questions,
    packed_inputs,
)
from polar_rl.tasks.rewards import Reference, choice_gold_logprob, task_term, worst_reward


class InvalidActionError(ValueError):
    """An action outside the action space or masked at this step."""


@dataclass(kw_only=True)
class _Episodes(PartialPrograms):
    """The N episodes' programs so far (runs, calls, loops, prev_action, failed) and their batch."""

    examples: list[MCExample]
    batch: PackedBatch
    hidden: torch.Tensor  # (N, T, H)
    inputs: LayerInputs
    lengths: torch.Tensor  # (N,) real tokens per row
    context: torch.Tensor | None = None  # (N, T) bool context tokens, for the pooled feature
    idle: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # padding rows: never run
    phi: np.ndarray = field(default_factory=lambda: np.zeros(0))  # shaping potential per episode
    block: int = 0


class LockstepEngine:
    """N episodes of building a program for one example each, advanced in lockstep."""

    def __init__(
        self,
        lm: LayerModel,
        task: Task,
        config: EnvConfig | None = None,
        n_envs: int | None = None,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        reference: dict[str, Reference] | None = None,
    ) -> None:
        cfg = config or EnvConfig()
        n = cfg.n_envs if n_envs is None else n_envs
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_envs must be an int >= 1, got {n!r}")
        if task.kind != "multiple_choice":
            raise ValueError(f"task {task.name!r} is {task.kind}; the environment scores multiple-choice tasks")
        if len(task) == 0:
            raise ValueError(f"task {task.name!r} split {task.split!r} has no examples")
        if cfg.reward not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {cfg.reward!r}; expected one of {REWARD_MODES}")
        if cfg.compute_penalty < 0:
            raise ValueError(f"compute_penalty (lambda) must be >= 0, got {cfg.compute_penalty}")
        check_fits(lm, task.examples)  # a row past the model's positions fails here, before any episode
        self.lm, self.task, self.cfg, self.n = lm, task, cfg, n
        self.num_blocks = check_block_size(lm.num_layers, cfg.block_size)
        self.always_execute = frozenset(cfg.always_execute)
        self.mask_rules = MaskRules(lm.num_layers, cfg.block_size, cfg.loop_runs, self.always_execute, cfg.max_loops,
                                    cfg.max_compute_fraction)
        if (problem := self.mask_rules.problem()) is not None:
            raise ValueError(problem)
        self.obs_spec = ObservationSpec(lm.hidden_size, self.num_blocks, cfg.obs_pooled, cfg.obs_logit_lens)
        self.cache = PrefixCache(cfg.prefix_cache_bytes) if cfg.prefix_cache_bytes > 0 else None
        self.reference: dict[str, Reference] = {} if reference is None else reference
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self._order: np.ndarray = np.arange(0)
        self._cursor = 0
        self.nonfinite_count = 0
        self.blocks = BlockRunner(lm, cfg.block_size)  # the block step, shared with serving
        self.reference_seconds = 0.0  # wall time spent running the full program for missing references
        self.ep: _Episodes | None = None
        self._before_draw: dict[str, Any] | None = None  # sampler state before the current episodes' draw

    @property
    def layer_seconds(self) -> float:
        """Wall time inside layer calls (for the layer_time_share benchmark)."""
        return self.blocks.layer_seconds

    # ---- example order --------------------------------------------------------------------
    def seed(self, seed: int | None | np.random.Generator) -> None:
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._order, self._cursor, self._before_draw = np.arange(0), 0, None

    def sampler_state(self) -> dict[str, Any]:
        """Where the example order stands (for checkpoints): RNG state, order, cursor.

        Episodes drawn but not stepped yet (the auto-reset at the end of a rollout) are drawn again
        by the ``reset`` after a restore, so for them this is the state from before their draw: a
        run resumed at a rollout boundary sees the same examples as the uninterrupted run."""
        if self.ep is not None and self.ep.block == 0 and self._before_draw is not None:
            return self._before_draw
        return self._current_sampler_state()

    def _current_sampler_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self._order.copy(), "cursor": self._cursor}

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._order, self._cursor, self._before_draw = np.asarray(state["order"]), int(state["cursor"]), None

    def _draw(self) -> list[MCExample]:
        size = len(self.task)
        if self.shuffle and self.task.weights is not None:
            idx = self.rng.choice(size, self.n, p=np.asarray(self.task.weights))
            return [self.task.examples[i] for i in idx]  # type: ignore[misc]
        out = []
        for _ in range(self.n):  # a split smaller than N wraps around
            if self._cursor >= len(self._order):
                self._order = self.rng.permutation(size) if self.shuffle else np.arange(size)
                self._cursor = 0
            out.append(self.task.examples[int(self._order[self._cursor])])
            self._cursor += 1
        return out  # type: ignore[return-value]

    # ---- episode lifecycle ----------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, examples: list[MCExample] | None = None) -> np.ndarray:
        """Start N new episodes (the next examples, or the given ones). Returns (N, D) observations.

        Given fewer than N examples (the last chunk of an evaluation), the remaining rows are idle
        padding: copies of the first example that run no layer; their infos are to be ignored."""
        self._before_draw = self._current_sampler_state() if examples is None else None
        examples = self._draw() if examples is None else list(examples)
        if not 1 <= len(examples) <= self.n:
            raise ValueError(f"reset got {len(examples)} examples for {self.n} envs (1..{self.n})")
        idle = np.arange(self.n) >= len(examples)
        examples = examples + [examples[0]] * int(idle.sum())
        batch = pack_questions(self.lm.tokenizer, examples, self.lm.pad_token_id).to(self.lm.device)
        hidden, inputs = packed_inputs(self.lm, batch)
        context = context_mask(batch.context_last, hidden.shape[1]) if self.obs_spec.pooled else None
        self.ep = _Episodes.start(
            self.n, examples=examples, batch=batch, hidden=hidden.clone(), inputs=inputs,
            lengths=batch.lengths.cpu(), context=context, idle=idle,
        )
        self._ensure_reference()
        if self.cfg.reward_shaping:  # potential before any decision: the full model's term
            self.ep.phi = self._reference_phi(examples)
        return self.observe()

    def _reference_term(self, examples: list[MCExample]) -> np.ndarray:
        """(N,) the full model's task term on ``examples`` (from the reference results)."""
        refs = [self.reference[ex.id] for ex in examples]
        return task_term(self.cfg.reward, torch.tensor([r.correct for r in refs]), torch.tensor([r.margin for r in refs]),
                         torch.tensor([r.gold_logprob for r in refs])).numpy().astype(np.float64)

    def _reference_phi(self, examples: list[MCExample]) -> np.ndarray:
        wrong = ~np.array([self.reference[ex.id].correct for ex in examples])
        return self._reference_term(examples) - self.cfg.wrong_penalty * wrong

    def _completion_phi(self, rows: list[int]) -> np.ndarray:
        """Potential of ``rows`` after the current block: the task term of the decisions so far, then
        every later block executed once. Completion states go into the prefix cache, so an episode
        that goes on executing finds its next blocks there."""
        ep = self.ep
        assert ep is not None
        idx = torch.tensor(rows, device=ep.hidden.device)
        hidden = ep.hidden.clone()
        sub, lengths = hidden.index_select(0, idx), ep.lengths[rows]
        inputs = ep.inputs.select(idx)
        local = list(range(len(rows)))
        for later in range(ep.block + 1, self.num_blocks):
            sub = self.blocks.run_rows(later, sub, inputs, local, lengths)
            if self.cache is not None:
                for j, i in enumerate(rows):
                    key = (ep.examples[i].id, tuple(ep.runs[i]) + (1,) * (later - ep.block))
                    self.cache.put(key, sub[j, : int(lengths[j])].clone())
        hidden[idx] = sub
        scores = choice_scores(self.lm, ep.batch, self.lm.norm(hidden))
        term = task_term(self.cfg.reward, scores.correct, scores.margin, choice_gold_logprob(scores)).numpy()
        term = term.astype(np.float64) - self.cfg.wrong_penalty * ~scores.correct.numpy()
        return term[rows]

    def _ensure_reference(self) -> None:
        """Run the full program on examples not seen before; fills the prefix cache on the way."""
        assert self.ep is not None
        todo = list({ex.id: ex for ex in self.ep.examples if ex.id not in self.reference}.values())
        if not todo:
            return
        start = time.perf_counter()
        batch = pack_questions(self.lm.tokenizer, todo, self.lm.pad_token_id).to(self.lm.device)
        hidden, inputs = packed_inputs(self.lm, batch)
        lengths, rows = batch.lengths.cpu(), list(range(len(todo)))
        for b in range(self.num_blocks):
            hidden = self.blocks.run_rows(b, hidden, inputs, rows, lengths)
            if self.cache is not None:
                for j, ex in enumerate(todo):
                    self.cache.put((ex.id, (1,) * (b + 1)), hidden[j, : int(batch.lengths[j])].clone())
        scores = choice_scores(self.lm, batch, self.lm.norm(hidden))
        gold_lp = choice_gold_logprob(scores)
        for j, ex in enumerate(todo):
            self.reference[ex.id] = Reference(bool(scores.correct[j]), float(scores.margin[j]), float(gold_lp[j]))
        self.reference_seconds += time.perf_counter() - start


    # ---- masks ----------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """(N, 3) bool: which of SKIP / EXECUTE / LOOP each episode may take now (:mod:`polar_rl.masks`)."""
        assert self.ep is not None, "call reset() first"
        return self.mask_rules.masks(min(self.ep.block, self.num_blocks - 1), self.ep.calls, self.ep.loops)

    # ---- step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, bool, list[dict[str, Any]]]:
        """Apply one action per episode to the current block.

        Returns observations (N, D), rewards (N,), whether the episodes ended, and infos.
        """
        ep = self.ep
        assert ep is not None, "call reset() first"
        if ep.block >= self.num_blocks:
            raise RuntimeError("episodes are over; call reset()")
        acts = np.asarray(actions).reshape(-1)
        if acts.dtype.kind not in "iu":  # 1.0, True or "1" are not actions: never silently converted
            raise InvalidActionError(
                f"actions must be ints (SKIP=0, EXECUTE=1, LOOP=2), got {actions!r} (dtype {acts.dtype})")
        if acts.shape[0] != self.n:
            raise InvalidActionError(f"expected {self.n} actions, got {acts.shape[0]}")
        masks = self.action_masks()
        for i, a in enumerate(acts.tolist()):
            if a not in (0, 1, 2):
                raise InvalidActionError(f"env {i}: action {a!r} is not one of SKIP=0, EXECUTE=1, LOOP=2")
            if not masks[i, a]:
                raise InvalidActionError(
                    f"env {i}: action {Action(a).name} is masked at block {ep.block} (mask {masks[i].tolist()}); "
                    f"use action_masks() (e.g. sb3-contrib MaskablePPO)"
                )
        b, bs, L = ep.block, self.cfg.block_size, self.lm.num_layers
        runs = block_runs(acts, self.cfg.loop_runs, ep.failed | ep.idle)  # (N,)
        ep.record(acts, runs, bs)
        self._advance(b, runs)
        rewards = -self.cfg.compute_penalty * runs * bs / L
        done = ep.block + 1 == self.num_blocks
        if self.cfg.reward_shaping and not done:  # EXECUTE leaves the potential as it is
            changed = np.flatnonzero((runs != 1) & ~ep.failed & ~ep.idle).tolist()
            if changed:
                new_phi = self._completion_phi(changed)
                rewards[changed] += new_phi - ep.phi[changed]
                ep.phi[changed] = new_phi
        ep.block += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.n)]
        if done:
            term = self._finish(infos)
            if self.cfg.reward_shaping:  # the last potential difference: final term - potential so far
                term = term + self._reference_phi(ep.examples) - ep.phi
            rewards = rewards + term
        return self.observe(), rewards.astype(np.float32), done, infos

    def _advance(self, b: int, runs: np.ndarray) -> None:
        """Run block b (the shared step) for every episode with runs > 0 whose state is not in the prefix cache."""
        ep = self.ep
        assert ep is not None
        compute = self._cache_misses(np.flatnonzero(runs))  # (R,)
        ep.hidden, ok = self.blocks.step(b, ep.hidden, ep.inputs, runs, compute, ep.lengths)
        ep.failed[compute[~ok]] = True  # a non-finite state ends the episode: worst reward, zeros observed
        self.nonfinite_count += int((~ok).sum())
        if self.cache is not None:
            for i in compute[ok].tolist():
                self.cache.put((ep.examples[i].id, tuple(ep.runs[i])), ep.hidden[i, : int(ep.lengths[i])].clone())

    def _cache_misses(self, rows: np.ndarray) -> np.ndarray:
        """The (R,) ``rows`` whose state after this block is not in the prefix cache; hits are copied in."""
        ep = self.ep
        assert ep is not None
        if self.cache is None:
            return rows
        miss = []
        for i in rows.tolist():
            hit = self.cache.get((ep.examples[i].id, tuple(ep.runs[i])))
            if hit is None:
                miss.append(i)
            else:
                ep.hidden[i, : hit.shape[0]] = hit
        return np.array(miss, dtype=np.int64)

    def _finish(self, infos: list[dict[str, Any]]) -> np.ndarray:
        ep = self.ep
        assert ep is not None
        scores = choice_scores(self.lm, ep.batch, self.lm.norm(ep.hidden))
        refs = [self.reference[ex.id] for ex in ep.examples]
        term = task_term(self.cfg.reward, scores.correct, scores.margin, choice_gold_logprob(scores)).numpy()
        baseline = np.zeros(self.n)
        if self.cfg.relative_to_full:  # minus the full model's term: the question's difficulty cancels
            baseline = self._reference_term(ep.examples)
        term = term.astype(np.float64) - baseline
        correct = scores.correct.numpy()
        term = term - self.cfg.wrong_penalty * (~correct)
        term[ep.failed] = worst_reward(self.cfg.reward) - self.cfg.wrong_penalty - baseline[ep.failed]
        correct = correct & ~ep.failed
        for i, info in enumerate(infos):
            ex, ref = ep.examples[i], refs[i]
            program = Program.from_runs(ep.runs[i], self.lm.num_layers, self.cfg.block_size, self.cfg.loop_runs)
            info.update(
                example_id=ex.id,
                correct=bool(correct[i]),
                margin=float(scores.margin[i]),
                layer_calls=int(ep.calls[i]),
                compute_fraction=float(ep.calls[i] / self.lm.num_layers),
                runs=list(ep.runs[i]),
                program=str(program),
                full_correct=ref.correct,
                full_margin=ref.margin,
                nonfinite=bool(ep.failed[i]),
                reward_task=float(term[i]),
            )
        return term

    # ---- observations ---------------------------------------------------------------------
    @torch.inference_mode()
    def observe(self) -> np.ndarray:
        """(N, D) observations of the current episodes (:func:`polar_rl.observation.observe_programs`)."""
        ep = self.ep
        assert ep is not None
        return observe_programs(self.lm, self.obs_spec, ep.hidden, ep.batch.context_last, ep.context, ep.block, ep)

