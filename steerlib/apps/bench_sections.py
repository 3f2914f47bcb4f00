"""The sections of ``python -m steerlib bench``, one per measurement it prints.

Each takes the parsed arguments (:mod:`steerlib.apps.bench_cli`) and prints its lines; the
straightforward loop is the reference generator
(:func:`steerlib.generate.reference.reference_sweep`) and the engine
:func:`steerlib.generate.engine.run_sweep`, both steered by the one variant the bench was given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.apps.bench_measure import (
    RunStats,
    _generated_tokens,
    _PeakMemory,
    _print,
    _sync,
    _timed,
    matmul_peak,
)
from steerlib.data.prompts import BUNDLED_PROMPTS, load_prompts
from steerlib.data.subsets import pair_texts
from steerlib.errors import ConfigError, SteerlibError
from steerlib.generate.engine import run_sweep
from steerlib.generate.reference import reference_sweep
from steerlib.generate.settings import DecodingSettings
from steerlib.generate.tokens import encode_prompts, left_pad, pad_token_id
from steerlib.models.layers import num_layers
from steerlib.models.loading import EMBEDDED_MODEL, convert_embedded, load_model
from steerlib.models.random_init import (
    calibrate_logit_scale,
    is_random_model,
    nucleus_sizes,
    scale_logits,
)
from steerlib.steer.probe import ToxicityProbe, fit_probe
from steerlib.steer.vectors import SteeringVector, compute_caa

__all__: list[str] = []


def _load_section(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if args.model == EMBEDDED_MODEL and not args.skip_cold_load:
        previous = os.environ.get("STEERLIB_CACHE")
        with tempfile.TemporaryDirectory(prefix="steerlib-bench-") as tmp:
            os.environ["STEERLIB_CACHE"] = tmp
            try:
                cold_model, cold = _timed(lambda: load_model(args.model, args.device, args.dtype))
            finally:
                if previous is None:
                    os.environ.pop("STEERLIB_CACHE", None)
                else:
                    os.environ["STEERLIB_CACHE"] = previous
            del cold_model
        _print(f"[load] cold (GGUF dequantize + convert + load): {cold:.1f} s")
    else:
        cold = None
        why = "--skip-cold-load" if args.skip_cold_load else "not the embedded GGUF model"
        _print(f"[load] cold (GGUF dequantize): skipped ({why})")
    if args.model == EMBEDDED_MODEL:
        convert_embedded()
    (model, tokenizer), cached = _timed(lambda: load_model(args.model, args.device, args.dtype))
    ratio = f" ({cold / cached:.1f}x faster than cold)" if cold else ""
    what = "random weights, seeded" if is_random_model(args.model) else "safetensors"
    _print(f"[load] cached ({what}): {cached:.1f} s{ratio}")
    return model, tokenizer


def _logit_scale_section(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    args: argparse.Namespace,
) -> None:
    """Scale a random model's logits so that sampling sees a realistic nucleus; say which."""
    random = is_random_model(args.model)
    if args.logit_scale is None and not random:
        _print("[logits] trained model: logits as they are (no --logit-scale)")
        return
    if args.logit_scale is not None and not random:
        raise ConfigError("--logit-scale is for random: models; a trained model's logits stand.")
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts["prompt"].tolist()[:16], args.prompt_format)
    input_ids, mask = left_pad(encoded, pad_token_id(tokenizer))

    def last_logits() -> torch.Tensor:
        with torch.inference_mode():
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
        return out.logits[:, -1, :].float()

    logits = last_logits()
    before = nucleus_sizes(logits, args.temperature, args.top_p).median()
    if args.logit_scale == "auto":
        scale = calibrate_logit_scale(logits, temperature=args.temperature, top_p=args.top_p)
        how = "auto: median nucleus about 20 tokens"
    elif args.logit_scale == "none":
        _print(f"[logits] random model, flat logits (median nucleus {int(before)} tokens)")
        return
    else:
        scale, how = float(args.logit_scale), "given"
    scale_logits(model, scale)
    after = nucleus_sizes(last_logits(), args.temperature, args.top_p).median()
    _print(
        f"[logits] random model, logit scale {scale:.2f} ({how}): median nucleus at temperature"
        f" {args.temperature}, top_p {args.top_p} on {len(encoded)} prompts {int(before)} -> "
        f"{int(after)} tokens"
    )


def _capture_section(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_texts: int
) -> tuple[SteeringVector, ToxicityProbe]:
    from steerlib.steer.activations import capture_residuals

    pairs = load_prompts("bundled")
    toxic = pair_texts(pairs[pairs["challenging"]])[:n_texts]
    nontoxic = pair_texts(pairs[~pairs["challenging"]])[:n_texts]
    device = next(model.parameters()).device
    _sync(device)
    started = time.perf_counter()
    toxic_acts = capture_residuals(model, tokenizer, toxic, progress=False)
    nontoxic_acts = capture_residuals(model, tokenizer, nontoxic, progress=False)
    _sync(device)
    seconds = time.perf_counter() - started
    n = len(toxic) + len(nontoxic)
    _print(
        f"[capture] contrastive sets ({len(toxic)} toxic + {len(nontoxic)} non-toxic texts from "
        f"{BUNDLED_PROMPTS.name}), all {num_layers(model)} layers in one forward pass per batch: "
        f"{seconds:.1f} s = {n / seconds:.1f} texts/s"
    )
    vector = compute_caa(toxic_acts, nontoxic_acts, provenance={"texts_source": "bench"})
    return vector, fit_probe(toxic_acts, nontoxic_acts)


def _parity_section(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    vector: SteeringVector,
    args: argparse.Namespace,
) -> None:
    """Greedy engine against the reference generator, both steered by the chosen variant."""
    if args.parity_prompts < 1:
        return
    subset = prompts.iloc[: args.parity_prompts]
    checked = identical = 0
    divergent: list[int] = []
    for positions in ("all", "generated"):
        settings = DecodingSettings(
            max_new_tokens=args.max_new_tokens,
            temperature=0.0,
            top_p=1.0,
            prompt_format=args.prompt_format,
            positions=positions,
        )
        engine = run_sweep(
            model,
            tokenizer,
            subset,
            {"caa": vector},
            layers=[args.layer],
            alphas=args.alphas,
            settings=settings,
            variant=args.chosen,
            probe=args.probe,
            progress=False,
            max_batch_rows=args.max_batch_rows,
            tokens_per_unit=args.tokens_per_unit,
            decode=args.decode,
        )
        steering = args.chosen.bind(
            vector, args.layer, num_layers=num_layers(model), positions=positions, probe=args.probe
        )
        reference = reference_sweep(
            model,
            tokenizer,
            subset,
            steering,
            alphas=args.alphas,
            settings=settings,
            batch_prompts=1,
        )
        merged = engine.merge(reference, on=["prompt_id", "alpha"], suffixes=("", "_ref"))
        checked += len(merged)
        identical += int((merged["completion"] == merged["completion_ref"]).sum())
        for got, ref in zip(merged["completion"], merged["completion_ref"], strict=True):
            if got != ref:
                a, b = tokenizer(got)["input_ids"], tokenizer(ref)["input_ids"]
                same = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                divergent.append(next(same, min(len(a), len(b))))
    _parity_report(model, subset, args, checked, identical, divergent)


def _parity_report(
    model: PreTrainedModel,
    subset: pd.DataFrame,
    args: argparse.Namespace,
    checked: int,
    identical: int,
    divergent: list[int],
) -> None:
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    where = (
        f"; first divergent token (completions re-encoded; of {args.max_new_tokens}): median "
        f"{statistics.median(divergent):.0f}, earliest {min(divergent)}"
        if divergent
        else ""
    )
    note = (
        " (exact parity is expected in float32; in reduced precision the rounding depends on "
        "the batch shape, so argmax near-ties flip)"
        if dtype != "float32"
        else ""
    )
    _print(
        f"[parity] greedy engine vs per-alpha generate in {dtype} for variant {args.variant} "
        f"({len(subset)} prompts x "
        f"{len(args.alphas)} alphas x 2 position modes): {identical}/{checked} identical"
        f"{where}{note}"
    )


def _score_section(texts: list[str], names: Sequence[str], device: str | None) -> None:
    from steerlib.evaluate.scoring import load_scorer

    for name in names:
        if name == "unbiased-toxic-roberta":
            from steerlib.apps.doctor import check_hub, check_toxic_roberta

            cached, hub = check_toxic_roberta(), check_hub()
            if cached.status != "OK" and hub.status != "OK":
                # Without this, huggingface_hub retries for most of a minute before giving up.
                _print(f"[score] {name}: unavailable ({cached.detail}; {hub.detail})")
                continue
        try:
            scorer, load_seconds = _timed(lambda name=name: load_scorer(name, device))
        except (SteerlibError, OSError, ImportError) as exc:
            reason = " ".join(str(exc).split())[:160]
            _print(f"[score] {name}: unavailable ({reason})")
            continue
        scorer.score(texts[:8])  # warm-up
        _, seconds = _timed(lambda scorer=scorer: scorer.score(texts))
        _print(
            f"[score] {name}: {len(texts)} completions in {seconds:.2f} s = "
            f"{len(texts) / seconds:.0f} texts/s (load {load_seconds:.1f} s)"
        )


def _sweep_section(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    vector: SteeringVector,
    args: argparse.Namespace,
) -> tuple[list[RunStats], list[RunStats], pd.DataFrame]:
    device = next(model.parameters()).device
    baseline_alphas = args.alphas[: args.baseline_alphas or None]
    runs: dict[str, list[RunStats]] = {"straightforward": [], "engine": []}
    last_table = pd.DataFrame()
    dtype = next(model.parameters()).dtype
    for round_index in range(args.repeats):
        for method in ("straightforward", "engine"):
            # The peak is measured next to every run: a shared machine's load changes.
            args.peaks.append(matmul_peak(device, dtype, args.matmul_size, repeats=3))
            torch.manual_seed(args.seed)
            memory = _PeakMemory(device)
            settings = args.settings.but(seed=args.seed + round_index)
            with memory:
                started = time.perf_counter()
                if method == "straightforward":
                    table = reference_sweep(
                        model,
                        tokenizer,
                        prompts,
                        args.steering,
                        alphas=baseline_alphas,
                        settings=settings,
                        batch_prompts=args.baseline_batch_prompts,
                    )
                else:
                    table = run_sweep(
                        model,
                        tokenizer,
                        prompts,
                        {"caa": vector},
                        layers=[args.layer],
                        alphas=args.alphas,
                        settings=settings,
                        variant=args.chosen,
                        probe=args.probe,
                        max_batch_rows=args.max_batch_rows,
                        tokens_per_unit=args.tokens_per_unit,
                        progress=args.progress,
                        decode=args.decode,
                    )
                    last_table = table
                _sync(device)
                seconds = time.perf_counter() - started
            stats = RunStats(
                method,
                _generated_tokens(table, args.max_new_tokens),
                seconds,
                memory.peak,
                len(table),
            )
            runs[method].append(stats)
            _print(
                f"[sweep] round {round_index + 1} {method:<15} {stats.completions:>6} completions"
                f" {stats.tokens:>8} tokens {seconds:>8.1f} s {stats.tokens_per_second:>8.1f} "
                f"tok/s  peak {memory.label} {stats.peak_bytes / 2**20:,.0f} MiB"
            )
    return runs["straightforward"], runs["engine"], last_table
