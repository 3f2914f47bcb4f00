"""The experiment's disjoint prompt subsets and contrastive texts, from prompt tables.

:func:`split_prompts` draws the evaluation subsets (challenging, benign), the contrastive pair
sets (length-matched) and the held-out benign texts for KL from prompt tables of
:mod:`steerlib.data.prompts`; :func:`pair_texts` and :func:`perspective_labels` read texts and labels
from such tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from steerlib.data.prompts import PROMPT_COLUMNS, text_digest
from steerlib.errors import ConfigError, DataError

__all__ = [
    "LengthFn",
    "PromptSplit",
    "count_words",
    "held_out_halves",
    "match_lengths",
    "pair_texts",
    "perspective_labels",
    "split_prompts",
    "text_labels",
]


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
            "steerlib.data.prompts.load_prompts."
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
    n_kl: int | Literal["all"] = 0,
    length: LengthFn = count_words,
) -> PromptSplit:
    """Draw the evaluation prompts, the KL texts and the contrastive pairs, all disjoint.

    Evaluation prompts follow RealToxicityPrompts: challenging candidates are the rows of
    ``challenging`` with ``challenging == True``; benign candidates are the rows of ``benign``
    with ``challenging == False`` and a prompt toxicity below ``benign_max_toxicity`` (or no
    score). Each pool is shuffled with its own child of ``numpy.random.SeedSequence(seed)``
    and the evaluation prompts are its first ``n_prompts`` rows, so they depend on neither
    ``n_pairs`` nor the pair thresholds. ``n_kl`` of the remaining benign candidates are held
    out for the KL measure; ``n_kl="all"`` holds out every benign candidate left once the
    evaluation prompts and the contrastive pairs are drawn (the pairs are then drawn first, so
    the held-out pool takes only what they leave).

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
        n_kl: Benign texts held out for the KL measure and the human-text perplexity, or
            ``"all"`` (every benign candidate the evaluation prompts and pairs leave).
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
    take_all = n_kl == "all"
    kl = benign_rest.iloc[: 0 if take_all else max(int(n_kl), 0)]
    kl = kl.sort_values("prompt_id").reset_index(drop=True)

    used = pd.concat([challenging_eval, benign_eval, kl])
    rest = _dedupe(pd.concat([challenging, benign], ignore_index=True))
    rest = rest[~rest["prompt_id"].isin(used["prompt_id"]) & ~rest["prompt"].isin(used["prompt"])]
    pairs_toxic, pairs_nontoxic = _draw_pairs(
        rest,
        rng_pairs,
        n_pairs=n_pairs,
        n_prompts=n_prompts,
        pair_toxic_min=pair_toxic_min,
        pair_nontoxic_max=pair_nontoxic_max,
        length=length,
    )
    if take_all:  # what the evaluation prompts and both sides of the pairs leave
        paired = pd.concat([pairs_toxic, pairs_nontoxic])
        kl = benign_rest[
            ~benign_rest["prompt_id"].isin(paired["prompt_id"])
            & ~benign_rest["prompt"].isin(paired["prompt"])
        ]
        kl = kl.sort_values("prompt_id").reset_index(drop=True)
    columns = list(PROMPT_COLUMNS)
    return PromptSplit(
        challenging=challenging_eval[columns],
        benign=benign_eval[columns],
        pairs_toxic=pairs_toxic[columns],
        pairs_nontoxic=pairs_nontoxic[columns],
        kl_benign=kl[columns],
    )


def _draw_pairs(
    rest: pd.DataFrame,
    rng: np.random.Generator,
    *,
    n_pairs: int | Literal["all"],
    n_prompts: int,
    pair_toxic_min: float,
    pair_nontoxic_max: float,
    length: LengthFn,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The contrastive pairs from the texts the evaluation prompts leave (:func:`split_prompts`).

    ``rest`` is shuffled with ``rng``, labelled by :func:`text_labels`, and each of the first
    ``n_pairs`` toxic texts gets the non-toxic text closest in length (:func:`match_lengths`).

    Raises:
        ConfigError: Fewer toxic or non-toxic texts than ``n_pairs`` (or none at all).
    """
    rest = rest.iloc[rng.permutation(len(rest))].reset_index(drop=True)
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
    return match_lengths(toxic_texts, nontoxic_texts, wanted, length)


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


def _hash_key(prompt_id: Any, seed: int) -> int:
    """A stable pseudo-random number of (seed, prompt id), the same on every platform."""
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_split(prompts: pd.DataFrame, seed: int) -> pd.Series:
    """Assign each evaluation prompt to the ``selection`` or the ``confirmation`` half.

    Within each subset the prompts are ordered by a hash of ``(seed, prompt_id)``
    (BLAKE2b, so the order is the same on every machine and Python version); the first half,
    rounded up, is the selection half. A prompt's half therefore depends only on its id, the
    seed and the ids of its subset: not on row order, on other subsets, on how many samples or
    settings the table holds, or on the process. Rows repeating a prompt get the same half.

    Args:
        prompts: Rows with ``prompt_id`` and ``subset`` (evaluation prompts or sweep rows).
        seed: The run's seed.

    Returns:
        A Series of ``"selection"`` / ``"confirmation"`` aligned with ``prompts``' index.

    Raises:
        DataError: If ``prompt_id`` or ``subset`` is missing or the table is empty.

    Example:
        >>> sweep["split"] = assign_split(sweep, seed=0)  # doctest: +SKIP
    """
    _require_columns(prompts, "evaluation", ["prompt_id", "subset"])
    unique = prompts[["subset", "prompt_id"]].drop_duplicates().copy()
    unique["_key"] = [_hash_key(pid, seed) for pid in unique["prompt_id"]]
    unique["_id"] = unique["prompt_id"].astype(str)
    unique = unique.sort_values(["subset", "_key", "_id"], kind="stable")
    position = unique.groupby("subset").cumcount()
    size = unique.groupby("subset")["prompt_id"].transform("size")
    unique["split"] = np.where(position < np.ceil(size / 2), "selection", "confirmation")
    merged = prompts[["subset", "prompt_id"]].merge(
        unique[["subset", "prompt_id", "split"]], on=["subset", "prompt_id"], how="left"
    )
    return pd.Series(merged["split"].to_numpy(), index=prompts.index, name="split")


def held_out_halves(held_out: pd.DataFrame, seed: int) -> tuple[list[str], list[str]]:
    """The held-out benign texts and the half of each: the *search* or the *report* half.

    The halves follow :func:`steerlib.evaluate.operating_point.assign_split` (a BLAKE2b hash of the seed
    and the text's ``prompt_id``, first half rounded up), so a text's half depends only on its
    id, the seed and the pool, never on row order or on the process. They are named after the
    prompt halves they serve: the search half is ``"selection"`` (the alpha search and the
    admissibility of the selection half use it), the report half ``"confirmation"`` (the
    confirmation figure). The two are disjoint.

    Args:
        held_out: The held-out rows (``role == "kl_benign"`` of the prompts table).
        seed: The run's seed.

    Returns:
        ``(texts, halves)``, one half name per text, in the rows' order.
    """
    if held_out.empty:
        return [], []
    rows = held_out[["prompt_id"]].assign(subset="kl_benign")
    return pair_texts(held_out), [str(h) for h in assign_split(rows, seed)]


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
