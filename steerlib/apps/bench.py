"""``python -m steerlib bench``: the sweep engine against the straightforward loop, in one process.

The straightforward loop is the reference experiment's: for each alpha, ``model.generate`` with
``num_return_sequences`` over batches of prompts in their given order, inside a
:func:`steerlib.steer.hooks.steering` block. The engine is
:func:`steerlib.generate.engine.run_sweep`. Both run
on the same prompts, vector, layer and alphas, alternating (A B A B ...) so that the noise of a
shared machine hits both alike; the best round of each is reported. The report also measures
the other costs a user waits for: cold (GGUF dequantize) against cached model load, the machine's
matrix-multiply peak, activation capture for the contrastive sets, greedy parity of the engine,
and each scorer's throughput. Its last line is ``speedup: X.XX`` (engine over straightforward,
generated tokens per second).

``--variant`` picks the steering variant (:mod:`steerlib.steer.variants`) both loops steer with
(plain ``caa`` by default): the gated variant with a probe fitted on the captured contrastive
sets (:func:`steerlib.steer.probe.fit_probe`, as step 04 does), clamp with the vector's non-toxic
projections, multilayer over ``--multilayer-span`` layers centred on ``--layer``. A gated run
also reports how often the gate fired in the engine's last round.

Over 500 lines (about 630): a script-like tool, one section per measurement it prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.data.prompts import BUNDLED_PROMPTS, load_prompts
from steerlib.data.subsets import pair_texts
from steerlib.errors import ConfigError, SteerlibError
from steerlib.generate.engine import DecodeOptions, run_sweep
from steerlib.generate.generation import (
    PromptFormat,
    decode_new_tokens,
    derive_seed,
    encode_prompts,
    left_pad,
    sampling_kwargs,
    stop_token_ids,
)
from steerlib.generate.sizing import choose_sizes
from steerlib.models.layers import num_layers
from steerlib.models.loading import EMBEDDED_MODEL, convert_embedded, load_model
from steerlib.models.random_init import (
    calibrate_logit_scale,
    is_random_model,
    nucleus_sizes,
    scale_logits,
)
from steerlib.steer.hooks import Positions, steering
from steerlib.steer.probe import ToxicityProbe, fit_probe
from steerlib.steer.variants import VARIANTS, Variant
from steerlib.steer.variants import variant as make_variant
from steerlib.steer.vectors import SteeringVector, compute_caa

__all__ = [
    "RunStats",
    "flops_per_token",
    "main",
    "matmul_peak",
    "straightforward_sweep",
]

DEFAULT_ALPHAS = (-1.0, 0.0, 0.5, 1.5)


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------------------------------
# Measurements


class _PeakMemory:
    """Peak memory inside a ``with`` block: CUDA allocator peak, else sampled process RSS."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        """Resident set size of this process in bytes (lifetime maximum where unreadable)."""
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, self.rss())

    @property
    def label(self) -> str:
        """What the peak measures."""
        return "GPU allocated" if self.device.type == "cuda" else "process RSS"


def _device_name(device: torch.device) -> str:
    """The device with its product name where torch knows it (``cuda (NVIDIA H200)``)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5
) -> float:
    """Best measured FLOP/s of a square ``size`` matrix multiply (the machine's practical peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    best = float("inf")
    inner = 3
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * size**3 / best


def flops_per_token(model: nn.Module) -> float:
    """Matrix-multiply FLOPs of one token through the model: 2 x weights applied per token.

    Every module with a 2-D weight except embedding lookups counts (tied output heads
    included); attention scores over the cache are left out (small at these lengths).
    """
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) or not isinstance(weight, torch.Tensor):
            continue
        if weight.dim() == 2:
            total += weight.numel()
    return 2.0 * total


@dataclass
class RunStats:
    """One timed sweep.

    Attributes:
        method: ``"straightforward"`` or ``"engine"``.
        tokens: Generated tokens (kept tokens plus the stop token where a row stopped early).
        seconds: Wall time.
        peak_bytes: Peak memory during the run (see :class:`_PeakMemory`).
        completions: Number of completions.
    """

    method: str
    tokens: int
    seconds: float
    peak_bytes: int
    completions: int

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def _generated_tokens(table: pd.DataFrame, max_new_tokens: int) -> int:
    counts = table["n_new_tokens"].astype(int)
    return int((counts + (counts < max_new_tokens).astype(int)).sum())


# ------------------------------------------------------------------------------------------
# The straightforward loop


@torch.inference_mode()
def straightforward_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    vector: SteeringVector,
    *,
    layer: int,
    alphas: Sequence[float],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    prompt_format: PromptFormat = "raw",
    positions: Positions = "all",
    batch_prompts: int = 8,
    seed: int = 0,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
) -> pd.DataFrame:
    """The reference experiment's sweep: per alpha, ``generate`` with ``num_return_sequences``.

    Prompts are batched in their given order (each batch pads to its longest prompt) and every
    sample re-encodes its prompt, as ``generate`` expands the inputs before the prefill.
    ``variant`` (default plain CAA) and ``probe`` (for the gated variant) steer as the
    engine's arguments of the same names do.

    Returns:
        One row per completion (``prompt_id``, ``alpha``, ``sample``, ``completion``,
        ``n_new_tokens``).
    """
    encoded = encode_prompts(tokenizer, prompts["prompt"].tolist(), prompt_format)
    ids = prompts["prompt_id"].tolist()
    device = next(model.parameters()).device
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    rows: list[dict[str, Any]] = []
    steer: dict[str, Any] = {"layers": layer, "positions": positions}
    if variant is not None:
        steer = variant.steering_kwargs(layer, num_layers(model), positions, probe)
    for alpha in alphas:
        for start in range(0, len(encoded), batch_prompts):
            input_ids, mask = left_pad(encoded[start : start + batch_prompts], pad_id)
            torch.manual_seed(derive_seed(seed, "straightforward", alpha, start))
            with steering(model, vector, float(alpha), **steer):
                generated = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=samples_per_prompt,
                    pad_token_id=pad_id,
                    **sampling_kwargs(temperature, top_p),
                )
            texts, counts = decode_new_tokens(
                tokenizer, generated[:, input_ids.shape[1] :].cpu(), stop_ids
            )
            for row, (text, count) in enumerate(zip(texts, counts, strict=True)):
                index = start + row // samples_per_prompt
                rows.append(
                    {
                        "prompt_id": ids[index],
                        "alpha": float(alpha),
                        "sample": row % samples_per_prompt,
                        "completion": text,
                        "n_new_tokens": count,
                    }
                )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# Report sections


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


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
    input_ids, mask = left_pad(encoded, tokenizer.pad_token_id)

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
    """Greedy engine against per-alpha ``generate``, both steered by ``args.steer``."""
    if args.parity_prompts < 1:
        return
    subset = prompts.iloc[: args.parity_prompts]
    checked = identical = 0
    divergent: list[int] = []
    for positions in ("all", "generated"):
        engine = run_sweep(
            model,
            tokenizer,
            subset,
            {"caa": vector},
            layers=[args.layer],
            alphas=args.alphas,
            max_new_tokens=args.max_new_tokens,
            temperature=0.0,
            prompt_format=args.prompt_format,
            positions=positions,
            progress=False,
            **args.steer,
            max_batch_rows=args.max_batch_rows,
            tokens_per_unit=args.tokens_per_unit,
            decode=args.decode,
        )
        reference = straightforward_sweep(
            model,
            tokenizer,
            subset,
            vector,
            layer=args.layer,
            alphas=args.alphas,
            samples_per_prompt=1,
            max_new_tokens=args.max_new_tokens,
            temperature=0.0,
            top_p=1.0,
            prompt_format=args.prompt_format,
            positions=positions,
            batch_prompts=1,
            **args.steer,
        )
        merged = engine.merge(reference, on=["prompt_id", "alpha"], suffixes=("", "_ref"))
        checked += len(merged)
        identical += int((merged["completion"] == merged["completion_ref"]).sum())
        for got, ref in zip(merged["completion"], merged["completion_ref"], strict=True):
            if got != ref:
                a, b = tokenizer(got)["input_ids"], tokenizer(ref)["input_ids"]
                same = (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                divergent.append(next(same, min(len(a), len(b))))
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
            with memory:
                started = time.perf_counter()
                if method == "straightforward":
                    table = straightforward_sweep(
                        model,
                        tokenizer,
                        prompts,
                        vector,
                        layer=args.layer,
                        alphas=baseline_alphas,
                        samples_per_prompt=args.samples,
                        max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature,
                        top_p=args.top_p,
                        prompt_format=args.prompt_format,
                        positions=args.positions,
                        batch_prompts=args.baseline_batch_prompts,
                        seed=args.seed + round_index,
                        **args.steer,
                    )
                else:
                    table = run_sweep(
                        model,
                        tokenizer,
                        prompts,
                        {"caa": vector},
                        layers=[args.layer],
                        alphas=args.alphas,
                        samples_per_prompt=args.samples,
                        max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature,
                        top_p=args.top_p,
                        prompt_format=args.prompt_format,
                        positions=args.positions,
                        seed=args.seed + round_index,
                        max_batch_rows=args.max_batch_rows,
                        tokens_per_unit=args.tokens_per_unit,
                        progress=args.progress,
                        **args.steer,
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


def _best(runs: list[RunStats]) -> RunStats:
    return max(runs, key=lambda r: r.tokens_per_second)


# ------------------------------------------------------------------------------------------
# Entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m steerlib bench",
        description="Benchmark the sweep engine against the straightforward per-alpha generate "
        "loop (one process, alternating rounds). The last line is 'speedup: X.XX'.",
    )
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model alias, hub id or folder")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best)")
    parser.add_argument(
        "--prompts", default="bundled", help="'bundled' or an RTP-schema JSON-lines file"
    )
    parser.add_argument("--n-prompts", type=int, default=16, help="prompts (first N)")
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS), help="coefficients"
    )
    parser.add_argument("--samples", type=int, default=10, help="samples per (prompt, alpha)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="new tokens per sample")
    parser.add_argument("--layer", type=int, default=None, help="steered layer (default 60%%)")
    parser.add_argument(
        "--positions",
        choices=["all", "generated"],
        default="all",
        help="steered positions: every token, or the generated ones only (default all)",
    )
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default="caa",
        help="steering variant both loops steer with (steerlib.steer.variants; default caa): "
        + ", ".join(VARIANTS),
    )
    parser.add_argument(
        "--multilayer-span",
        type=int,
        default=5,
        help="layers the multilayer variant steers, centred on --layer (default %(default)s)",
    )
    parser.add_argument(
        "--prompt-format",
        choices=["raw", "chat"],
        default="raw",
        help="prompts as raw text or through the chat template (default raw)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature; 0: greedy"
    )
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (A B A B for 2)")
    parser.add_argument(
        "--baseline-batch-prompts",
        type=int,
        default=8,
        help="prompts per generate call of the straightforward loop",
    )
    parser.add_argument(
        "--baseline-alphas",
        type=int,
        default=0,
        help="run the straightforward loop on the first N alphas only (0: all); each alpha is "
        "a separate loop of the same cost, so its tokens/s does not depend on N",
    )
    parser.add_argument(
        "--max-batch-rows", type=int, default=None, help="engine batch rows (default: device)"
    )
    parser.add_argument(
        "--tokens-per-unit", type=int, default=None, help="engine unit size (default: device)"
    )
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: per device)"
    )
    parser.add_argument(
        "--logit-scale",
        default=None,
        help="random: models only: multiply the logits by this number, 'auto' (default for "
        "random: models: a median nucleus of about 20 tokens) or 'none' (flat logits)",
    )
    parser.add_argument(
        "--cuda-graphs",
        choices=["auto", "on", "off"],
        default="auto",
        help="capture the engine's decode step in a CUDA graph (no-op off CUDA)",
    )
    parser.add_argument(
        "--sync-free",
        choices=["auto", "on", "off"],
        default="auto",
        help="the engine's sync-free decode step (auto: on CUDA)",
    )
    parser.add_argument("--capture-texts", type=int, default=32, help="texts per contrastive set")
    parser.add_argument("--parity-prompts", type=int, default=4, help="0 skips the parity check")
    parser.add_argument(
        "--scorers",
        default="profanity-check,unbiased-toxic-roberta",
        help="comma-separated scorer names ('' skips scoring)",
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=2048,
        help="side of the square matrices of the peak-FLOP/s probe (default %(default)s)",
    )
    parser.add_argument("--skip-cold-load", action="store_true", help="skip the GGUF dequantize")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars"
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    names = ("n_prompts", "samples", "max_new_tokens", "repeats", "baseline_batch_prompts")
    for name in (*names, "multilayer_span"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be at least 1, got {getattr(args, name)}.")
    if args.baseline_alphas < 0:
        raise ConfigError(f"--baseline-alphas must be 0 or more, got {args.baseline_alphas}.")
    cap = make_variant(args.variant).max_alpha
    if cap is not None and any(not 0.0 <= a <= cap for a in args.alphas):
        raise ConfigError(
            f"--variant {args.variant} takes alphas in [0, {cap:g}] (the fraction of the toxic "
            f"component removed), got {args.alphas}: pass e.g. --alphas 0 0.5 1."
        )
    if args.logit_scale not in (None, "auto", "none"):
        try:
            float(args.logit_scale)
        except ValueError:
            raise ConfigError(
                f"--logit-scale takes a number, 'auto' or 'none', not {args.logit_scale!r}."
            ) from None
    if args.logit_scale is None and is_random_model(args.model):
        args.logit_scale = "auto"
    choice = {"auto": "auto", "on": True, "off": False}
    args.decode = DecodeOptions(
        sync_free=choice[args.sync_free], cuda_graphs=choice[args.cuda_graphs]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its report; returns the exit code.

    Kept in one piece (about 85 lines): the benchmark's script, section after section, as it prints.
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    _check_args(args)
    _print("steerlib bench: sweep engine vs straightforward per-alpha generate loop")
    _print(
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    model, tokenizer = _load_section(args)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n_params = sum(p.numel() for p in model.parameters())
    if args.layer is None:
        args.layer = int(0.6 * num_layers(model))
    prompts = load_prompts(args.prompts)
    if len(prompts) < args.n_prompts:
        raise ConfigError(
            f"--n-prompts {args.n_prompts} but {args.prompts} holds {len(prompts)} prompts; "
            "ask for fewer."
        )
    prompts = prompts.iloc[: args.n_prompts].reset_index(drop=True)
    lengths = [len(x) for x in encode_prompts(tokenizer, prompts["prompt"], args.prompt_format)]
    _print(
        f"model: {args.model} ({type(model).__name__}, {num_layers(model)} layers, "
        f"{n_params / 1e6:.1f} M parameters) on {_device_name(device)} in "
        f"{str(dtype).replace('torch.', '')}"
    )
    _logit_scale_section(model, tokenizer, prompts, args)
    sizes = choose_sizes(
        model,
        row_tokens=max(lengths) + args.max_new_tokens,
        max_new_tokens=args.max_new_tokens,
        max_batch_rows=args.max_batch_rows,
        tokens_per_unit=args.tokens_per_unit,
    )
    args.max_batch_rows, args.tokens_per_unit = sizes.max_batch_rows, sizes.tokens_per_unit
    sync_free, graphs = args.decode.resolve(device)
    _print(
        f"[sizes] engine: {sizes.max_batch_rows} rows per batch, {sizes.tokens_per_unit} tokens "
        f"per unit ({sizes.source}); decode step: "
        f"{'sync-free' if sync_free else 'synced, finished rows dropped'}, CUDA graphs "
        f"{'on' if graphs else 'off'}"
    )
    completions = args.n_prompts * len(args.alphas) * args.samples
    _print(
        f"shape: {args.n_prompts} prompts ({args.prompts}; {min(lengths)}-{max(lengths)} tokens, "
        f"mean {statistics.mean(lengths):.1f}) x {len(args.alphas)} alphas {args.alphas} x "
        f"{args.samples} samples x {args.max_new_tokens} new tokens = {completions} completions;"
        f" layer {args.layer}, variant {args.variant}, positions {args.positions}, "
        f"format {args.prompt_format}, "
        f"temperature {args.temperature}, top_p {args.top_p}"
    )
    peak = matmul_peak(device, dtype, args.matmul_size)
    args.peaks = [peak]
    _print(
        f"[matmul] peak {str(dtype).replace('torch.', '')} {args.matmul_size}x{args.matmul_size}"
        f" matrix multiply: {peak / 1e9:.1f} GFLOP/s (best of 5)"
    )
    vector, probe = _capture_section(model, tokenizer, args.capture_texts)
    chosen = make_variant(args.variant, multilayer_span=args.multilayer_span)
    args.steer = {"variant": chosen, "probe": probe if chosen.mode == "gated" else None}
    _parity_section(model, tokenizer, prompts, vector, args)
    if args.baseline_alphas and args.baseline_alphas < len(args.alphas):
        _print(
            f"[sweep] the straightforward loop runs the first {args.baseline_alphas} of "
            f"{len(args.alphas)} alphas (its tokens/s does not depend on the number of alphas)"
        )
    baseline, engine, table = _sweep_section(model, tokenizer, prompts, vector, args)
    if "gate_fired" in table.columns:
        steered = table[table["alpha"] != 0]
        fired, looked = int(steered["gate_fired"].sum()), int(steered["gate_positions"].sum())
        _print(
            f"[gate] engine's last round: the probe fired at {fired} of {looked} steered "
            f"positions ({100 * fired / max(looked, 1):.0f}%) over the alphas other than 0"
        )
    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    _score_section(table["completion"].tolist(), names, args.device)

    a, b = _best(baseline), _best(engine)
    _print(
        f"summary on {_device_name(device)}, {str(dtype).replace('torch.', '')} "
        f"(best of {args.repeats} alternating rounds each):"
    )
    header = ("method", "completions", "tokens", "wall s", "tok/s", "peak MiB", "% peak")
    per_token = flops_per_token(model)
    peak = max(args.peaks)
    _print(
        "  "
        + header[0].ljust(16)
        + "".join(h.rjust(w) for h, w in zip(header[1:], (12, 9, 9, 9, 10, 8), strict=True))
    )
    for stats in (a, b):
        share = 100 * stats.tokens_per_second * per_token / peak
        _print(
            f"  {stats.method:<16}{stats.completions:>12}{stats.tokens:>9}{stats.seconds:>9.1f}"
            f"{stats.tokens_per_second:>9.1f}{stats.peak_bytes / 2**20:>10,.0f}{share:>8.1f}"
        )
    speedup = b.tokens_per_second / a.tokens_per_second
    _print(
        f"  ratio engine / straightforward: tok/s {speedup:.2f}, wall time per token "
        f"{1 / speedup:.2f}, peak memory {b.peak_bytes / max(a.peak_bytes, 1):.2f}"
    )
    _print(
        f"  matmul peak: best {peak / 1e9:.1f} GFLOP/s of {len(args.peaks)} measurements "
        f"(one before each run; lowest {min(args.peaks) / 1e9:.1f})"
    )
    useful = b.tokens_per_second * per_token
    _print(
        f"  engine useful work: {b.tokens_per_second:.1f} generated tok/s x "
        f"{per_token / 1e9:.3f} GFLOP/token = {useful / 1e9:.1f} GFLOP/s = "
        f"{100 * useful / peak:.0f}% of the measured matmul peak ({peak / 1e9:.1f} GFLOP/s)"
    )
    scale = 1 if sys.platform == "darwin" else 1024
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    _print(f"  process peak RSS over the whole benchmark: {max_rss / 2**20:,.0f} MiB")
    _print(f"speedup: {speedup:.2f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
