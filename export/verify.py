"""Verification: an ONNX variant must decode like its source before it enters a bundle.

Every check decodes the same prompts step by step through the KV cache (prefill with an
empty past, then one token per step), teacher-forced on the reference's greedy tokens so
that logits stay comparable position by position:

- fp32 vs PyTorch: max abs logit difference <= 1e-4, or relative error <= 1e-4 (a 30-layer
  model's logits reach 20-30, where a different summation order alone moved them by up to
  3.8e-4, 1.8e-5 relative, on SmolLM2), and greedy tokens identical.
- fp16 vs reference: no NaN/Inf, relative logit error <= 1e-2, greedy identical on the fixed
  prompts except at near-ties (where the reference's own top-2 margin is within that 1e-2
  error, which FP16 rounding may legitimately flip; counted in the result). On the CPU
  provider this checks weight rounding only: ORT computes the MatMuls and Adds of an FP16
  graph in FP32 there (docs/architecture.md); FP16 arithmetic needs the GPU check.
- int8 vs reference: next-token agreement >= 98% (MIN_INT8_AGREEMENT) on the fixed prompts, a
  position counting as agreed where the choices match or the reference itself is near-tied
  (as for fp16). Raw agreement is reported beside it: a fine-tuned SmolLM2 is near-tied so
  often that near-lossless blockwise INT8 agreed on 95% raw, with 9 real flips in 1,871
  positions, while the dynamic scheme that broke it showed 479. Only meaningful on a trained
  model: a random-init model's logits are nearly flat, so any noise flips argmax.

A variant's mixed graph (the same weights, also prefilling joiners in the batch's step) passes the
same checks (runtime/mixed_runner.py) or fails its variant.

Prompts: fixed ones built from the model's own command vocabulary (real serving prompts), and
random token ids with ragged lengths, which exercise left padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from contract.command import RELEVANCE_LEVELS, CommandSpec, TokenizerLike, prompt_ids
from contract.manifest import BundleError, Manifest, ModelInfo, load_manifest
from runtime.decode import generate
from runtime.mixed_runner import MixedRunner
from runtime.onnx_runner import OnnxRunner
from runtime.runner import Runner

# 24 intents x every task: ~1,400 served positions on a trained tiny model, so a 99% agreement
# estimate has a standard error of ~0.3% (with 8 intents it was ~0.5%, too coarse for the gate).
FIXED_INTENTS = (
    "holiday sale",
    "cozy reading nook",
    "mountain cabin at dawn",
    "vintage camera repair",
    "healthy breakfast ideas",
    "electric bike commute",
    "minimalist home office",
    "rainy day in tokyo",
    "summer music festival",
    "handmade ceramic mugs",
    "urban rooftop garden",
    "retro arcade night",
    "winter skincare routine",
    "budget travel europe",
    "dog friendly hiking trails",
    "modern kitchen renovation",
    "coffee shop branding",
    "sci-fi book cover",
    "wedding flower arrangements",
    "beginner yoga class",
    "craft beer tasting",
    "solar panel installation",
    "kids birthday party",
    "ocean sunset photography",
)
MAX_FP32_ABS_DIFF = 1e-4
MAX_FP32_REL_ERROR = 1e-4
MAX_FP16_REL_ERROR = 1e-2
# The one INT8 gate (the Makefile and the CLI default both use it): 98% next-token agreement with
# the reference on the fixed prompts, near-ties counted as agreed (check_variant). Raw agreement,
# the gate until the pretrained students: the trained tiny model measured 98.18% all-int8 and 99.29%
# with the LM head and MLP down projections kept in FP32 (bench/export.md); all-int8 is the fast
# one (GPT-2 small 714 vs 417 tok/s at batch 16), so 98% ships it when it is that close, and keeps
# a margin so that a first `make bundle` on a differently seeded model does not fail over a
# fraction of a percent (99% did, which is why the Makefile used to pass 0.98 itself).
MIN_INT8_AGREEMENT = 0.98


def decode(runner: Runner, prompts: list[list[int]], steps: int, forced: np.ndarray | None = None) -> np.ndarray:
    """Logits [steps, batch, vocab] of `steps` decoding steps through the KV cache, by the
    runtime's decode loop: step 0 is the prefill; each later step feeds the greedy choice, or
    `forced[:, step]` when given (teacher forcing on another runner's tokens)."""
    decoded = generate(runner, prompts, steps, eos_id=None, forced=forced, keep_logits=True)
    assert decoded.logits is not None
    return decoded.logits


def fixed_prompts(tokenizer: TokenizerLike, spec: CommandSpec) -> list[list[int]]:
    """Real serving prompts: every task, several lengths and relevance levels, a few intents."""
    prompts = []
    for i, intent in enumerate(FIXED_INTENTS):
        for j, task in enumerate(spec.tasks):
            low, high = spec.length_range(task)
            lengths = sorted({low, spec.clamp_words(8, task), spec.clamp_words(20, task), high})
            words = lengths[(i + j) % len(lengths)]
            relevance = RELEVANCE_LEVELS[(i + 2 * j) % len(RELEVANCE_LEVELS)]
            prompts.append(prompt_ids(tokenizer, spec, task, words, relevance, intent))
    return prompts


def random_prompts(vocab_size: int, count: int = 4, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=int(rng.integers(2, 20))).tolist() for _ in range(count)]


@dataclass
class PromptSet:
    """Prompts and the reference's logits [steps, batch, vocab] on them."""

    name: str
    prompts: list[list[int]]
    steps: int
    reference: np.ndarray
    served: np.ndarray  # [steps, batch]: positions up to the reference's first EOS

    @property
    def greedy(self) -> np.ndarray:
        return self.reference.argmax(-1).T  # [batch, steps]


def served_positions(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """[steps, batch] mask of the positions a server would emit: up to and including the
    first EOS. After it the model runs on text it never saw, where agreement means little."""
    before_eos = np.cumsum(tokens == eos_id, axis=0) - (tokens == eos_id)
    return before_eos == 0


def prompt_sets(
    reference: Runner, tokenizer: TokenizerLike, spec: CommandSpec, model: ModelInfo, steps: int = 32
) -> list[PromptSet]:
    sets = []
    for name, prompts in [
        ("fixed", fixed_prompts(tokenizer, spec)),
        ("random", random_prompts(reference.vocab_size)),
    ]:
        n_steps = min(steps, model.n_positions - max(len(p) for p in prompts))
        logits = decode(reference, prompts, n_steps)
        served = served_positions(logits.argmax(-1), model.eos_token_id)
        if name == "random":
            served[:] = True  # no EOS convention for random ids: every position counts
        sets.append(PromptSet(name, prompts, n_steps, logits, served))
    return sets


def check_variant(variant: str, runner: Runner, sets: list[PromptSet], int8_min_agreement: float) -> dict[str, Any]:
    """Compare `runner` with the reference on every prompt set; the result says why it failed."""
    result: dict[str, Any] = {"checks": {}}
    failures = []
    for prompt_set in sets:
        logits = decode(runner, prompt_set.prompts, prompt_set.steps, forced=prompt_set.greedy)
        reference = prompt_set.reference
        finite = bool(np.isfinite(logits).all())
        abs_diff = float(np.abs(logits - reference).max()) if finite else float("inf")
        scale = np.abs(reference).max(-1)
        rel_error = float((np.abs(logits - reference).max(-1) / np.maximum(scale, 1e-6)).max()) if finite else 1.0
        choice, best = logits.argmax(-1), reference.argmax(-1)
        agreement = float((choice == best)[prompt_set.served].mean())
        # A near-tie: the reference itself scores the variant's choice within the error FP16 is
        # allowed (1e-2 of the row's logit scale); FP16's weight rounding may flip such a choice.
        margin = np.take_along_axis(reference, best[..., None], -1) - np.take_along_axis(
            reference, choice[..., None], -1
        )
        near_tie = margin[..., 0] <= MAX_FP16_REL_ERROR * scale
        clear_flips = int(((choice != best) & ~near_tie)[prompt_set.served].sum())
        beyond_near_ties = 1.0 - clear_flips / max(1, int(prompt_set.served.sum()))
        result["checks"][prompt_set.name] = {
            "prompts": len(prompt_set.prompts),
            "steps": prompt_set.steps,
            "positions": int(prompt_set.served.sum()),
            "finite": finite,
            "max_abs_logit_diff": abs_diff,
            "max_rel_logit_error": rel_error,
            "next_token_agreement": agreement,
            "flips_beyond_near_ties": clear_flips,
            "agreement_beyond_near_ties": beyond_near_ties,
        }
        where = f"{prompt_set.name} prompts"
        if not finite:
            failures.append(f"NaN/Inf logits on {where}")
        elif variant == "fp32":
            if abs_diff > MAX_FP32_ABS_DIFF and rel_error > MAX_FP32_REL_ERROR:
                failures.append(
                    f"max abs logit diff {abs_diff:.2e} > {MAX_FP32_ABS_DIFF:.0e} "
                    f"and relative error {rel_error:.2e} > {MAX_FP32_REL_ERROR:.0e} on {where}"
                )
            if agreement < 1.0:
                failures.append(f"greedy tokens differ on {where} (agreement {agreement:.2%})")
        elif variant == "fp16":
            if rel_error > MAX_FP16_REL_ERROR:
                failures.append(f"relative logit error {rel_error:.2e} > {MAX_FP16_REL_ERROR:.0e} on {where}")
            if prompt_set.name == "fixed" and clear_flips:
                failures.append(f"greedy tokens differ beyond near-ties on {where} ({clear_flips} positions)")
        elif variant == "int8" and prompt_set.name == "fixed" and beyond_near_ties < int8_min_agreement:
            failures.append(
                f"next-token agreement beyond near-ties {beyond_near_ties:.2%} < {int8_min_agreement:.0%} on {where}"
                f" (raw {agreement:.2%})"
            )
    result["passed"] = not failures
    result["failures"] = failures
    return result


def summary(variant: str, result: dict[str, Any]) -> str:
    """One line per variant: the numbers a reader wants first."""
    parts = []
    for name, check in result["checks"].items():
        parts.append(
            f"{name}: max|dlogit| {check['max_abs_logit_diff']:.2e}, rel {check['max_rel_logit_error']:.2e}, "
            f"agree {check['next_token_agreement']:.2%} ({check['flips_beyond_near_ties']} beyond near-ties)"
        )
    verdict = "PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"])
    return f"{variant}: {' | '.join(parts)} -> {verdict}"


def verify_variants(
    bundle_dir: Path,
    manifest: Manifest,
    reference: Runner,
    tokenizer: TokenizerLike,
    int8_min_agreement: float = MIN_INT8_AGREEMENT,
) -> dict[str, dict[str, Any]]:
    """Check each of the manifest's variants against `reference` on the CPU provider, through
    the server's own runner (so the manifest's kv_dtype and names are checked too); print one
    line each."""
    sets = prompt_sets(reference, tokenizer, manifest.command, manifest.model)
    results = {}
    for variant in manifest.variants:
        runner = OnnxRunner(bundle_dir, variant.name, provider="cpu", manifest=manifest)
        result = results[variant.name] = check_variant(variant.name, runner, sets, int8_min_agreement)
        print(summary(variant.name, result), flush=True)
        if runner.mixed_prefill:  # its mixed graph, to the same gates; a failure fails the variant
            mixed = check_variant(variant.name, MixedRunner(runner), sets, int8_min_agreement)
            print(summary(f"{variant.name} (mixed graph)", mixed), flush=True)
            result["mixed"] = mixed["checks"]
            result["failures"] += [f"mixed graph: {failure}" for failure in mixed["failures"]]
            result["passed"] = not result["failures"]
    return results


def verify_bundle(
    bundle_dir: Path | str, checkpoint_dir: Path | str | None = None, int8_min_agreement: float = MIN_INT8_AGREEMENT
) -> dict[str, dict[str, Any]]:
    """Re-run the checks on a written bundle; raises BundleError if its files were tampered with.

    With the checkpoint, every variant is checked against PyTorch. Without it the bundle's
    FP32 graph is the reference, so FP32 itself is not re-checked.
    """
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)  # checks every sha256 first
    print(f"bundle {bundle_dir}: sha256 of {len(manifest.variants) + 1} files OK", flush=True)
    tokenizer = Tokenizer.from_file(str(bundle_dir / manifest.tokenizer_file))
    if checkpoint_dir is not None:
        # torch only when a checkpoint is given: verifying variants against FP32 needs none.
        from training.checkpoint import load_checkpoint
        from training.torch_runner import TorchRunner

        checkpoint = load_checkpoint(checkpoint_dir)
        if checkpoint.model.config.vocab_size != manifest.model.vocab_size:
            raise BundleError(f"checkpoint {checkpoint_dir} does not match the bundle (vocabulary size differs)")
        reference: Runner = TorchRunner(checkpoint.model)
        print(f"reference: PyTorch checkpoint {checkpoint_dir}", flush=True)
    elif any(v.name == "fp32" for v in manifest.variants):
        reference = OnnxRunner(bundle_dir, "fp32", provider="cpu", manifest=manifest)
        manifest.variants = [v for v in manifest.variants if v.name != "fp32"]
        print("reference: the bundle's fp32 graph (pass --checkpoint to check it against PyTorch)", flush=True)
    else:
        raise BundleError("the bundle has no fp32 variant to compare with: pass --checkpoint")
    return verify_variants(bundle_dir, manifest, reference, tokenizer, int8_min_agreement)
