"""``python -m steerlib export RUN``: write a run's steering vector for llama.cpp or repeng.

The file formats, their sign, scale and layer-index conventions, and the readers and writers
(:func:`to_gguf`, :func:`from_gguf`, :func:`to_repeng`, :func:`from_repeng`) are
:mod:`steerlib.apps.control_vectors`; they stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlib.apps.control_vectors import (
    ARCHITECTURE,
    LLAMA_CPP,
    REPENG,
    from_gguf,
    from_repeng,
    model_hint_for,
    to_gguf,
    to_repeng,
)
from steerlib.errors import ConfigError, DataError, SteerlibError, exit_code, report_error
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "ARCHITECTURE",
    "from_gguf",
    "from_repeng",
    "main",
    "model_hint_for",
    "to_gguf",
    "to_repeng",
]


# -- command line ----------------------------------------------------------------------------
def _recommended(summary: Path) -> tuple[int, float, str] | None:
    """The run's recommended steered setting: ``(layer, alpha, variant)``; None when none.

    Raises:
        DamagedRunError: ``summary.json`` cannot be read.
    """
    from steerlib.errors import DamagedRunError

    if not summary.is_file():
        return None
    try:
        record = json.loads(summary.read_text(encoding="utf-8"))
        point = record.get("recommended") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise DamagedRunError(
            f"{summary} is damaged ({type(exc).__name__}); delete it and run the run's command "
            "again (the analysis runs again)."
        ) from None
    if "layer" not in point or not point.get("alpha"):
        return None
    return int(point["layer"]), float(point["alpha"]), str(point.get("variant") or "caa")


def _check_exportable(best: tuple[int, float, str], params: dict[str, Any], run: str) -> None:
    """Refuse a recommended setting that a control vector (added everywhere) cannot express.

    llama.cpp and repeng add ``strength * direction`` to one block's output at every position;
    only the plain CAA variant on all positions is that.

    Raises:
        ConfigError: One line naming the variant or the positions, and the way out.
    """
    variant = best[2]
    if variant != "caa":
        raise ConfigError(
            f"run {run!r} recommends the steering variant {variant!r} (layer {best[0]}, alpha "
            f"{best[1]:g}), which a control vector cannot express (llama.cpp and repeng only add "
            "a fixed vector at every position); pass --layers L to export the plain CAA vector "
            "anyway (its strength is then yours to choose)."
        )
    if params.get("positions", "all") != "all":
        raise ConfigError(
            f"run {run!r} steered positions {params['positions']!r} only, but llama.cpp and "
            "repeng steer every position (prompt included); pass --layers L to export the "
            "vector anyway (its strength is then yours to choose)."
        )


def _in_run_units(vector: SteeringVector, units: str) -> SteeringVector:
    """``vector`` in the units the run steered with (``params.json``'s ``units``).

    With ``units="norm"`` each layer's direction is scaled to that layer's mean residual norm:
    what :func:`steerlib.steering` subtracts per unit of alpha.

    Raises:
        ConfigError: ``units="norm"`` and a layer without a recorded mean norm or with a zero
            direction.
    """
    if units != "norm":
        return vector
    directions = {}
    for layer in vector.layers:
        direction = vector[layer].detach().float()
        norm = float(direction.norm())
        if layer not in vector.mean_norms or not math.isfinite(norm) or norm == 0.0:
            raise ConfigError(
                f"the run steered in units 'norm', but layer {layer}'s mean residual norm is "
                "not recorded in its vector (or the direction is zero): rebuild step 04."
            )
        directions[layer] = direction / norm * float(vector.mean_norms[layer])
    provenance = {**vector.provenance, "exported_units": "norm (scaled to the mean norm)"}
    return SteeringVector(directions, provenance, dict(vector.mean_norms))


def _layers(arg: Sequence[str] | None, vector: SteeringVector, first: int, best: Any) -> list[int]:
    if arg == ["all"]:
        if first > min(vector.layers):
            print("layer 0 left out: llama.cpp cannot steer block 0's output")
        return [layer for layer in vector.layers if layer >= first]
    if arg:
        if not all(x.isdigit() for x in arg):
            raise ConfigError(f"--layers takes layer numbers or 'all', not {' '.join(arg)!r}.")
        return [int(x) for x in arg]
    if best is None:
        raise ConfigError(
            "the run has no recommended steered layer yet: pass --layers L (or --layers all)."
        )
    return [best[0]]


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib export RUN [--format gguf|repeng]``: write a run's vector.

    Writes the run's CAA vector at its recommended layer (or ``--layers``) to
    ``<run>/vectors.gguf`` (``vectors.repeng.gguf`` for repeng) and prints how to use it.
    """
    from steerlib.experiment.preflight import check_run_files
    from steerlib.experiment.runs import RunPaths

    parser = argparse.ArgumentParser(
        prog="python -m steerlib export",
        description="Export a run's steering vector as a llama.cpp control vector or for repeng.",
    )
    parser.add_argument("run", help="run name (a folder under --runs-dir)")
    parser.add_argument(
        "--format", choices=["gguf", "repeng"], default="gguf", help="file flavour (gguf)"
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="layers to export, or 'all' (default: the run's recommended layer)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="factor folded into the file")
    parser.add_argument("--out", default=None, help="output file (default: in the run folder)")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    args = parser.parse_args(argv)
    flavour = REPENG if args.format == "repeng" else LLAMA_CPP
    try:
        paths = RunPaths.for_run(args.run, args.runs_dir)
        if not paths.root.is_dir():
            raise DataError(
                f"no run {args.run!r} in {paths.root.parent}; pass --runs-dir or check "
                "`python -m steerlib status`."
            )
        check_run_files(paths)  # a truncated or edited product is named, not exported
        params = paths.stored_params()
        vector = SteeringVector.load(paths.vectors)
        best = _recommended(paths.summary)
        if best is not None and not args.layers:
            _check_exportable(best, params, args.run)
        units = str(params.get("units", "raw"))
        chosen = _in_run_units(
            vector.select(_layers(args.layers, vector, flavour.first_layer, best)), units
        )
        name = "vectors.repeng.gguf" if flavour is REPENG else "vectors.gguf"
        out = Path(args.out) if args.out else paths.root / name
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder; give a file name, such as {out / name}.")
        write = to_repeng if flavour is REPENG else to_gguf
        written = write(chosen, out, scale=args.scale)
    except SteerlibError as exc:
        report_error(exc)  # one "steerlib:" line per problem
        return exit_code(exc)
    # The file holds -scale * v (in the run's units), so strength alpha / scale reproduces
    # steering(model, v, alpha, units=<the run's>) at the recommended layer.
    same = best is not None and best[2] == "caa" and chosen.layers == [best[0]]
    alpha = f"{best[1] / args.scale:g}" if best and same else "ALPHA"
    print(f"wrote {written}: layers {chosen.layers}, scale {args.scale:g}, units {units}")
    if flavour is REPENG:
        print(f"repeng: model.set_control(ControlVector.import_gguf('{written}'), {alpha})")
    else:
        model = _model_file(chosen)
        print(f"llama.cpp: llama-cli -m {model} --control-vector-scaled {written}:{alpha}")
    return 0


def _model_file(vector: SteeringVector) -> str:
    """The embedded model's GGUF when the vector was built on one, else a placeholder."""
    from steerlib.models.loading import embedded_gguf_path, is_embedded

    alias = vector.provenance.get("model_id")
    if is_embedded(alias):
        try:
            return str(embedded_gguf_path(alias))
        except SteerlibError:
            pass
    return "MODEL.gguf"
