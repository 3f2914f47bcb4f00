"""Data (floor 2): prompt files and RTP records, the experiment's prompt subsets, Perspective labels.

* :mod:`~steerlib.data.prompts` — prompt files (JSONL, the RTP schema) and the hub dataset;
* :mod:`~steerlib.data.subsets` — evaluation subsets, contrastive pairs, held-out texts, halves;
* :mod:`~steerlib.data.perspective` — Perspective attributes of the RTP sample, the scorer partition.

Until the layered layout ``steerlib.data`` was one module; its names still resolve here for
one release, with a deprecation warning (they live in :mod:`steerlib.data.prompts`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """The old flat module's names, forwarded with a deprecation warning."""
    from steerlib._moved import forward

    return forward(__name__, "steerlib.data.prompts", name)
