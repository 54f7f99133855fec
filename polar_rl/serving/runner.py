"""PolarRunner: generate and score with an exported policy choosing each input's program of layers.

    runner = PolarRunner.load("runs/<run>/export")            # the model named in the manifest
    programs = runner.program_for(input_ids, attention_mask)  # one Program per row
    out = runner.generate(input_ids, max_new_tokens=64)       # out.sequences, out.programs
    result = runner.score_choices("Question: ...\\nAnswer:", [" a", " b"])

The prompt runs block by block; before each block the policy sees the features the environment
sees (:func:`polar_rl.observation.observe_programs`, the engine's own helper) and acts under the
same masks (:class:`polar_rl.masks.MaskRules`), greedily: one policy call per block for the whole
batch; the block then runs through the engine's step (:class:`polar_rl.block_step.BlockRunner`),
whose KV hook keeps each layer call's keys and values. Decoding continues from them with the core's
cached generation (one KV slot per executed layer call) under each row's program. Inputs are checked
before any layer runs: an empty prompt, an all-padding row, or a prompt (+ new tokens) longer than
the model's positions is one ServingError / InputTooLongError naming the row and the numbers.
Imports no stable_baselines3, gymnasium or wandb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from polar_rl.block_step import BlockRunner, KVHook, PartialPrograms, block_runs
from polar_rl.masks import MaskRules, masked_argmax
from polar_rl.models.adapter import LayerInputs, LayerModel
from polar_rl.models.program_cache import ProgramCache
from polar_rl.observation import context_mask, observe_programs
from polar_rl.program import Program, check_block_size
from polar_rl.serving.manifest import (
    ServingError,
    check_manifest,
    mask_rules,
    observation_spec,
    read_manifest,
)
from polar_rl.serving.policy import PolicyBackend, load_policy
from polar_rl.tasks.examples import MCExample, TaskError
from polar_rl.tasks.multiple_choice import choice_scores, pack_questions, packed_inputs, tokenize_question

_KV = list[tuple[torch.Tensor, torch.Tensor]]  # one row's (keys, values) per layer call, each (1, kv_heads, T, d)


class Generation(NamedTuple):
    sequences: torch.Tensor  # (B, T + n) prompt and new tokens (finished rows padded)
    programs: list[Program]


@dataclass(frozen=True)
class ChoiceResult:
    """One question: summed log-prob per choice (lm-eval "rc"), the argmax, and the program used."""

    logprobs: tuple[float, ...]
    pred: int
    program: Program


def check_model(lm: LayerModel, manifest: dict[str, Any], allow_mismatch: bool = False) -> None:
    """ServingError naming both values when ``lm`` is not the model the policy was trained on.

    Layer count and hidden size always have to match (the observation would not fit the policy);
    ``allow_mismatch`` accepts a different weights hash (e.g. another dtype or a fine-tuned copy).
    """
    want = manifest["model"]
    for key, have in (("num_layers", lm.num_layers), ("hidden_size", lm.hidden_size)):
        if int(want[key]) != have:
            raise ServingError(f"model {lm.name!r} has {key}={have} but the policy was exported for "
                               f"{want['name']!r} with {key}={want[key]}; the observation would not fit")
    if str(want.get("hash", "")) != lm.model_hash and not allow_mismatch:
        raise ServingError(f"model {lm.name!r} has weights hash {lm.model_hash!r} but the policy was exported for "
                           f"{want['name']!r} with hash {want.get('hash')!r}; pass allow_model_mismatch=True "
                           f"(CLI: --allow-model-mismatch) to use it anyway")


class PolarRunner:
    """A LayerModel plus an exported policy: per-input programs for generation and scoring."""

    def __init__(self, lm: LayerModel, manifest: dict[str, Any], policy: PolicyBackend,
                 export_dir: Path | None = None) -> None:
        self.lm, self.manifest, self.policy, self.export_dir = lm, manifest, policy, export_dir
        check_manifest(manifest)
        self.obs_spec = observation_spec(manifest)
        self.rules: MaskRules = mask_rules(manifest)
        self.block_size, self.loop_runs = self.rules.block_size, self.rules.loop_runs
        self.num_blocks = check_block_size(lm.num_layers, self.block_size)
        if self.obs_spec.num_blocks != self.num_blocks:
            raise ServingError(f"manifest observation has {self.obs_spec.num_blocks} blocks but the model has "
                               f"{self.num_blocks} ({lm.num_layers} layers / block_size {self.block_size})")
        self.blocks = BlockRunner(lm, self.block_size)
        self.policy_seconds = 0.0  # wall time in featurisation + policy calls (the policy_overhead_share bench)

    @classmethod
    def load(cls, export_dir: str | Path, model: LayerModel | None = None, *, backend: str = "onnx",
             device: str = "cpu", dtype: str | None = None, allow_model_mismatch: bool = False) -> PolarRunner:
        """Read and check the export, load its policy, then the model it names (or check ``model``)."""
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        policy = load_policy(export_dir, manifest, backend)
        if model is None:
            from polar_rl.models.loading import load_model

            spec = manifest["model"]
            where = spec.get("spec") or spec["name"]  # exports before "spec" name the model only
            try:
                model = load_model(where, device=device, dtype=dtype or spec.get("dtype") or "float32")
            except ValueError as e:
                raise ServingError(f"cannot load the export's model {where!r}: {e}") from None
        check_model(model, manifest, allow_model_mismatch)
        return cls(model, manifest, policy, export_dir)

    # ---- deciding programs ----------------------------------------------------------------
    @torch.inference_mode()
    def program_for(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[Program]:
        """(B, T) prompts (left or right padded with ``attention_mask``) -> one Program per row."""
        mask = self._check_prompts(input_ids, attention_mask)
        return self._prefill(input_ids, mask, keep_kv=False)[0]

    def _check_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       max_new_tokens: int = 0) -> torch.Tensor:
        """The (B, T) 0/1 mask of checked prompts: ServingError for a malformed batch or a row without
        tokens, InputTooLongError (naming both numbers) for a row whose prompt + new tokens exceed the
        model's positions; nothing has run yet."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ServingError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if input_ids.dim() != 2 or 0 in input_ids.shape:
            raise ServingError(f"input_ids must be (batch, tokens) with at least one token, got shape "
                               f"{tuple(input_ids.shape)} (an empty prompt?)")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if mask.shape != input_ids.shape or ((mask != 0) & (mask != 1)).any():
            raise ServingError(f"attention_mask must be 0/1 of the input_ids' shape {tuple(input_ids.shape)}, got "
                               f"shape {tuple(mask.shape)}")
        counts = mask.long().sum(1).tolist()
        if 0 in counts:
            raise ServingError(f"row {counts.index(0)} of the batch is all padding (its attention_mask has no 1): "
                               f"no prompt to run")
        row = int(np.argmax(counts))
        what = (f"row {row}: " if len(counts) > 1 else "") + f"prompt ({counts[row]:,} tokens)"
        self.lm.check_length(counts[row] + max_new_tokens,
                             f"{what} + max_new_tokens {max_new_tokens:,}" if max_new_tokens else what)
        return mask

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor,
                 keep_kv: bool = True) -> tuple[list[Program], torch.Tensor, list[_KV]]:
        """The decision pass over (B, T) prompts: programs, (B, V) logits at each row's last token, and
        (``keep_kv``) each row's keys and values per layer call."""
        lm = self.lm
        ids, mask = input_ids.to(lm.device), mask.to(lm.device).long()
        positions = lm.positions_from_mask(mask)
        hidden = lm.embed(ids, positions)  # (B, T, H)
        inputs = lm.layer_inputs(hidden, positions, lm.mask_from_allowed(_causal_allowed(mask)))
        t = torch.arange(ids.shape[1], device=lm.device)
        last = (mask * (t + 1)[None]).argmax(-1)  # (B,)
        kv: list[_KV] = [[] for _ in range(ids.shape[0])]
        programs, final = self._decide(hidden, inputs, last, mask.bool(), kv if keep_kv else None)
        logits = lm.head(lm.norm(final[torch.arange(ids.shape[0], device=lm.device), last]))  # (B, V)
        return programs, logits, kv

    def _decide(self, hidden: torch.Tensor, inputs: LayerInputs, last: torch.Tensor, context: torch.Tensor,
                kv: list[_KV] | None = None) -> tuple[list[Program], torch.Tensor]:
        """Run the blocks with the policy deciding each: programs and the (B, T, H) final hidden states.

        last: (B,) index of each row's last context token (its features). context: (B, T) bool, the
        tokens the pooled feature averages. ``kv``: one list per row that receives the (keys, values)
        of each of its layer calls in program order. Observation and block step are the engine's.
        """
        lm, bs = self.lm, self.block_size
        progs = PartialPrograms.start(hidden.shape[0])
        hidden = hidden.clone()  # (B, T, H)
        on_kv = None if kv is None else _kv_sink(kv)
        for b in range(self.num_blocks):
            t0 = time.perf_counter()  # decide: features -> policy -> masked argmax (one call for the batch)
            obs = observe_programs(lm, self.obs_spec, hidden, last, context, b, progs)
            actions = masked_argmax(self.policy(obs), self.rules.masks(b, progs.calls, progs.loops))
            self.policy_seconds += time.perf_counter() - t0
            runs = block_runs(actions, self.loop_runs, progs.failed)
            ran = np.flatnonzero(runs)
            hidden, ok = self.blocks.step(b, hidden, inputs, runs, ran, on_kv=on_kv)
            progs.failed[ran[~ok]] = True  # a non-finite state ends the row's program as it ends an episode
            progs.record(actions, runs, bs)
        programs = [Program.from_runs(x, lm.num_layers, bs, self.loop_runs, lm.name) for x in progs.runs]
        return programs, hidden

    # ---- generation and scoring -----------------------------------------------------------
    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, attention_mask: torch.Tensor | None = None,
                 eos_token_id: int | list[int] | None = None) -> Generation:
        """Decide each row's program during the prefill of its (left-padded) prompt, then decode greedily
        with the core's cached ``LayerModel.generate`` under it, continuing from that prefill (its keys
        and values fill the per-slot cache; the prompt is not run twice). Rows sharing a program decode
        as one batch."""
        mask = self._check_prompts(input_ids, attention_mask, max_new_tokens)
        programs, first, kv = self._prefill(input_ids, mask)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(programs):
            groups.setdefault(p.runs, []).append(i)
        outs: dict[int, torch.Tensor] = {}
        for members in groups.values():
            cache = ProgramCache(programs[members[0]].num_calls)
            for s in range(cache.num_slots):
                cache.keys[s] = torch.cat([kv[i][s][0] for i in members])
                cache.values[s] = torch.cat([kv[i][s][1] for i in members])
            idx = torch.tensor(members)
            seq = self.lm.generate(input_ids[idx], programs[members[0]], max_new_tokens, attention_mask=mask[idx],
                                   eos_token_id=eos_token_id, prefilled=(cache, first[idx.to(first.device)]))
            for j, i in enumerate(members):
                outs[i] = seq[j]  # type: ignore[index]
        width = max(o.shape[0] for o in outs.values())
        pad = self.lm.pad_token_id
        seqs = torch.stack([torch.cat([o, o.new_full((width - o.shape[0],), pad)]) for _, o in sorted(outs.items())])
        return Generation(seqs, programs)

    def generate_text(self, prompt: str, max_new_tokens: int = 32) -> tuple[str, Program]:
        """One prompt (encoded without special tokens, as the environment encodes contexts) -> (new text, program)."""
        tok = self.lm.tokenizer
        encoded = tok(prompt, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise ServingError(f"the prompt {prompt[:40]!r} encodes to no tokens; give a non-empty prompt")
        ids = torch.tensor([encoded], dtype=torch.long)
        out = self.generate(ids, max_new_tokens, eos_token_id=getattr(tok, "eos_token_id", None))
        return tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True), out.programs[0]

    @torch.inference_mode()
    def score_choices(self, context: str, choices: list[str] | tuple[str, ...]) -> ChoiceResult:
        """Multiple choice as the evaluation scores it: the context and choices packed in one row,
        the program decided on the context, each choice's summed continuation log-prob under it."""
        try:
            example = MCExample(id="serving", context=context, choices=tuple(choices), gold=0)
        except TaskError as e:
            raise ServingError(str(e)) from None
        tq = tokenize_question(self.lm.tokenizer, example)
        longest = max(len(c) for c in tq.choices)
        self.lm.check_length(len(tq.context) + longest,
                             f"context ({len(tq.context):,} tokens) + longest choice ({longest:,} tokens)")
        batch = pack_questions(self.lm.tokenizer, [example], self.lm.pad_token_id).to(self.lm.device)
        hidden, inputs = packed_inputs(self.lm, batch)
        tokens = context_mask(batch.context_last, batch.input_ids.shape[1])  # (1, T), as the engine's
        (program,), final = self._decide(hidden, inputs, batch.context_last, tokens)
        scores = choice_scores(self.lm, batch, self.lm.norm(final))
        logprobs = tuple(float(x) for x in scores.logprobs[0])
        return ChoiceResult(logprobs, int(np.argmax(logprobs)), program)


def _kv_sink(kv: list[_KV]) -> KVHook:
    """A KV hook appending each row's (keys, values) of every layer call to ``kv[row]``, in program order."""

    def take(rows: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        for j, i in enumerate(rows):
            kv[i].append((keys[j : j + 1], values[j : j + 1]))  # each (1, kv_heads, T, head_dim)

    return take


def _causal_allowed(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) key validity -> (B, T, T) causal & valid; a padded query still sees itself (no empty rows)."""
    t = torch.arange(mask.shape[1], device=mask.device)
    causal = t[None, :] <= t[:, None]  # (T, T) key <= query
    return (causal[None] & mask.bool()[:, None, :]) | torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)[None]
