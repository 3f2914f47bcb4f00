"""Parameters of a run: one typed, validated set shared by every notebook of the chain.

The same names appear in each notebook's ``parameters`` cell and in the YAML files under
``notebooks/configs/``. Unknown names and wrong types fail before any notebook runs, naming the
parameter.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerlib.errors import ConfigError

__all__ = ["RunParams", "load_params", "parse_overrides"]


class RunParams(BaseModel):
    """Every parameter of the experiment chain, with the embedded offline defaults.

    Example:
        >>> RunParams(n_prompts=8).alphas
        [-1.0, 0.0, 0.5, 1.5]
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    run_name: str = Field("default", description="Folder under data/runs/ for this run.")
    model: str = Field("smollm2-135m-instruct", description="Model alias, hub id or folder.")
    scorer: str = Field("profanity-check", description="Toxicity scorer.")
    challenging_source: str = Field("bundled", description="'hub', 'bundled' or a JSONL path.")
    benign_source: str = Field("bundled", description="'hub', 'bundled' or a JSONL path.")
    n_prompts: int = Field(50, ge=1, description="Evaluation prompts per subset.")
    n_pairs: int | Literal["all"] = Field(
        20, description="Contrastive pairs for the vector; 'all': as many as the data allow."
    )
    pair_toxic_min: float = Field(
        0.5, ge=0.0, le=1.0, description="A toxic pair text's continuation toxicity is >= this."
    )
    pair_nontoxic_max: float = Field(
        0.25, ge=0.0, le=1.0, description="A non-toxic pair text's toxicity is below this."
    )
    pair_source: Literal["prompts", "completions", "matched"] = Field(
        "prompts",
        description=(
            "Contrastive texts: held-out prompts with their continuations, the most and least "
            "toxic baseline completions, or matched pairs (one prompt, its most and least "
            "toxic completion)."
        ),
    )
    layers: list[int] | Literal["all"] = Field(
        default_factory=lambda: [18], description="Steered layers, a list or 'all'."
    )
    alphas: list[float] = Field(
        default_factory=lambda: [-1.0, 0.0, 0.5, 1.5], description="Steering coefficients."
    )
    units: Literal["raw", "norm"] = Field("raw", description="Alpha units.")
    alpha_search: bool = Field(
        True,
        description=(
            "Per layer, also sweep the largest alpha whose benign human-text perplexity stays "
            "within max_perplexity_increase (bracketing search)."
        ),
    )
    positions: Literal["all", "generated"] = Field("all", description="Steered positions.")
    random_control: bool = Field(True, description="Also sweep a random same-norm direction.")
    samples_per_prompt: int = Field(
        1,
        ge=1,
        description="Samples per prompt and alpha; RTP uses 25, the default fewer.",
    )
    max_new_tokens: int = Field(20, ge=1, description="New tokens per completion.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature; 0: greedy.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    prompt_format: Literal["raw", "chat"] = Field("raw", description="Prompt formatting.")
    last_n: int = Field(32, ge=1, description="Content tokens mean-pooled for activations.")
    project_sink: bool = Field(
        True, description="Project the attention-sink direction out of the CAA vector."
    )
    batch_size: int = Field(32, ge=1, description="Rows per generation batch.")
    seed: int = Field(0, description="Base random seed.")
    benign_max_toxicity: float = Field(0.1, ge=0.0, le=1.0, description="Benign prompt cap.")
    toxicity_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Toxicity Probability.")
    max_perplexity_increase: float = Field(
        0.10, ge=0.0, description="Operating-point rule: fluency budget (0.10 = +10%)."
    )
    fluency_measure: Literal["human_perplexity", "perplexity"] = Field(
        "human_perplexity",
        description=(
            "Fluency measure of the budget: the steered model's perplexity on held-out benign "
            "human text, or benign continuation perplexity under the judge model."
        ),
    )
    min_distinct_ratio: float = Field(
        0.9, ge=0.0, description="Admissible: distinct-2 at least this × its alpha-0 value."
    )
    max_floor_share_increase: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Admissible: share of samples at the scorer's floor at most this over alpha 0.",
    )
    perplexity_model: str | None = Field(None, description="Perplexity judge; None: the model.")
    kl_texts: int = Field(16, ge=0, description="Held-out benign texts for KL; 0: skip.")
    n_resamples: int = Field(2000, ge=100, description="Bootstrap resamples.")
    compare_with: list[str] = Field(
        default_factory=list, description="Other runs to compare in 06, e.g. another pair_source."
    )
    device: str | None = Field(None, description="'cuda', 'mps', 'cpu'; None: auto.")
    dtype: str | None = Field(None, description="Weight dtype; None: auto.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")

    @field_validator("perplexity_model", "device", "dtype", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("alphas")
    @classmethod
    def _finite_alphas(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one alpha")
        bad = [a for a in value if not math.isfinite(a)]
        if bad:
            raise ValueError(f"alphas must be finite numbers, got {bad}")
        return value

    @field_validator("n_pairs")
    @classmethod
    def _positive_pairs(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("give a positive number of pairs or 'all'")
        return value

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one layer or 'all'")
        return value

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value in {".", ".."} or value.startswith("."):
            raise ValueError("run_name must be a plain folder name")
        return value

    @classmethod
    def validate_mapping(cls, values: dict[str, Any]) -> RunParams:
        """Validate ``values``; errors name the parameter.

        Raises:
            ConfigError: An unknown parameter, a wrong type or an out-of-range value.
        """
        try:
            return cls(**values)
        except ValidationError as exc:
            problems: dict[str, list[str]] = {}
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else "parameters"
                if err["type"] == "extra_forbidden":
                    problems.setdefault(name, []).append("unknown parameter")
                    continue
                message = str(err["msg"]).removeprefix("Value error, ")
                text = message if "got" in message else f"{message} (got {err.get('input')!r})"
                if text not in problems.setdefault(name, []):
                    problems[name].append(text)
            parts = []
            for name, texts in problems.items():
                if texts == ["unknown parameter"]:
                    parts.append(f"unknown parameter {name!r}")
                else:
                    parts.append(f"parameter {name!r}: " + " or ".join(texts))
            raise ConfigError("; ".join(parts) + ".") from None

    def notebook_parameters(self) -> dict[str, Any]:
        """The parameters as plain JSON values, for papermill."""
        return self.model_dump(mode="json")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``alphas=[0,1]``, ``seed=3``).

    Raises:
        ConfigError: An item has no ``=``.
    """
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {item!r}.")
        key, raw = item.split("=", 1)
        result[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return result


def load_params(
    config: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunParams:
    """Read a YAML parameter file, apply overrides, and validate.

    Raises:
        ConfigError: The file is missing or not a mapping, or a parameter is wrong.
    """
    values: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"No parameter file at {path}.")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of parameter names to values.")
        values.update(loaded)
    values.update(overrides or {})
    for key in ("challenging_source", "benign_source"):
        # Notebooks execute in notebooks/, so a relative file path is made absolute here,
        # against the folder the command runs in.
        value = values.get(key)
        if isinstance(value, str) and value not in {"hub", "bundled"}:
            values[key] = str(Path(value).expanduser().resolve())
    return RunParams.validate_mapping(values)
