"""The lockstep engine: N program-building episodes advanced one block at a time.

Every program has exactly B decisions, so all N episodes stand at the same block at every step.
Block b runs once as one batched call over the episodes that EXECUTE or LOOP, once more over those
that LOOP; SKIP leaves the state as it is. All episodes end together (after block B-1: final norm,
head, scoring) and the next ``reset`` draws the next N examples. The single env and the VecEnv are
views of this engine (N = 1 and N = n_envs); it is the only place that batches episodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from polar_rl.config import REWARD_MODES, EnvConfig
from polar_rl.envs.prefix_cache import PrefixCache
from polar_rl.masks import NUM_ACTIONS, MaskRules  # noqa: F401 - NUM_ACTIONS re-exported
from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.observation import ObservationSpec, featurize, logit_lens
from polar_rl.program import Action, Program, check_block_size
from polar_rl.tasks.examples import MCExample, Task
from polar_rl.tasks.multiple_choice import (
    ChoiceScores,
    PackedBatch,
    check_fits,
    choice_scores,
    pack_questions,
    packed_inputs,
)

MARGIN_CLIP = 10.0  # nats; margin and gold log-prob rewards are clipped to [-10, 10]


class InvalidActionError(ValueError):
    """An action outside the action space or masked at this step."""


@dataclass(frozen=True)
class Reference:
    """The full model's result on one example (computed once per example and kept)."""

    correct: bool
    margin: float
    gold_logprob: float  # log-prob of gold normalised over the choices


@dataclass
class _Episodes:
    examples: list[MCExample]
    batch: PackedBatch
    hidden: torch.Tensor  # (N, T, H)
    inputs: LayerInputs
    lengths: torch.Tensor  # (N,) real tokens per row
    runs: list[list[int]] = field(default_factory=list)
    calls: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loops: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prev_action: np.ndarray = field(default_factory=lambda: np.zeros(0))
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    idle: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # padding rows: never run
    phi: np.ndarray = field(default_factory=lambda: np.zeros(0))  # shaping potential per episode
    block: int = 0


def choice_gold_logprob(scores: ChoiceScores) -> torch.Tensor:
    """(N,) log-prob of the gold choice normalised over the choices."""
    return torch.stack([g - torch.logsumexp(lps, 0) for g, lps in zip(scores.gold_logprob, scores.logprobs, strict=True)])


def task_term(mode: str, correct: torch.Tensor, margin: torch.Tensor, gold_logprob: torch.Tensor) -> torch.Tensor:
    """(N,) correctness term of the reward.

    margin: gold log-prob minus the best other, clipped to [-10, 10]; gold_logprob: choice-normalised
    log-prob of gold, clipped to [-10, 0]; gold_prob: its probability (a soft accuracy in [0, 1];
    a flat, uninformed answer earns 1/k, the chance level); correct: 1 / 0.
    """
    if mode == "margin":
        return margin.clamp(-MARGIN_CLIP, MARGIN_CLIP)
    if mode == "gold_logprob":
        return gold_logprob.clamp(-MARGIN_CLIP, 0.0)
    if mode == "gold_prob":
        return gold_logprob.exp()
    if mode == "correct":
        return correct.float()
    raise ValueError(f"unknown reward mode {mode!r}; expected one of {REWARD_MODES}")


def worst_reward(mode: str) -> float:
    return {"correct": 0.0, "gold_prob": 0.0}.get(mode, -MARGIN_CLIP)


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
        bad = [b for b in cfg.always_execute if not 0 <= b < self.num_blocks]
        if bad:
            raise ValueError(f"always_execute blocks {bad} out of range 0..{self.num_blocks - 1}")
        self.always_execute = frozenset(cfg.always_execute)
        forced = len(self.always_execute) * cfg.block_size / lm.num_layers
        if cfg.max_compute_fraction is not None and forced > cfg.max_compute_fraction + 1e-9:
            raise ValueError(
                f"always_execute={sorted(self.always_execute)} forces {len(self.always_execute)} of {self.num_blocks} "
                f"blocks (compute fraction {forced:.3f}), more than max_compute_fraction={cfg.max_compute_fraction}; "
                f"raise the budget or execute fewer blocks")
        self.mask_rules = MaskRules(lm.num_layers, cfg.block_size, cfg.loop_runs, self.always_execute, cfg.max_loops,
                                    cfg.max_compute_fraction)
        self.obs_spec = ObservationSpec(lm.hidden_size, self.num_blocks, cfg.obs_pooled, cfg.obs_logit_lens)
        self.cache = PrefixCache(cfg.prefix_cache_bytes) if cfg.prefix_cache_bytes > 0 else None
        self.reference: dict[str, Reference] = {} if reference is None else reference
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self._order: np.ndarray = np.arange(0)
        self._cursor = 0
        self.nonfinite_count = 0
        self.layer_seconds = 0.0  # wall time inside layer calls (for the layer_time_share benchmark)
        self.reference_seconds = 0.0  # wall time spent running the full program for missing references
        self.ep: _Episodes | None = None
        self._before_draw: dict[str, Any] | None = None  # sampler state before the current episodes' draw

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
        self.ep = _Episodes(
            examples=examples, batch=batch, hidden=hidden.clone(), inputs=inputs, lengths=batch.lengths.cpu(),
            runs=[[] for _ in range(self.n)], calls=np.zeros(self.n), loops=np.zeros(self.n, dtype=int),
            prev_action=np.full(self.n, -1), failed=np.zeros(self.n, dtype=bool), idle=idle,
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
            sub = self._run_rows(later, sub, inputs, lengths, local)
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
            hidden = self._run_rows(b, hidden, inputs, lengths, rows)
            if self.cache is not None:
                for j, ex in enumerate(todo):
                    self.cache.put((ex.id, (1,) * (b + 1)), hidden[j, : int(batch.lengths[j])].clone())
        scores = choice_scores(self.lm, batch, self.lm.norm(hidden))
        gold_lp = choice_gold_logprob(scores)
        for j, ex in enumerate(todo):
            self.reference[ex.id] = Reference(bool(scores.correct[j]), float(scores.margin[j]), float(gold_lp[j]))
        self.reference_seconds += time.perf_counter() - start

    def _run_rows(
        self, block: int, hidden: torch.Tensor, inputs: LayerInputs, lengths: torch.Tensor, rows: list[int]
    ) -> torch.Tensor:
        """Run block ``block`` on some rows of a right-padded (N, T, H) batch, in length buckets.

        Rows are sorted by length and grouped so a bucket's padding stays under ``PAD_SLACK`` of its
        real tokens: padded tokens cost as much as real ones, and ARC rows vary 24..130 tokens.
        """
        for bucket in length_buckets(lengths, rows):
            width = int(lengths[bucket[0]])
            if len(bucket) == hidden.shape[0] and width == hidden.shape[1]:
                hidden = self._run_block(block, hidden, inputs)
                continue
            idx = torch.tensor(bucket, device=hidden.device)
            sub = hidden.index_select(0, idx)[:, :width]
            out = self._run_block(block, sub, _narrow(inputs.select(idx), width))
            hidden[idx, :width] = out
        return hidden

    def _run_block(self, block: int, hidden: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        t0 = time.perf_counter()
        for layer in range(block * self.cfg.block_size, (block + 1) * self.cfg.block_size):
            hidden = self.lm.run_layer(layer, hidden, inputs)
        self.layer_seconds += time.perf_counter() - t0
        return hidden

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
        runs = np.where(acts == Action.LOOP, self.cfg.loop_runs, acts).astype(int)
        runs[ep.failed | ep.idle] = 0
        self._advance(b, runs)
        rewards = -self.cfg.compute_penalty * runs * bs / L
        ep.calls += runs * bs
        ep.loops += (acts == Action.LOOP)
        ep.prev_action = acts.astype(int)
        done = ep.block + 1 == self.num_blocks
        if self.cfg.reward_shaping and not done:  # EXECUTE leaves the potential as it is
            changed = [i for i in range(self.n) if runs[i] != 1 and not (ep.failed[i] or ep.idle[i])]
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
        """Run block b for every episode with runs > 0, using the prefix cache where it hits."""
        ep = self.ep
        assert ep is not None
        compute: list[int] = []
        for i in range(self.n):
            ep.runs[i].append(int(runs[i]))
            if runs[i] == 0:
                continue
            if self.cache is not None:
                hit = self.cache.get((ep.examples[i].id, tuple(ep.runs[i])))
                if hit is not None:
                    ep.hidden[i, : hit.shape[0]] = hit
                    continue
            compute.append(i)
        if not compute:
            return
        # one batched call (per length bucket) for everyone needing run 1, again for run 2, ...
        for rep in range(int(runs[compute].max())):
            rows = [i for i in compute if runs[i] > rep]
            ep.hidden = self._run_rows(b, ep.hidden, ep.inputs, ep.lengths, rows)
        finite = torch.isfinite(ep.hidden[torch.tensor(compute)]).flatten(1).all(1).cpu().numpy()
        for i, ok in zip(compute, finite, strict=True):
            if not ok:  # end this episode: worst reward at the end, never hand NaN to the policy
                ep.failed[i] = True
                ep.hidden[i] = 0.0
                self.nonfinite_count += 1
            elif self.cache is not None:
                L = int(ep.lengths[i])
                self.cache.put((ep.examples[i].id, tuple(ep.runs[i])), ep.hidden[i, :L].clone())

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
        ep = self.ep
        assert ep is not None
        rows = torch.arange(self.n, device=ep.hidden.device)
        last = ep.hidden[rows, ep.batch.context_last]  # (N, H)
        normed = self.lm.norm(last)
        pooled = lens = None
        if self.obs_spec.pooled:
            ctx = torch.arange(ep.hidden.shape[1], device=ep.hidden.device)[None] <= ep.batch.context_last[:, None]
            mean = (ep.hidden * ctx[..., None]).sum(1) / ctx.sum(1, keepdim=True)
            pooled = self.lm.norm(mean)
        if self.obs_spec.logit_lens:
            lens = logit_lens(self.lm.head(normed))
        obs = featurize(
            self.obs_spec, normed, torch.full((self.n,), ep.block), torch.tensor(ep.calls / self.lm.num_layers),
            torch.tensor(ep.prev_action), pooled, lens,
        )
        obs[torch.tensor(ep.failed)] = 0.0
        return obs.cpu().numpy()


PAD_SLACK = 0.25


def length_buckets(lengths: torch.Tensor, rows: list[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Group rows (longest first) so each group's padded size is <= (1 + slack) x its real tokens."""
    order = sorted(rows, key=lambda i: -int(lengths[i]))
    buckets: list[list[int]] = []
    for i in order:
        if buckets:
            cur = buckets[-1]
            width = int(lengths[cur[0]])
            real = sum(int(lengths[j]) for j in cur) + int(lengths[i])
            if width * (len(cur) + 1) <= (1 + slack) * real:
                cur.append(i)
                continue
        buckets.append([i])
    return buckets


def _narrow(inputs: LayerInputs, width: int) -> LayerInputs:
    """Crop layer inputs to the first ``width`` tokens (rows shorter than the padded batch)."""
    return inputs.narrow(width)
