"""Where the files shipped inside the package live (the ground floor: imports nothing).

* ``prompts/`` — the handwritten prompts of the embedded default;
* ``scorers/`` — the ``minilm-toxicity`` head and its provenance;
* ``model_configs/`` — configs of real model shapes for ``random:`` models.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent
PROMPTS_DIR = RESOURCES / "prompts"
SCORERS_DIR = RESOURCES / "scorers"
MODEL_CONFIGS_DIR = RESOURCES / "model_configs"
