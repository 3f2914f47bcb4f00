"""Prompt data: RealToxicityPrompts-schema files, the hub dataset, and the evaluation split.

Every loader returns the *prompt table* of the contract, one row per record:

``prompt_id`` (str, unique, stable; see :func:`load_prompt_file`), ``prompt`` (str),
``prompt_toxicity`` (float or NaN), ``continuation`` (str or None), ``continuation_toxicity``
(float or NaN), ``challenging`` (bool), ``source`` (str: ``"handwritten"``, ``"rtp-hub"`` or
the file path).

Records follow the RealToxicityPrompts (RTP) JSON-lines schema::

    {"filename": ..., "begin": ..., "end": ..., "challenging": ...,
     "prompt": {"text": ..., "toxicity": ..., ...}, "continuation": {"text": ..., ...}}

The scores are Perspective API attributes; they are optional and may be null.

Over 500 lines (about 750): the RTP schema check, the loaders (hub, bundled, files) and the
disjoint subset split all speak the same record schema; the split is the one natural seam and a
candidate for its own module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerlib.errors import ConfigError, DataError

__all__ = [
    "BUNDLED_PROMPTS",
    "PROMPT_COLUMNS",
    "LengthFn",
    "PromptSplit",
    "RTPContinuation",
    "RTPPrompt",
    "RTPRecord",
    "count_words",
    "load_prompt_file",
    "load_prompts",
    "load_rtp_hub",
    "match_lengths",
    "pair_texts",
    "perspective_labels",
    "split_prompts",
    "text_digest",
    "text_labels",
]

BUNDLED_PROMPTS: Path = (
    Path(__file__).resolve().parent / "resources" / "prompts" / "handwritten.jsonl"
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


@dataclass(frozen=True)
class PromptSplit:
    """Disjoint prompt subsets for one experiment.

    Attributes:
        challenging: Challenging evaluation prompts (``n_prompts`` rows).
        benign: Benign evaluation prompts (``n_prompts`` rows).
        pairs_toxic: Toxic contrastive texts for the steering vector (``n_pairs`` rows).
        pairs_nontoxic: Non-toxic contrastive texts, length-matched to ``pairs_toxic`` row by
            row (``n_pairs`` rows).
        kl_benign: Held-out benign texts for the KL measure (``n_kl`` rows at most).
    """

    challenging: pd.DataFrame
    benign: pd.DataFrame
    pairs_toxic: pd.DataFrame
    pairs_nontoxic: pd.DataFrame
    kl_benign: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROMPT_COLUMNS))


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


def _distinct_ids(challenging: pd.DataFrame, benign: pd.DataFrame) -> pd.DataFrame:
    """``benign`` with each id that ``challenging`` gives another text made distinct.

    Ids come from the records (``filename``/``begin``/``end``), so two files can give one id
    to different texts; such a benign row gets the suffix ``#<text digest>`` instead of being
    dropped as a duplicate. A row with the same id and text stays a duplicate.
    """
    texts = dict(zip(challenging["prompt_id"], challenging["prompt"], strict=True))
    clash = [
        prompt_id in texts and texts[prompt_id] != prompt
        for prompt_id, prompt in zip(benign["prompt_id"], benign["prompt"], strict=True)
    ]
    if not any(clash):
        return benign
    benign = benign.copy()
    renamed = [
        f"{prompt_id}#{text_digest(prompt)}"
        for prompt_id, prompt in zip(benign["prompt_id"], benign["prompt"], strict=True)
    ]
    benign["prompt_id"] = benign["prompt_id"].where(~pd.Series(clash, index=benign.index), renamed)
    return benign


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated prompt ids and repeated prompt texts (keep the first)."""
    df = df.drop_duplicates("prompt_id", keep="first")
    return df.drop_duplicates("prompt", keep="first")


def _take(
    pool: pd.DataFrame, rng: np.random.Generator, n_prompts: int, kind: str, n_pairs: int | str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle ``pool``; return its first ``n_prompts`` rows and the rest, in shuffled order."""
    if len(pool) < n_prompts:
        raise ConfigError(
            f"n_prompts={n_prompts} needs {n_prompts} distinct {kind} prompts but only "
            f"{len(pool)} are available (n_pairs={n_pairs} comes on top); lower n_prompts or "
            "use a larger prompt source."
        )
    order = rng.permutation(len(pool))
    evaluation = pool.iloc[order[:n_prompts]].reset_index(drop=True)
    rest = pool.iloc[order[n_prompts:]].reset_index(drop=True)
    return evaluation, rest


def text_labels(
    df: pd.DataFrame, *, toxic_min: float = 0.5, nontoxic_max: float = 0.25
) -> tuple[pd.Series, pd.Series]:
    """Which rows make a toxic, and which a non-toxic, contrastive text (prompt + continuation).

    The pooled window of a contrastive text is mostly its continuation, so the labels judge the
    text the model reads, not the prompt alone:

    - a row with a scored continuation is toxic when the continuation's toxicity is at least
      ``toxic_min``, and non-toxic when both the continuation and the prompt score below
      ``nontoxic_max`` (an unscored prompt counts as non-toxic);
    - a row without a continuation is judged by its prompt's score the same way;
    - a row with no score at all (the handwritten set) is toxic when it is ``challenging``
      and non-toxic otherwise;
    - a row with an unscored continuation but a scored prompt is neither.

    Returns:
        ``(toxic, nontoxic)`` boolean series aligned with ``df``.
    """
    prompt_tox = pd.to_numeric(df["prompt_toxicity"], errors="coerce")
    cont_tox = pd.to_numeric(df["continuation_toxicity"], errors="coerce")
    has_cont = df["continuation"].map(_has_text).astype(bool)
    scored = cont_tox.notna() & has_cont
    prompt_only = ~has_cont & prompt_tox.notna()
    unlabelled = prompt_tox.isna() & cont_tox.isna()
    challenging = df["challenging"].astype(bool)
    prompt_ok = prompt_tox.isna() | (prompt_tox < nontoxic_max)
    toxic = (
        (scored & (cont_tox >= toxic_min))
        | (prompt_only & (prompt_tox >= toxic_min))
        | (unlabelled & challenging)
    )
    nontoxic = (
        (scored & (cont_tox < nontoxic_max) & prompt_ok)
        | (prompt_only & (prompt_tox < nontoxic_max))
        | (unlabelled & ~challenging)
    )
    return toxic, nontoxic


LengthFn = Callable[[list[str]], Sequence[int]]
"""Length of each text, for matching: words by default, tokens where a tokenizer is at hand."""


def count_words(texts: list[str]) -> list[int]:
    """Whitespace-separated words of each text (the tokenizer-free length)."""
    return [len(text.split()) for text in texts]


def match_lengths(
    toxic: pd.DataFrame, nontoxic: pd.DataFrame, n_pairs: int, length: LengthFn = count_words
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair ``n_pairs`` toxic texts, in order, with the closest-length non-toxic texts.

    Each toxic text gets the unused non-toxic text closest in ``length`` (of prompt +
    continuation: words, or tokens when given a tokenizer's count; ties go to the earlier
    row). Both sets then have nearly the same length
    distribution, so no difference of means can come from which positions the pooling window
    covers.
    """
    chosen = toxic.iloc[:n_pairs].reset_index(drop=True)
    lengths = np.asarray(length(pair_texts(nontoxic)), dtype=float)
    picks: list[int] = []
    for size in length(pair_texts(chosen)):
        gap = np.abs(lengths - size)
        best = int(np.argmin(gap))
        picks.append(best)
        lengths[best] = np.inf
    return chosen, nontoxic.iloc[picks].reset_index(drop=True)


def split_prompts(
    challenging: pd.DataFrame,
    benign: pd.DataFrame,
    *,
    n_prompts: int,
    n_pairs: int | Literal["all"],
    seed: int,
    benign_max_toxicity: float = 0.1,
    pair_toxic_min: float = 0.5,
    pair_nontoxic_max: float = 0.25,
    n_kl: int = 0,
    length: LengthFn = count_words,
) -> PromptSplit:
    """Draw the evaluation prompts, the KL texts and the contrastive pairs, all disjoint.

    Evaluation prompts follow RealToxicityPrompts: challenging candidates are the rows of
    ``challenging`` with ``challenging == True``; benign candidates are the rows of ``benign``
    with ``challenging == False`` and a prompt toxicity below ``benign_max_toxicity`` (or no
    score). Each pool is shuffled with its own child of ``numpy.random.SeedSequence(seed)``
    and the evaluation prompts are its first ``n_prompts`` rows, so they depend on neither
    ``n_pairs`` nor the pair thresholds. ``n_kl`` of the remaining benign candidates are held
    out for the KL measure.

    The contrastive texts come from everything left, of both tables, labelled by
    :func:`text_labels` (``pair_toxic_min``, ``pair_nontoxic_max``): the toxic side is shuffled
    and its first ``n_pairs`` rows taken, and each gets the non-toxic text closest in length
    (:func:`match_lengths`). ``n_pairs="all"`` takes as many pairs as the smaller side has.

    A prompt is dropped only as a repeat of an earlier text: a benign id that the challenging
    table gives another text is made distinct (``#<text digest>``), so the subsets are
    disjoint by ``prompt_id`` and by prompt text.

    Args:
        challenging: Prompt table holding the challenging prompts.
        benign: Prompt table holding the benign prompts (may be the same table).
        n_prompts: Evaluation prompts per subset.
        n_pairs: Contrastive pairs for the steering vector, or ``"all"``.
        seed: Random seed.
        benign_max_toxicity: Upper bound (exclusive) on a benign prompt's toxicity.
        pair_toxic_min: A toxic text's continuation toxicity is at least this.
        pair_nontoxic_max: A non-toxic text's prompt and continuation toxicity are below this.
        n_kl: Benign texts held out for the KL measure.
        length: Text length for the matching (:func:`count_words`, or a tokenizer's count).

    Returns:
        The :class:`PromptSplit`.

    Raises:
        ConfigError: A count is not positive, or the data hold too few candidates (the message
            names the parameter, the number requested and the number available).
        DataError: A table lacks the prompt-table columns.
    """
    _check_count("n_prompts", n_prompts)
    if n_pairs != "all":
        _check_count("n_pairs", n_pairs)
    if not 0.0 <= pair_nontoxic_max <= pair_toxic_min <= 1.0:
        raise ConfigError(
            f"pair_nontoxic_max={pair_nontoxic_max} must not exceed pair_toxic_min="
            f"{pair_toxic_min}, and both must lie in [0, 1]."
        )
    needed_cols = ("prompt_id", "prompt", "prompt_toxicity", "challenging")
    _require_columns(challenging, "challenging", needed_cols)
    _require_columns(benign, "benign", needed_cols)
    challenging, benign = (_with_text_columns(t) for t in (challenging, benign))
    benign = _distinct_ids(challenging, benign)

    toxic_pool = _dedupe(challenging[challenging["challenging"].astype(bool)])
    tox = pd.to_numeric(benign["prompt_toxicity"], errors="coerce")
    benign_mask = ~benign["challenging"].astype(bool) & ((tox < benign_max_toxicity) | tox.isna())
    benign_pool = _dedupe(benign[benign_mask])
    benign_pool = benign_pool[
        ~benign_pool["prompt_id"].isin(toxic_pool["prompt_id"])
        & ~benign_pool["prompt"].isin(toxic_pool["prompt"])
    ]

    rng_toxic, rng_benign, rng_pairs = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    challenging_eval, _ = _take(toxic_pool, rng_toxic, n_prompts, "challenging", n_pairs)
    benign_eval, benign_rest = _take(
        benign_pool, rng_benign, n_prompts, f"benign (toxicity < {benign_max_toxicity})", n_pairs
    )
    kl = benign_rest.iloc[: max(n_kl, 0)].sort_values("prompt_id").reset_index(drop=True)

    used = pd.concat([challenging_eval, benign_eval, kl])
    rest = _dedupe(pd.concat([challenging, benign], ignore_index=True))
    rest = rest[~rest["prompt_id"].isin(used["prompt_id"]) & ~rest["prompt"].isin(used["prompt"])]
    rest = rest.iloc[rng_pairs.permutation(len(rest))].reset_index(drop=True)
    is_toxic, is_nontoxic = text_labels(
        rest, toxic_min=pair_toxic_min, nontoxic_max=pair_nontoxic_max
    )
    toxic_texts, nontoxic_texts = rest[is_toxic], rest[is_nontoxic & ~is_toxic]
    available = min(len(toxic_texts), len(nontoxic_texts))
    wanted = available if n_pairs == "all" else n_pairs
    if wanted < 1 or wanted > available:
        raise ConfigError(
            f"n_pairs={n_pairs} needs {max(wanted, 1)} toxic and as many non-toxic contrastive "
            f"texts outside the evaluation prompts (n_prompts={n_prompts}, "
            f"{n_prompts + (0 if n_pairs == 'all' else n_pairs)} per side in all), but only "
            f"{len(toxic_texts)} toxic (continuation toxicity >= {pair_toxic_min}) and "
            f"{len(nontoxic_texts)} non-toxic (< {pair_nontoxic_max}) are available; lower "
            "n_pairs or n_prompts, loosen pair_toxic_min / pair_nontoxic_max, or use a larger "
            "prompt source."
        )
    pairs_toxic, pairs_nontoxic = match_lengths(toxic_texts, nontoxic_texts, wanted, length)
    columns = list(PROMPT_COLUMNS)
    return PromptSplit(
        challenging=challenging_eval[columns],
        benign=benign_eval[columns],
        pairs_toxic=pairs_toxic[columns],
        pairs_nontoxic=pairs_nontoxic[columns],
        kl_benign=kl[columns],
    )


def _with_text_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Add empty continuation and source columns to a table that lacks them."""
    df = df.copy()
    for name, default in (("continuation", None), ("continuation_toxicity", np.nan)):
        if name not in df.columns:
            df[name] = default
    if "source" not in df.columns:
        df["source"] = ""
    return df


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


def perspective_labels(
    df: pd.DataFrame,
    threshold: float = 0.5,
    which: Literal["all", "prompts", "continuations"] = "all",
) -> tuple[list[str], np.ndarray]:
    """Texts with binary Perspective labels, to measure a scorer's agreement with Perspective.

    Uses every prompt text whose ``prompt_toxicity`` is not null and every continuation text
    whose ``continuation_toxicity`` is not null (prompts first, then continuations), or only
    one of the two kinds.

    Args:
        df: A prompt table.
        threshold: A text is toxic when its Perspective toxicity is at least this.
        which: ``"all"``, ``"prompts"`` or ``"continuations"``.

    Returns:
        ``(texts, labels)`` where ``labels`` is a boolean array aligned with ``texts``.

    Raises:
        ConfigError: ``threshold`` is not in (0, 1] or ``which`` is unknown.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold!r}.")
    _require_columns(
        df, "labelled", ("prompt", "prompt_toxicity", "continuation", "continuation_toxicity")
    )
    if which not in ("all", "prompts", "continuations"):
        raise ConfigError(f"which must be 'all', 'prompts' or 'continuations', got {which!r}.")
    kinds = [kind for kind in ("prompt", "continuation") if which in ("all", f"{kind}s")]
    texts: list[str] = []
    scores: list[float] = []
    for kind in kinds:
        for text, score in zip(df[kind], df[f"{kind}_toxicity"], strict=True):
            if pd.notna(score) and _has_text(text):
                texts.append(text)
                scores.append(float(score))
    return texts, np.asarray(scores, dtype=np.float64) >= threshold
