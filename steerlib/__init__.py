"""steerlib: reduce the toxicity of chat language models by activation steering.

The public names load lazily, so ``import steerlib`` stays cheap (no torch until one is used)::

    import steerlib

    model, tokenizer = steerlib.load_model("smollm2-135m-instruct")
    vector = steerlib.caa_from_texts(model, tokenizer, toxic_texts, nontoxic_texts)
    with steerlib.steering(model, vector, alpha=1.5, layers=18):
        ...
    table = steerlib.run_sweep(model, tokenizer, prompts, {"caa": vector}, layers=[18],
                               alphas=[0.0, 1.5])

The experiment (a run's steps, its notebooks and the chain runner) is :mod:`steerlib.pipeline`.

The package is built in floors; a module imports only from its own floor or the ones below
(``tests/test_layers.py`` checks it):

=============  ==================================================================
``apps``       the command line, the alpha explorer, bench, doctor, status, export
``experiment`` a run: parameters, the step table, steps 01-06, chain, workers
``figures``    plotly figures and their files
``evaluate``   scorers, fluency, metrics, controls, the operating point
``generate``   the sweep engine and the reference generator
``steer``      activations, vectors, hooks, steering variants
``data``       prompt files, subsets, Perspective labels
``models``     loading models, random models, layers
(ground)       ``errors``, ``_io``, ``resources``
=============  ==================================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from steerlib import _moved

_moved.install()  # the old flat import paths, for one release

__all__ = [
    "SteeringVector",
    "caa_from_texts",
    "generate_completions",
    "load_model",
    "load_prompts",
    "run_sweep",
    "steering",
]

_WHERE = {
    "SteeringVector": "steerlib.steer.vectors",
    "caa_from_texts": "steerlib.steer.vectors",
    "generate_completions": "steerlib.generate.generation",
    "load_model": "steerlib.models.loading",
    "load_prompts": "steerlib.data.prompts",
    "run_sweep": "steerlib.generate.engine",
    "steering": "steerlib.steer.hooks",
}

if TYPE_CHECKING:
    from steerlib.data.prompts import load_prompts
    from steerlib.generate.engine import run_sweep
    from steerlib.generate.generation import generate_completions
    from steerlib.models.loading import load_model
    from steerlib.steer.hooks import steering
    from steerlib.steer.vectors import SteeringVector, caa_from_texts


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'steerlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
