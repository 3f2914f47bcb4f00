"""The command line of ``python -m steerlib bench``: its flags and their checks."""

from __future__ import annotations

import argparse

from steerlib.errors import ConfigError
from steerlib.generate.decode import DecodeOptions
from steerlib.models.loading import EMBEDDED_MODEL
from steerlib.models.random_init import is_random_model
from steerlib.steer.operators import OPERATORS
from steerlib.steer.variants import variant

__all__ = ["DEFAULT_ALPHAS"]

DEFAULT_ALPHAS = (-1.0, 0.0, 0.5, 1.5)


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
        choices=list(OPERATORS),
        default="caa",
        help="steering variant both loops steer with (steerlib.steer.variants; default caa): "
        + ", ".join(OPERATORS),
    )
    parser.add_argument(
        "--multilayer-span",
        type=int,
        default=5,
        help="layers the multilayer variant steers, centred on --layer (default %(default)s)",
    )
    _add_run_args(parser)
    return parser


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    """The sampling, engine, measurement and output flags."""
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


def _check_args(args: argparse.Namespace) -> None:
    names = ("n_prompts", "samples", "max_new_tokens", "repeats", "baseline_batch_prompts")
    for name in (*names, "multilayer_span"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be at least 1, got {getattr(args, name)}.")
    if args.baseline_alphas < 0:
        raise ConfigError(f"--baseline-alphas must be 0 or more, got {args.baseline_alphas}.")
    cap = variant(args.variant).max_alpha
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
