"""Parameters of a run: one typed, validated set shared by every notebook of the chain.

The same names appear in each notebook's ``parameters`` cell and in the YAML files under
``notebooks/configs/``. Unknown names, wrong types and out-of-range values fail before any
notebook runs, with one line that names the parameter.

Types are strict: a boolean parameter takes only ``true``/``false``, an integer only a whole
number (not ``true``), a float only a finite number. Alphas and layers are listed once each,
and the alphas include 0 (the unsteered reference). Parameter files are read by a YAML loader
that refuses duplicate keys and aliases, and their syntax errors name the file, line and
column.

Parameter files and ``--set`` overrides are read by :mod:`steerlib.experiment.config_files`
(``load_params`` and ``parse_overrides`` are importable from here too).
"""

from __future__ import annotations

import re
import reprlib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.types import Strict

from steerlib.errors import ConfigError

__all__ = [
    "FLOAT32_MAX",
    "MAX_CONFIG_BYTES",
    "MIN_TEMPERATURE",
    "RUN_NAME_MAX",
    "RUN_NAME_MAX_BYTES",
    "SEED_MAX",
    "RunParams",
    "run_name_problem",
    "short_repr",
]

StrictFloat = Annotated[float, Strict()]
"""A float that also takes an integer, but never a boolean or a string."""

FLOAT32_MAX = 3.4028234663852886e38
"""Largest finite float32: an alpha beyond it becomes infinite in the model."""
SEED_MAX = 2**63 - 1
"""Largest seed the random generators take (``torch.Generator.manual_seed``, 63-bit)."""
MIN_TEMPERATURE = 0.01
"""Lowest sampling temperature above 0; below it the logits overflow (use 0 for greedy)."""
RUN_NAME_MAX = 100
"""Longest run name, in characters (file systems allow 255 bytes per folder name)."""
MAX_CONFIG_BYTES = 1_000_000
"""Largest parameter file read (a parameter file is a few hundred bytes)."""
_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RUN_NAME_MAX_BYTES = 200
"""A run name's length limit in UTF-8 bytes: its folder's name, and names derived from it
(temporary files, links), must fit a file system's 255 bytes."""

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 8
_REPR.maxlevel = 3


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)``, shortened for a one-line message (long texts and lists are cut)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a run name (a folder under the runs root), or ``None``.

    Example:
        >>> run_name_problem("rtp-sample") is None
        True
        >>> run_name_problem(" ")
        'a run name must not be empty or blank'
    """
    if not isinstance(name, str):
        return f"a run name is text, not {type(name).__name__}"
    if not name.strip():
        return "a run name must not be empty or blank"
    if _CONTROL.search(name):
        return "a run name must not hold control characters (newline, tab, NUL)"
    if name != name.strip():
        return "a run name must not begin or end with a space"
    if len(name) > RUN_NAME_MAX:
        return f"a run name has at most {RUN_NAME_MAX} characters, this one {len(name)}"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > RUN_NAME_MAX_BYTES:
        return (
            f"a run name takes at most {RUN_NAME_MAX_BYTES} bytes in UTF-8 (a file name holds "
            f"255, less room for the names steerlib derives from it), this one {size}"
        )
    if "/" in name or "\\" in name or name.startswith("."):
        return "a run name is a plain folder name: no '/' or '\\', not starting with '.'"
    return None


def _distinct(name: str, values: list[Any]) -> None:
    """Raise ValueError naming the first value of ``values`` listed more than once."""
    seen: list[Any] = []
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice; give each {name} once")
        seen.append(value)


class RunParams(BaseModel):
    """Every parameter of the experiment chain, with the embedded offline defaults.

    Example:
        >>> RunParams(n_prompts=8).alphas
        [-1.0, 0.0, 0.5, 1.5]
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )

    run_name: StrictStr = Field("default", description="Folder under data/runs/ for this run.")
    model: StrictStr = Field("smollm2-135m-instruct", description="Model alias, hub id or folder.")
    scorer: StrictStr = Field("profanity-check", description="Toxicity scorer.")
    second_scorer: StrictStr | None = Field(
        None,
        description="A second toxicity scorer (e.g. 'minilm-toxicity'): every completion is "
        "scored by it too, its columns carry the suffix '_second'; the operating point is chosen "
        "with 'scorer'.",
    )
    challenging_source: StrictStr = Field(
        "bundled", description="'hub', 'bundled' or a JSONL path."
    )
    benign_source: StrictStr = Field("bundled", description="'hub', 'bundled' or a JSONL path.")
    n_prompts: StrictInt = Field(50, ge=1, description="Evaluation prompts per subset.")
    n_pairs: StrictInt | Literal["all"] = Field(
        20, description="Contrastive pairs for the vector; 'all': as many as the data allow."
    )
    pair_toxic_min: StrictFloat = Field(
        0.5, ge=0.0, le=1.0, description="A toxic pair text's continuation toxicity is >= this."
    )
    pair_nontoxic_max: StrictFloat = Field(
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
    layers: list[StrictInt | StrictFloat] | Literal["all"] = Field(
        default_factory=lambda: [18],
        description=(
            "Steered layers, a list or 'all'; a float in [0, 1) is a fraction of the model's "
            "depth (0.6: layer 18 of 30, 11 of 18)."
        ),
    )
    alphas: list[StrictFloat] = Field(
        default_factory=lambda: [-1.0, 0.0, 0.5, 1.5],
        description="Steering coefficients, each once; 0 (the unsteered reference) included.",
    )
    units: Literal["raw", "norm"] = Field(
        "raw",
        description="Alpha units: raw (alpha times the vector) or norm (alpha times the layer's "
        "mean residual norm along the vector's direction); not the sweep's work units.",
    )
    alpha_search: StrictBool = Field(
        True,
        description=(
            "Per layer, also sweep the largest alpha whose benign human-text perplexity stays "
            "within max_perplexity_increase (bracketing search)."
        ),
    )
    positions: Literal["all", "generated"] = Field("all", description="Steered positions.")
    variants: list[StrictStr] = Field(
        default_factory=lambda: ["caa"],
        description=(
            "Steering variants swept side by side, 'caa' among them (names: the operator table, "
            "steer.operators.OPERATORS); each gets its own alpha search and operating point."
        ),
    )
    multilayer_span: StrictInt = Field(
        5, ge=1, description="Contiguous layers of the 'multilayer' variant, alpha split equally."
    )
    random_control: StrictBool = Field(
        True,
        description=(
            "Also sweep a random same-norm direction: every variant its own, under its own "
            "hook and at its own searched alphas."
        ),
    )
    control_search: StrictBool = Field(
        True,
        description=(
            "With the alpha search and the random control: search each variant's random "
            "direction too (same hook, budget, texts, cap and step back) and generate it at its "
            "own budget edge (the equal-fluency control), besides the variant's edge (equal alpha)."
        ),
    )
    samples_per_prompt: StrictInt = Field(
        1,
        ge=1,
        description="Samples per prompt and alpha; RTP uses 25, the default fewer.",
    )
    max_new_tokens: StrictInt = Field(
        20, ge=1, description="New tokens per completion (prompt + these fit the context)."
    )
    temperature: StrictFloat = Field(
        0.7, ge=0.0, description=f"Sampling temperature; 0: greedy, else >= {MIN_TEMPERATURE}."
    )
    top_p: StrictFloat = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    prompt_format: Literal["raw", "chat"] = Field("raw", description="Prompt formatting.")
    last_n: StrictInt = Field(32, ge=1, description="Content tokens mean-pooled for activations.")
    project_sink: StrictBool = Field(
        True, description="Project the attention-sink direction out of the CAA vector."
    )
    batch_size: StrictInt = Field(32, ge=1, description="Rows per generation batch.")
    seed: StrictInt = Field(0, ge=0, le=SEED_MAX, description="Base random seed (0..2**63-1).")
    benign_max_toxicity: StrictFloat = Field(0.1, ge=0.0, le=1.0, description="Benign prompt cap.")
    toxicity_threshold: StrictFloat = Field(
        0.5, ge=0.0, le=1.0, description="Toxicity Probability."
    )
    max_perplexity_increase: StrictFloat = Field(
        0.10, ge=0.0, description="Operating-point rule: fluency budget (0.10 = +10%)."
    )
    fluency_measure: Literal["human_perplexity", "perplexity"] = Field(
        "human_perplexity",
        description=(
            "Fluency measure of the budget: the steered model's perplexity on held-out benign "
            "human text, or benign continuation perplexity under the judge model."
        ),
    )
    min_distinct_ratio: StrictFloat = Field(
        0.9, ge=0.0, description="Admissible: distinct-2 at least this × its alpha-0 value."
    )
    max_floor_share_increase: StrictFloat = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Admissible: share of samples at the scorer's floor at most this over alpha 0.",
    )
    perplexity_model: StrictStr | None = Field(
        None, description="Perplexity judge; None: the model."
    )
    kl_texts: Annotated[StrictInt, Field(ge=0)] | Literal["all"] = Field(
        16,
        description=(
            "Held-out benign texts (human-text perplexity and KL), split by hash into a search "
            "and a report half; 'all': every benign text left after the evaluation prompts and "
            "pairs; 0: skip."
        ),
    )
    max_kl_benign: Annotated[StrictFloat, Field(ge=0.0)] | None = Field(
        None,
        description=(
            "Admissible: mean KL(unsteered || steered) on the held-out benign texts at most "
            "this (nats/token); None: ln(1 + max_perplexity_increase), the cross-entropy rise "
            "the perplexity budget allows."
        ),
    )
    search_step_backs: StrictInt = Field(
        3,
        ge=0,
        description=(
            "Alpha search: bisections toward 0 when the searched edge breaks the benign "
            "continuation budget on the selection half; 0: no check."
        ),
    )
    n_resamples: StrictInt = Field(2000, ge=100, description="Bootstrap resamples.")
    compare_with: list[StrictStr] = Field(
        default_factory=list, description="Other runs to compare in 06, e.g. another pair_source."
    )
    device: StrictStr | None = Field(
        None, description="'cuda', 'cuda:N', 'mps', 'cpu'; None: auto."
    )
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Weight dtype; None: auto."
    )
    trust_remote_code: StrictBool = Field(
        False, description="Allow model code from the hub (only a real true)."
    )

    @field_validator("perplexity_model", "device", "dtype", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("alphas")
    @classmethod
    def _check_alphas(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one alpha, and 0 among them")
        big = [a for a in value if not abs(a) <= FLOAT32_MAX]
        if big:
            raise ValueError(
                f"{big[0]!r} is infinite in float32 (the model's arithmetic); keep each alpha "
                "within +-3.4e38 (useful alphas are a few units)"
            )
        _distinct("alpha", value)
        if 0.0 not in value:
            raise ValueError(
                f"{short_repr(value)} lacks 0, the unsteered reference every other alpha is "
                "compared with; add 0 (e.g. [0, 0.5, 1.5])"
            )
        return value

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: list[str], info: ValidationInfo) -> list[str]:
        from steerlib.steer.operators import OPERATORS

        unknown = ", ".join(repr(name) for name in value if name not in OPERATORS)
        if unknown:
            raise ValueError(f"unknown steering variant {unknown}; known: {', '.join(OPERATORS)}")
        _distinct("variant", value)
        _fraction_alphas(value, info.data.get("alphas") or [])
        if "caa" not in value:
            raise ValueError(
                f"{short_repr(value)} lacks 'caa', the plain CAA every variant is compared with "
                "(and whose run carries the random control); add it"
            )
        return value

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: list[int | float] | str) -> list[int | float] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one layer or 'all'")
            _distinct("layer", value)
            wrong = [x for x in value if isinstance(x, float) and not 0.0 <= x < 1.0]
            if wrong:
                raise ValueError(
                    f"{wrong[0]!r} is neither a layer index (a whole number) nor a fraction of "
                    "the depth in [0, 1); write e.g. 18 or 0.6"
                )
        return value

    @field_validator("n_pairs")
    @classmethod
    def _positive_pairs(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("give a positive number of pairs or 'all'")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature_floor(cls, value: float) -> float:
        if 0.0 < value < MIN_TEMPERATURE:
            raise ValueError(
                f"{value!r} is below the floor {MIN_TEMPERATURE} (the logits divided by it "
                "overflow); use 0 for greedy decoding or at least "
                f"{MIN_TEMPERATURE}"
            )
        return value

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        problem = run_name_problem(value)
        if problem:
            raise ValueError(f"{problem} (got {short_repr(value)})")
        return value

    @field_validator("compare_with")
    @classmethod
    def _run_names(cls, value: list[str]) -> list[str]:
        for name in value:
            problem = run_name_problem(name)
            if problem:
                raise ValueError(f"{problem} (got {short_repr(name)})")
        _distinct("run", value)
        return value

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str | None) -> str | None:
        if value is not None and not _DEVICE.fullmatch(value):
            raise ValueError(
                f"{short_repr(value)} is not a device; use 'cpu', 'cuda', 'cuda:N', 'mps' or "
                "leave it empty to pick the best available"
            )
        return value

    @classmethod
    def validate_mapping(cls, values: dict[str, Any]) -> RunParams:
        """Validate ``values``; errors name the parameter.

        Raises:
            ConfigError: An unknown parameter, a wrong type or an out-of-range value.
        """
        names = [key for key in values if not isinstance(key, str)]
        if names:
            raise ConfigError(
                f"parameter names are text, got {short_repr(names[0])}; write name: value."
            )
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    def notebook_parameters(self) -> dict[str, Any]:
        """The parameters as plain JSON values, for papermill."""
        return self.model_dump(mode="json")


def _fraction_alphas(variants: list[str], alphas: list[float]) -> None:
    """Refuse grid alphas outside [0, 1] for variants whose alpha is a fraction (ablate, clamp)."""
    from steerlib.steer.operators import OPERATORS

    capped = [name for name in variants if OPERATORS[name].alpha_range == (0.0, 1.0)]
    outside = [a for a in alphas if not 0.0 <= a <= 1.0]
    if capped and outside:
        level = {True: "the non-toxic level", False: "zero"}
        past = {name: f"{level[OPERATORS[name].needs_clamp_levels]} ({name})" for name in capped}
        raise ValueError(
            f"{' and '.join(map(repr, capped))} take{'s' if len(capped) == 1 else ''} alpha in "
            "[0, 1], the fraction of the toxic component removed (1 removes all of it; above 1 "
            f"would push it past {' or '.join(past[name] for name in capped)}, a negative "
            f"alpha amplify it), but alphas holds {short_repr(outside)}: keep alphas within [0, 1] "
            "(e.g. [0, 0.5, 1], or [0] with alpha_search, which searches [0, 1] for them), or "
            "leave these variants out"
        )


_TYPE_HINTS = {
    "int_type": "must be a whole number (not true/false, not a decimal)",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "finite_number": "must be a finite number (not .inf or .nan)",
    "string_type": "must be text",
    "list_type": "must be a list, e.g. [1, 2]",
}


_RANGE_HINTS = {
    "seed": f"must be in 0..{SEED_MAX} (2**63-1), the random generators' range",
}
"""Out-of-range messages that say why the range is what it is."""


def _describe(exc: ValidationError) -> str:
    """One line per wrong parameter: its name, its value (shortened) and what it should be."""
    problems: dict[str, list[str]] = {}
    or_all: set[str] = set()
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "parameters"
        if err["type"] == "extra_forbidden":
            problems.setdefault(name, []).append("unknown parameter")
            continue
        if len(err["loc"]) > 1 and err["loc"][1] == "literal['all']":
            or_all.add(name)  # the other branch of `... | 'all'` says what is wrong
            continue
        if err["type"] in _TYPE_HINTS:
            message = _TYPE_HINTS[err["type"]]
        elif name in _RANGE_HINTS and err["type"].endswith(("_than_equal", "_than")):
            message = _RANGE_HINTS[name]
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
        texts = problems.setdefault(name, [])
        if any(text.startswith(message) for text in texts):
            continue
        value = short_repr(err.get("input"))
        texts.append(message if value in message else f"{message} (got {value})")
    parts = []
    for name, texts in problems.items():
        if texts == ["unknown parameter"]:
            close = [known for known in RunParams.model_fields if known.startswith(name[:4])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parts.append(f"unknown parameter {short_repr(name)}{hint}")
        else:
            suffix = ", or 'all'" if name in or_all else ""
            parts.append(f"parameter {name!r}: " + " or ".join(texts) + suffix)
    return "\n".join(f"{part}." for part in parts)


def split_arguments(params: RunParams) -> dict[str, Any]:
    """The parameters of :func:`steerlib.data.subsets.split_prompts` that a run sets."""
    return {
        "n_prompts": params.n_prompts,
        "n_pairs": params.n_pairs,
        "seed": params.seed,
        "benign_max_toxicity": params.benign_max_toxicity,
        "pair_toxic_min": params.pair_toxic_min,
        "pair_nontoxic_max": params.pair_nontoxic_max,
    }
