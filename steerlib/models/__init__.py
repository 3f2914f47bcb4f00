"""Models (floor 1): loading the embedded and hub models, random models of real shapes, layers.

* :mod:`~steerlib.models.loading` — ``load_model``/``load_tokenizer``, devices and dtypes;
* :mod:`~steerlib.models.embedded` — the embedded GGUF models and their safetensors cache;
* :mod:`~steerlib.models.shape` — a model's shape from its config alone;
* :mod:`~steerlib.models.random_init` — ``random:`` models (seeded weights, real configs);
* :mod:`~steerlib.models.layers` — decoder layers, their count and layer specs (depth fractions);
* :mod:`~steerlib.models.partial` — a forward pass from one layer on, the layers below replayed.

Until the layered layout ``steerlib.models`` was one module; its names still resolve here for
one release, with a deprecation warning (they live in :mod:`steerlib.models.loading`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """The old flat module's names, forwarded with a deprecation warning."""
    from steerlib._moved import forward

    return forward(__name__, "steerlib.models.loading", name)
