"""Parameters of a run: one typed, validated set shared by every notebook of the chain.

The same names appear in each notebook's ``parameters`` cell and in the YAML files under
``notebooks/configs/``. Unknown names, wrong types and out-of-range values fail before any
notebook runs, with one line that names the parameter.

Types are strict: a boolean parameter takes only ``true``/``false``, an integer only a whole
number (not ``true``), a float only a finite number. Alphas and layers are listed once each,
and the alphas include 0 (the unsteered reference). Parameter files are read by a YAML loader
that refuses duplicate keys and aliases, and their syntax errors name the file, line and
column.

Over 500 lines (about 570): :class:`RunParams` declares every parameter (about 200 lines of
fields) and the strict YAML loader is its only reader.
"""

from __future__ import annotations

import os
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic.types import Strict

from steerlib.errors import ConfigError

__all__ = [
    "FLOAT32_MAX",
    "MAX_CONFIG_BYTES",
    "MIN_TEMPERATURE",
    "RUN_NAME_MAX",
    "SEED_MAX",
    "RunParams",
    "load_params",
    "parse_overrides",
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
    layers: list[StrictInt] | Literal["all"] = Field(
        default_factory=lambda: [18], description="Steered layers, a list or 'all'."
    )
    alphas: list[StrictFloat] = Field(
        default_factory=lambda: [-1.0, 0.0, 0.5, 1.5],
        description="Steering coefficients, each once; 0 (the unsteered reference) included.",
    )
    units: Literal["raw", "norm"] = Field("raw", description="Alpha units.")
    alpha_search: StrictBool = Field(
        True,
        description=(
            "Per layer, also sweep the largest alpha whose benign human-text perplexity stays "
            "within max_perplexity_increase (bracketing search)."
        ),
    )
    positions: Literal["all", "generated"] = Field("all", description="Steered positions.")
    random_control: StrictBool = Field(True, description="Also sweep a random same-norm direction.")
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
    kl_texts: StrictInt = Field(16, ge=0, description="Held-out benign texts for KL; 0: skip.")
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

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one layer or 'all'")
            _distinct("layer", value)
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


# -- YAML ------------------------------------------------------------------------------------
class _ParamLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases (no alias bombs) and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in parameter files; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {short_repr(key)} appears twice; keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


# Plain values are read as YAML 1.2 reads them: only true/false are booleans (YAML 1.1 also
# turns yes, no, on, off, y and n into booleans), and 1e39 is a number (YAML 1.1: text).
_ParamLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ParamLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ParamLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of character ``index`` of ``text``."""
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _parse_yaml(text: str, where: str) -> Any:
    """Parse ``text`` with the strict loader; errors become one line with line and column.

    Raises:
        ConfigError: A syntax error, a tab, an unprintable character, an alias, a duplicate
            key or a tag other than YAML's plain types.
    """
    try:
        return yaml.load(text, Loader=_ParamLoader)  # a SafeLoader subclass
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(
            f"{where}, line {line}, column {column}: the character {char} cannot appear in YAML; "
            "remove it."
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        hint = "; indent with spaces, not tabs" if "\\t" in problem else ""
        if "could not determine a constructor" in problem:
            hint = "; only plain YAML values (numbers, text, lists, true/false) are read"
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}{at}: {problem}{hint}.") from None
    except yaml.YAMLError as exc:  # pragma: no cover - every YAML error above is marked
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}.") from None
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply.") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``alphas=[0,1]``, ``seed=3``).

    A key given twice takes its last value, as command-line options do.

    Raises:
        ConfigError: An item has no ``=``, names no key, or its value is not valid YAML.
    """
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {short_repr(item)}.")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {short_repr(item)} names no parameter; write key=value.")
        result[key] = _parse_yaml(raw, f"--set {key}") if raw.strip() else None
    return result


def _read_config(path: Path) -> dict[str, Any]:
    """The mapping of a parameter file.

    Raises:
        ConfigError: The file is missing, unreadable, too large, not UTF-8, not YAML, empty
            or not a mapping.
    """
    try:
        if not path.is_file():
            raise ConfigError(f"No parameter file at {path}; pass an existing YAML file.")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path} is larger than {MAX_CONFIG_BYTES // 1000} kB; a parameter file holds "
                "a few lines of name: value."
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror or exc}).") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}, line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
            "save the file as UTF-8."
        ) from None
    loaded = _parse_yaml(text, str(path))
    if loaded is None or loaded == {}:
        raise ConfigError(
            f"{path} holds no parameters; write name: value lines (see "
            "notebooks/configs/default.yaml), or leave --config out to use default.yaml."
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path} must hold a mapping of parameter names to values, not {short_repr(loaded)}."
        )
    names = [key for key in loaded if not isinstance(key, str)]
    if names:
        raise ConfigError(
            f"{path}: parameter names are text, got {short_repr(names[0])}; write name: value."
        )
    return loaded


def _absolute_source(name: str, value: str) -> str:
    """A prompt file path made absolute against the current folder.

    Symbolic links are kept, so that a broken one is reported by the prompt loader.

    Raises:
        ConfigError: The path cannot be made absolute (a NUL, an unknown ``~user``).
    """
    try:
        if "\x00" in value:
            raise ValueError("it holds a NUL character")
        return os.path.abspath(Path(value).expanduser())
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"parameter {name!r}: the path {short_repr(value)} cannot be resolved ({exc}); pass "
            "an existing JSON-lines file, 'bundled' or 'hub'."
        ) from None


def load_params(
    config: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunParams:
    """Read a YAML parameter file, apply overrides, and validate.

    Raises:
        ConfigError: The file is missing, unreadable, not UTF-8, not valid YAML (file, line
            and column), empty or not a mapping, or a parameter is wrong.
    """
    values: dict[str, Any] = {}
    if config is not None:
        values.update(_read_config(Path(config)))
    values.update(overrides or {})
    for key in ("challenging_source", "benign_source"):
        # Notebooks execute in notebooks/, so a relative file path is made absolute here,
        # against the folder the command runs in.
        value = values.get(key)
        if isinstance(value, str) and value not in {"hub", "bundled"}:
            values[key] = _absolute_source(key, value)
    return RunParams.validate_mapping(values)
