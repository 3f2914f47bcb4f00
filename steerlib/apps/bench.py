"""``python -m steerlib bench``: the sweep engine against the straightforward loop, in one process.

The straightforward loop is the reference generator's
(:func:`steerlib.generate.reference.reference_sweep`, which the tests share): for each alpha,
``model.generate`` with ``num_return_sequences`` over batches of prompts in their given order, under
the bench's one :class:`~steerlib.steer.steering.Steering`. The engine is
:func:`steerlib.generate.engine.run_sweep`. Both run on the same prompts, vector, layer and alphas,
alternating (A B A B ...) so that the noise of a shared machine hits both alike; the best round of
each is reported. The report also measures the other costs a user waits for: cold (GGUF dequantize)
against cached model load, the machine's matrix-multiply peak, activation capture for the
contrastive sets, greedy parity of the engine, and each scorer's throughput. Its last line is
``speedup: X.XX`` (engine over straightforward, generated tokens per second).

``--variant`` picks the steering variant (:mod:`steerlib.steer.variants`) both loops steer with
(plain ``caa`` by default): the gated variant with a probe fitted on the captured contrastive
sets (:func:`steerlib.steer.probe.fit_probe`, as step 04 does), clamp with the vector's non-toxic
projections, multilayer over ``--multilayer-span`` layers centred on ``--layer``. A gated run
also reports how often the gate fired in the engine's last round.

The sections live in :mod:`steerlib.apps.bench_sections`, the instruments in
:mod:`steerlib.apps.bench_measure`, the flags in :mod:`steerlib.apps.bench_cli`.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
from collections.abc import Sequence

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.apps.bench_cli import DEFAULT_ALPHAS, _check_args, _parser
from steerlib.apps.bench_measure import (
    RunStats,
    _best,
    _device_name,
    _print,
    flops_per_token,
    matmul_peak,
)
from steerlib.apps.bench_sections import (
    _capture_section,
    _load_section,
    _logit_scale_section,
    _parity_section,
    _score_section,
    _sweep_section,
)
from steerlib.data.prompts import load_prompts
from steerlib.errors import ConfigError
from steerlib.generate.engine import unit_steering
from steerlib.generate.generation import PromptFormat
from steerlib.generate.reference import reference_sweep
from steerlib.generate.settings import DecodingSettings
from steerlib.generate.sizing import choose_sizes
from steerlib.generate.tokens import encode_prompts
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Positions
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.variants import Variant
from steerlib.steer.variants import variant as make_variant
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "DEFAULT_ALPHAS",
    "RunStats",
    "flops_per_token",
    "main",
    "matmul_peak",
    "straightforward_sweep",
]

_EXPORTED = (_parser, _score_section)
"""Kept importable from here (``steerlib.apps.bench._parser``...), as before the split."""


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
    """The reference experiment's sweep, in the loose form of earlier releases.

    :func:`steerlib.generate.reference.reference_sweep` with the steering of ``variant``
    (default plain CAA) and ``probe`` bound at ``layer``.
    """
    settings = DecodingSettings(
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        prompt_format=prompt_format,
        positions=positions,
        seed=seed,
    )
    steering = unit_steering(model, vector, layer, settings, variant, probe)
    return reference_sweep(
        model,
        tokenizer,
        prompts,
        steering,
        alphas=alphas,
        settings=settings,
        batch_prompts=batch_prompts,
    )


def _prepare(
    args: argparse.Namespace,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, pd.DataFrame, list[int]]:
    """Load the model and the prompts, print the machine and the model; choose the layer."""
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
    return model, tokenizer, prompts, lengths


def _shape_section(model: PreTrainedModel, args: argparse.Namespace, lengths: list[int]) -> None:
    """Choose and print the engine's sizes and the sweep's shape; measure the matmul peak."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
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


def _bind(
    model: PreTrainedModel,
    vector: SteeringVector,
    probe: ToxicityProbe,
    args: argparse.Namespace,
) -> None:
    """The one variant, its probe, its Steering and the sampling settings, on ``args``."""
    args.chosen = make_variant(args.variant, multilayer_span=args.multilayer_span)
    args.probe = probe if args.chosen.operator.needs_probe else None
    args.settings = DecodingSettings(
        samples_per_prompt=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        prompt_format=args.prompt_format,
        positions=args.positions,
        seed=args.seed,
    )
    args.steering = args.chosen.bind(
        vector,
        args.layer,
        num_layers=num_layers(model),
        positions=args.positions,
        probe=args.probe,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its report; returns the exit code."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    _check_args(args)
    model, tokenizer, prompts, lengths = _prepare(args)
    _logit_scale_section(model, tokenizer, prompts, args)
    _shape_section(model, args, lengths)
    vector, probe = _capture_section(model, tokenizer, args.capture_texts)
    _bind(model, vector, probe, args)
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

    _summary(model, baseline, engine, args)
    return 0


def _summary(
    model: PreTrainedModel,
    baseline: list[RunStats],
    engine: list[RunStats],
    args: argparse.Namespace,
) -> None:
    """The report's last lines: the best round of each loop side by side, and the speedup."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
