"""Prompt data: RealToxicityPrompts-schema files, the hub dataset, and the evaluation split.

Every loader returns the *prompt table* of the contract, one row per record:

``prompt_id`` (str, unique, stable), ``prompt`` (str), ``prompt_toxicity`` (float or NaN),
``continuation`` (str or None), ``continuation_toxicity`` (float or NaN), ``challenging`` (bool),
``source`` (str: ``"handwritten"``, ``"rtp-hub"`` or the file path).

Records follow the RealToxicityPrompts (RTP) JSON-lines schema::

    {"filename": ..., "begin": ..., "end": ..., "challenging": ...,
     "prompt": {"text": ..., "toxicity": ..., ...}, "continuation": {"text": ..., ...}}

The scores are Perspective API attributes; they are optional and may be null.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerlib.errors import ConfigError, DataError

__all__ = [
    "BUNDLED_PROMPTS",
    "PROMPT_COLUMNS",
    "PromptSplit",
    "RTPContinuation",
    "RTPPrompt",
    "RTPRecord",
    "load_prompt_file",
    "load_prompts",
    "load_rtp_hub",
    "pair_texts",
    "perspective_labels",
    "split_prompts",
]

BUNDLED_PROMPTS: Path = (
    Path(__file__).resolve().parents[1] / "data" / "prompts" / "handwritten.jsonl"
)
"""The handwritten offline default prompt set shipped with the repository."""

PROMPT_COLUMNS: tuple[str, ...] = (
    "prompt_id",
    "prompt",
    "prompt_toxicity",
    "continuation",
    "continuation_toxicity",
    "challenging",
    "source",
)
"""Columns of the prompt table, in order."""

HUB_DATASET = "allenai/real-toxicity-prompts"
CHALLENGING_THRESHOLD = 0.5

Score = float | None


def _score_field() -> Any:
    """A Perspective score: a float in [0, 1] or null."""
    return Field(default=None, ge=0.0, le=1.0)


class _Scored(BaseModel):
    """Perspective attributes shared by the prompt and the continuation."""

    model_config = ConfigDict(extra="allow", strict=True)

    toxicity: Score = _score_field()
    severe_toxicity: Score = _score_field()
    profanity: Score = _score_field()
    insult: Score = _score_field()
    threat: Score = _score_field()
    identity_attack: Score = _score_field()
    sexually_explicit: Score = _score_field()
    flirtation: Score = _score_field()


class RTPPrompt(_Scored):
    """The ``prompt`` object of an RTP record; ``text`` is required and non-empty."""

    text: str

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt text is empty")
        return value


class RTPContinuation(_Scored):
    """The ``continuation`` object of an RTP record (RTP's human continuation)."""

    text: str | None = None


class RTPRecord(BaseModel):
    """One RealToxicityPrompts record; fields beyond the schema are kept and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    filename: str | None = None
    begin: int | None = None
    end: int | None = None
    challenging: bool | None = None
    source: str | None = None
    prompt: RTPPrompt
    continuation: RTPContinuation | None = None


@dataclass(frozen=True)
class PromptSplit:
    """Disjoint prompt subsets for one experiment.

    Attributes:
        challenging: Challenging evaluation prompts (``n_prompts`` rows).
        benign: Benign evaluation prompts (``n_prompts`` rows).
        pairs_toxic: Toxic side of the contrastive pairs for the steering vector (``n_pairs``).
        pairs_nontoxic: Non-toxic side of the contrastive pairs (``n_pairs`` rows).
    """

    challenging: pd.DataFrame
    benign: pd.DataFrame
    pairs_toxic: pd.DataFrame
    pairs_nontoxic: pd.DataFrame


# --------------------------------------------------------------------------------------------
# Record conversion


def _describe_validation_error(err: ValidationError) -> str:
    """Summarize the first pydantic error as ``field.path: message``."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "record"
    msg = first["msg"]
    if first["type"] == "missing":
        return f"field {loc} is missing"
    return f"field {loc} is invalid ({msg}, got {first.get('input')!r:.60})"


def _to_row(record: RTPRecord, *, fallback_id: str, source: str) -> dict[str, Any]:
    """Turn a validated record into a prompt-table row (``prompt_id`` not yet deduplicated)."""
    if record.filename is not None and record.begin is not None and record.end is not None:
        prompt_id = f"{record.filename}:{record.begin}-{record.end}"
    else:
        prompt_id = fallback_id
    prompt_toxicity = record.prompt.toxicity
    cont = record.continuation
    challenging = record.challenging
    if challenging is None:
        challenging = prompt_toxicity is not None and prompt_toxicity >= CHALLENGING_THRESHOLD
    return {
        "prompt_id": prompt_id,
        "prompt": record.prompt.text,
        "prompt_toxicity": np.nan if prompt_toxicity is None else float(prompt_toxicity),
        "continuation": cont.text if cont is not None else None,
        "continuation_toxicity": (
            np.nan if cont is None or cont.toxicity is None else float(cont.toxicity)
        ),
        "challenging": bool(challenging),
        "source": record.source if record.source is not None else source,
    }


def _records_to_frame(
    records: Iterable[tuple[int, Any]], *, where: str, unit: str, stem: str, source: str
) -> pd.DataFrame:
    """Validate ``(number, raw record)`` pairs and build the prompt table.

    Args:
        records: Raw records with their line (or row) number, in order.
        where: The file or dataset, for error messages.
        unit: ``"line"`` or ``"row"``, for error messages.
        stem: Prefix of the fallback ``prompt_id``.
        source: Value of the ``source`` column when a record has none.

    Raises:
        DataError: At the first record that does not fit the schema.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in records:
        if not isinstance(raw, dict):
            raise DataError(
                f"{where}, {unit} {number}: the record is a JSON {type(raw).__name__}, not an "
                "object; each record must be an RTP object with a prompt.text field."
            )
        try:
            record = RTPRecord.model_validate(raw)
        except ValidationError as err:
            raise DataError(
                f"{where}, {unit} {number}: {_describe_validation_error(err)}; each record needs "
                "a non-empty prompt.text string and scores that are numbers in [0, 1] or null."
            ) from None
        row = _to_row(record, fallback_id=f"{stem}:{number}", source=source)
        row["prompt_id"] = _unique(row["prompt_id"], seen)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(PROMPT_COLUMNS))
    return _typed(frame)


def _unique(prompt_id: str, seen: set[str]) -> str:
    """Return ``prompt_id``, or it with the first free ``#k`` suffix; record it in ``seen``."""
    candidate, k = prompt_id, 1
    while candidate in seen:
        k += 1
        candidate = f"{prompt_id}#{k}"
    seen.add(candidate)
    return candidate


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Give the prompt table its column types (continuation keeps ``None`` as object)."""
    frame["prompt_toxicity"] = frame["prompt_toxicity"].astype("float64")
    frame["continuation_toxicity"] = frame["continuation_toxicity"].astype("float64")
    frame["challenging"] = frame["challenging"].astype(bool)
    frame["continuation"] = pd.Series(
        list(frame["continuation"]), index=frame.index, dtype=object
    ).where(lambda s: s.notna(), None)
    return frame


# --------------------------------------------------------------------------------------------
# Loaders


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed JSON)`` for each non-blank line; raise DataError on bad JSON."""
    data = path.read_bytes()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(
                f"{path}, line {number}: the line is not valid UTF-8; save the file as UTF-8."
            ) from None
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {number}: malformed JSON ({err.msg} at column {err.colno}); each "
                "line must hold one JSON object."
            ) from None


def load_prompt_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an RTP-schema JSON-lines file into the prompt table.

    Blank lines are skipped. ``prompt_id`` is ``"<filename>:<begin>-<end>"`` when the record has
    those fields, else ``"<file stem>:<line number>"``; a repeated id gets a ``#2``, ``#3``...
    suffix. A record without ``challenging`` is challenging when its prompt toxicity is at
    least 0.5. ``source`` is the record's ``source`` field, else the file path.

    Args:
        path: The JSON-lines file.

    Returns:
        The prompt table (columns :data:`PROMPT_COLUMNS`).

    Raises:
        DataError: The file is missing or has no records, or a line is not valid JSON or does
            not fit the RTP schema (the message names the file and the line).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(
            f"Prompt file {file} does not exist; pass an existing RTP JSON-lines file, or "
            "'bundled' for the handwritten prompt set."
        )
    frame = _records_to_frame(
        _jsonl_records(file), where=str(file), unit="line", stem=file.stem, source=str(file)
    )
    if frame.empty:
        raise DataError(
            f"Prompt file {file} contains no records (line 1 onwards is empty or blank); "
            "add RTP JSON-lines records to it."
        )
    return frame


def _one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line, at most ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for offline mode."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def load_rtp_hub(dataset: str = HUB_DATASET, split: str = "train") -> pd.DataFrame:
    """Load RealToxicityPrompts from the Hugging Face hub into the prompt table.

    Args:
        dataset: Hub dataset id.
        split: Dataset split.

    Returns:
        The prompt table with ``source == "rtp-hub"``.

    Raises:
        DataError: The hub cannot be reached (or ``HF_HUB_OFFLINE=1``), or a record does not fit
            the RTP schema.
    """
    alternatives = (
        "set challenging_source: bundled for the handwritten prompts, or pass a local RTP "
        "JSON-lines file"
    )
    if _hub_offline():
        raise DataError(
            f"The Hugging Face hub could not be reached to load {dataset!r} because "
            f"HF_HUB_OFFLINE is set; {alternatives}."
        )
    import datasets  # heavy import, only needed here

    try:
        table = datasets.load_dataset(dataset, split=split)
    except (OSError, ConnectionError) as err:
        raise DataError(
            f"The Hugging Face hub could not be reached to load {dataset!r} split {split!r} "
            f"({_one_line(err)}); {alternatives}."
        ) from err
    if len(table) == 0:
        raise DataError(f"Hub dataset {dataset!r} split {split!r} has no records; {alternatives}.")
    where = f"hub dataset {dataset!r} split {split!r}"
    stem = dataset.rsplit("/", 1)[-1]
    return _records_to_frame(
        enumerate(table, start=0), where=where, unit="row", stem=stem, source="rtp-hub"
    ).assign(source="rtp-hub")


def load_prompts(source: str | os.PathLike[str]) -> pd.DataFrame:
    """Load the prompt table from ``"hub"``, ``"bundled"`` or a JSON-lines file path.

    Args:
        source: ``"hub"`` (RealToxicityPrompts from the hub), ``"bundled"`` (the handwritten
            offline set, :data:`BUNDLED_PROMPTS`) or the path of an RTP-schema file.

    Returns:
        The prompt table.

    Raises:
        DataError: See :func:`load_rtp_hub` and :func:`load_prompt_file`.
    """
    if isinstance(source, str) and source == "hub":
        return load_rtp_hub()
    if isinstance(source, str) and source == "bundled":
        return load_prompt_file(BUNDLED_PROMPTS)
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"Prompt source {str(source)!r} is neither 'hub', 'bundled' nor an existing file; "
            "pass one of those."
        )
    return load_prompt_file(path)


# --------------------------------------------------------------------------------------------
# Splits and derived views


def _check_count(name: str, value: int) -> None:
    """Raise ConfigError unless ``value`` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def _require_columns(df: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    """Raise DataError if ``df`` lacks any of ``columns``."""
    missing = [col for col in columns if col not in df.columns]
    if missing:
        raise DataError(
            f"The {name} prompt table lacks column(s) {missing}; build it with "
            "steerlib.data.load_prompts."
        )


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated prompt ids and repeated prompt texts (keep the first)."""
    df = df.drop_duplicates("prompt_id", keep="first")
    return df.drop_duplicates("prompt", keep="first")


def _take(
    pool: pd.DataFrame, rng: np.random.Generator, n_prompts: int, n_pairs: int, kind: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle ``pool``; return its first ``n_prompts`` rows and the next ``n_pairs`` rows."""
    needed = n_prompts + n_pairs
    if len(pool) < needed:
        raise ConfigError(
            f"n_prompts={n_prompts} plus n_pairs={n_pairs} needs {needed} distinct {kind} "
            f"prompts but only {len(pool)} are available; lower n_prompts or n_pairs or use a "
            "larger prompt source."
        )
    order = rng.permutation(len(pool))
    evaluation = pool.iloc[order[:n_prompts]].reset_index(drop=True)
    pairs = pool.iloc[order[n_prompts:needed]].reset_index(drop=True)
    return evaluation, pairs


def split_prompts(
    challenging: pd.DataFrame,
    benign: pd.DataFrame,
    *,
    n_prompts: int,
    n_pairs: int,
    seed: int,
    benign_max_toxicity: float = 0.1,
) -> PromptSplit:
    """Draw the evaluation prompts and the contrastive pairs, all disjoint.

    Challenging candidates are the rows of ``challenging`` with ``challenging == True``; benign
    candidates are the rows of ``benign`` with ``challenging == False`` and a prompt toxicity
    below ``benign_max_toxicity`` (or no score). Repeated ids or texts are dropped, and benign
    candidates sharing an id or a text with a challenging candidate are removed, so the four
    subsets are disjoint by ``prompt_id`` and by prompt text. Each pool is shuffled with its own
    child of ``numpy.random.SeedSequence(seed)``: the evaluation prompts are the first
    ``n_prompts`` and do not depend on ``n_pairs``.

    Args:
        challenging: Prompt table holding the challenging prompts.
        benign: Prompt table holding the benign prompts (may be the same table).
        n_prompts: Evaluation prompts per subset.
        n_pairs: Contrastive pairs for the steering vector.
        seed: Random seed.
        benign_max_toxicity: Upper bound (exclusive) on a benign prompt's toxicity.

    Returns:
        The :class:`PromptSplit`.

    Raises:
        ConfigError: A count is not positive, or the data hold too few candidates (the message
            names ``n_prompts``/``n_pairs``, the number requested and the number available).
        DataError: A table lacks the prompt-table columns.
    """
    _check_count("n_prompts", n_prompts)
    _check_count("n_pairs", n_pairs)
    needed_cols = ("prompt_id", "prompt", "prompt_toxicity", "challenging")
    _require_columns(challenging, "challenging", needed_cols)
    _require_columns(benign, "benign", needed_cols)

    toxic_pool = _dedupe(challenging[challenging["challenging"].astype(bool)])
    tox = pd.to_numeric(benign["prompt_toxicity"], errors="coerce")
    benign_mask = ~benign["challenging"].astype(bool) & ((tox < benign_max_toxicity) | tox.isna())
    benign_pool = _dedupe(benign[benign_mask])
    benign_pool = benign_pool[
        ~benign_pool["prompt_id"].isin(toxic_pool["prompt_id"])
        & ~benign_pool["prompt"].isin(toxic_pool["prompt"])
    ]

    rng_toxic, rng_benign = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
    )
    challenging_eval, pairs_toxic = _take(toxic_pool, rng_toxic, n_prompts, n_pairs, "challenging")
    benign_eval, pairs_nontoxic = _take(
        benign_pool, rng_benign, n_prompts, n_pairs, f"benign (toxicity < {benign_max_toxicity})"
    )
    return PromptSplit(
        challenging=challenging_eval,
        benign=benign_eval,
        pairs_toxic=pairs_toxic,
        pairs_nontoxic=pairs_nontoxic,
    )


def _has_text(value: Any) -> bool:
    """Whether ``value`` is a non-empty string."""
    return isinstance(value, str) and bool(value.strip())


def pair_texts(df: pd.DataFrame) -> list[str]:
    """Texts used for activations: prompt + continuation when there is one, else the prompt.

    A space is inserted when neither side has whitespace at the seam (RTP continuations
    already start with one).

    Args:
        df: A prompt table (``prompt`` and optionally ``continuation`` columns).

    Returns:
        One text per row, in order.
    """
    _require_columns(df, "pairs", ("prompt",))
    continuations = df["continuation"] if "continuation" in df.columns else [None] * len(df)
    texts = []
    for prompt, cont in zip(df["prompt"], continuations, strict=True):
        if not _has_text(cont):
            texts.append(prompt)
        elif prompt[-1:].isspace() or cont[:1].isspace():
            texts.append(prompt + cont)
        else:
            texts.append(f"{prompt} {cont}")
    return texts


def perspective_labels(df: pd.DataFrame, threshold: float = 0.5) -> tuple[list[str], np.ndarray]:
    """Texts with binary Perspective labels, to measure a scorer's agreement with Perspective.

    Uses every prompt text whose ``prompt_toxicity`` is not null and every continuation text
    whose ``continuation_toxicity`` is not null (prompts first, then continuations).

    Args:
        df: A prompt table.
        threshold: A text is toxic when its Perspective toxicity is at least this.

    Returns:
        ``(texts, labels)`` where ``labels`` is a boolean array aligned with ``texts``.

    Raises:
        ConfigError: ``threshold`` is not in (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold!r}.")
    _require_columns(
        df, "labelled", ("prompt", "prompt_toxicity", "continuation", "continuation_toxicity")
    )
    texts: list[str] = []
    scores: list[float] = []
    for prompt, score in zip(df["prompt"], df["prompt_toxicity"], strict=True):
        if pd.notna(score) and _has_text(prompt):
            texts.append(prompt)
            scores.append(float(score))
    for cont, score in zip(df["continuation"], df["continuation_toxicity"], strict=True):
        if pd.notna(score) and _has_text(cont):
            texts.append(cont)
            scores.append(float(score))
    return texts, np.asarray(scores, dtype=np.float64) >= threshold
