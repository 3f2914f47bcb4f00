"""Prompt data: RealToxicityPrompts-schema files, the hub dataset and the bundled prompts.

Every loader returns the *prompt table* of the contract, one row per record:

``prompt_id`` (str, unique, stable; see :func:`load_prompt_file`), ``prompt`` (str),
``prompt_toxicity`` (float or NaN), ``continuation`` (str or None), ``continuation_toxicity``
(float or NaN), ``challenging`` (bool), ``source`` (str: ``"handwritten"``, ``"rtp-hub"`` or
the file path).

Records follow the RealToxicityPrompts (RTP) JSON-lines schema::

    {"filename": ..., "begin": ..., "end": ..., "challenging": ...,
     "prompt": {"text": ..., "toxicity": ..., ...}, "continuation": {"text": ..., ...}}

The scores are Perspective API attributes; they are optional and may be null.

The experiment's subsets of these tables are drawn in :mod:`steerlib.data.subsets`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerlib.errors import DataError
from steerlib.resources import PROMPTS_DIR

__all__ = [
    "BUNDLED_PROMPTS",
    "PROMPT_COLUMNS",
    "RTPContinuation",
    "RTPPrompt",
    "RTPRecord",
    "load_prompt_file",
    "load_prompts",
    "load_rtp_hub",
    "text_digest",
]

BUNDLED_PROMPTS: Path = (
    PROMPTS_DIR / "handwritten.jsonl"
)
"""The handwritten offline default prompt set, shipped inside the package (package data)."""

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
        fallback = f"{stem}:{number}:{text_digest(record.prompt.text)}"
        row = _to_row(record, fallback_id=fallback, source=source)
        row["prompt_id"] = _unique(row["prompt_id"], seen)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(PROMPT_COLUMNS))
    return _typed(frame)


def text_digest(text: str) -> str:
    """First 8 hex digits of the SHA-256 of ``text`` (UTF-8): the text part of a prompt id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


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
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"Prompt file {path} cannot be read ({exc.strerror or exc}); check its permissions."
        ) from None
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
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = f"{err.msg} at column {err.colno}" if hasattr(err, "colno") else "too deep"
            raise DataError(
                f"{path}, line {number}: malformed JSON ({reason}); each line must hold one JSON "
                "object."
            ) from None
        if "\\u" in line:
            _check_unicode(record, f"{path}, line {number}")
        yield number, record


def _check_unicode(record: Any, where: str) -> None:
    """Refuse a lone surrogate (an unpaired ``ud800``-style escape): it is not text.

    Raises:
        DataError: Naming ``where`` and the escape.
    """
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start : err.end]
        escape = "".join(f"\\u{ord(c):04x}" for c in bad)
        raise DataError(
            f"{where}: the escape {escape} is a lone surrogate, not a character; fix or remove "
            "it (a character outside the basic plane is written as a pair of escapes)."
        ) from None


def load_prompt_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an RTP-schema JSON-lines file into the prompt table.

    Blank lines are skipped. ``prompt_id`` is ``"<filename>:<begin>-<end>"`` when the record has
    those fields (RTP's own identity of a prompt), else ``"<file stem>:<line>:<digest>"`` where
    ``<digest>`` is :func:`text_digest` of the prompt text: two files with the same name in
    different folders give the same id only for the same text on the same line. A repeated id
    within the file gets a ``#2``, ``#3``... suffix. A record without ``challenging`` is
    challenging when its prompt toxicity is at least 0.5. ``source`` is the record's ``source``
    field, else the file path.

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
        what = (
            "is a symbolic link that leads nowhere (or in a loop)"
            if file.is_symlink()
            else ("is not a file" if file.exists() else "does not exist")
        )
        raise DataError(
            f"Prompt file {file} {what}; pass an existing RTP JSON-lines file, or "
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
        loop = " (a symbolic link that leads nowhere or in a loop)" if path.is_symlink() else ""
        raise DataError(
            f"Prompt source {str(source)!r} is neither 'hub', 'bundled' nor an existing file"
            f"{loop}; pass one of those."
        )
    return load_prompt_file(path)
