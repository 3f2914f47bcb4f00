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
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "SteeringVector": "steerlib.vectors",
    "caa_from_texts": "steerlib.vectors",
    "generate_completions": "steerlib.generation",
    "load_model": "steerlib.models",
    "load_prompts": "steerlib.data",
    "run_sweep": "steerlib.engine",
    "steering": "steerlib.hooks",
}

if TYPE_CHECKING:
    from steerlib.data import load_prompts
    from steerlib.engine import run_sweep
    from steerlib.generation import generate_completions
    from steerlib.hooks import steering
    from steerlib.models import load_model
    from steerlib.vectors import SteeringVector, caa_from_texts


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'steerlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
