"""What steering costs: continuation perplexity and the KL divergence on benign text.

* :func:`continuation_perplexity`: perplexity of each completion given its prompt under the
  UNSTEERED model (the detoxification literature's fluency measure; any causal LM may judge).
* :func:`benign_kl`: mean KL divergence ``KL(P_unsteered || P_steered)`` of the next-token
  distributions over held-out benign text, per (direction, layer, alpha): how far steering moves
  the model where there is nothing to detoxify. Steering is applied at every position here,
  except for a variant that steers generated positions only: given each text's prompt part
  (``prefixes``), it is judged teacher-forced, the continuation steered and the prompt not.
* :func:`repetition`: whether one text has collapsed into repeats (low distinct-2, or the same
  word n-gram several times in a row), the degenerate output a toxicity scorer rates as clean.

Over 500 lines because continuation perplexity, the benign KL / human-text pass (with its
halves, intervals and teacher-forced positions) and the repetition check share the judge's
batching; splitting it belongs to the layered-subpackage work (issue 24), which moves these
pieces into their own modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.evaluate.metrics import distinct_n_ngrams, run_bootstrap
from steerlib.generate.generation import PromptFormat, encode_prompts, left_pad, model_cache
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Units, steering
from steerlib.steer.vectors import SteeringVector

if TYPE_CHECKING:
    from steerlib.steer.probe import ToxicityProbe
    from steerlib.steer.variants import Variant

__all__ = [
    "KL_COLUMNS",
    "Repetition",
    "benign_kl",
    "continuation_perplexity",
    "continuation_starts",
    "judge_name",
    "judge_prompt_format",
    "repetition",
]

KL_COLUMNS = [
    "direction",
    "layer",
    "alpha",
    "kl_benign",
    "human_perplexity",
    "n_tokens",
    "n_texts",
]


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def judge_name(model: str, perplexity_model: str | None) -> str:
    """The model that judges continuation perplexity: ``perplexity_model``, else the model.

    Example:
        >>> judge_name("smollm2-135m-instruct", "gemma-3-270m")
        'gemma-3-270m'
    """
    return perplexity_model or model


def judge_prompt_format(
    prompt_format: PromptFormat, model: str, perplexity_model: str | None
) -> PromptFormat:
    """How the judge reads the prompts: as generated when the model judges itself, else raw.

    An external judge (another family, as DExperts judged with GPT-2 XL) scores the text a
    reader sees, the raw prompt and its continuation, not the steered model's chat markup;
    its tokenizer adds its own BOS token where it uses one.

    Example:
        >>> judge_prompt_format("chat", "smollm2-135m-instruct", "gemma-3-270m")
        'raw'
    """
    return prompt_format if judge_name(model, perplexity_model) == model else "raw"


@torch.inference_mode()
def continuation_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    prompt_format: PromptFormat = "raw",
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Perplexity of each completion's tokens given its prompt (NaN for an empty completion).

    A sweep has many completions per prompt (alphas x samples), so each distinct prompt in a
    batch is run once and its KV cache is shared by its completions; only the completion
    tokens are run per row. The numbers equal those of one pass over prompt + completion up to
    float rounding.

    Args:
        model: The judge, normally the unsteered model that generated the completions.
        tokenizer: Its tokenizer.
        prompts: Prompt texts (formatted with ``prompt_format`` as during generation).
        completions: Completion texts, one per prompt.
        prompt_format: ``"raw"`` or ``"chat"``.
        batch_size: Completions per forward pass.
        progress: Show a tqdm progress bar.

    Returns:
        ``exp(mean negative log-likelihood of the completion tokens)`` per row.

    Example:
        >>> continuation_perplexity(model, tok, ["The sky is"], [" blue."])  # doctest: +SKIP
        array([23.1])
    """
    if len(prompts) != len(completions):
        raise ConfigError("prompts and completions must have the same length.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    prompt_ids = encode_prompts(tokenizer, prompts, prompt_format)
    completion_ids = [
        tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        for text in completions
    ]
    result = np.full(len(prompts), np.nan)
    # Rows grouped by prompt (then by completion length), so a batch holds few distinct prompts.
    order = sorted(
        (i for i in range(len(prompts)) if completion_ids[i]),
        key=lambda i: (len(prompt_ids[i]), prompt_ids[i], len(completion_ids[i])),
    )
    empty_prompt = [i for i in order if not prompt_ids[i]]
    if empty_prompt:
        raise ConfigError(
            f"prompt {prompts[empty_prompt[0]]!r} has no tokens; perplexity needs a prompt to "
            "condition on (use prompt_format='chat' or a non-empty prompt)."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = _device(model)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(prompt_ids[i]), len(distinct)) for i in rows]
        ids, mask = left_pad([list(p) for p in distinct], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        prefill = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        index = torch.tensor(owner, device=device)
        cache = model_cache(prefill)
        cache.batch_select_indices(index)  # one copy of its prompt's cache per completion
        first = torch.log_softmax(prefill.logits[:, -1].float(), dim=-1)[index]
        del prefill
        # Completions right-padded after their prompt's cache: a pad comes after every real
        # token, so causal attention never lets a real token see one.
        lengths = [len(completion_ids[i]) for i in rows]
        width = max(lengths)
        tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for row, i in enumerate(rows):
            tokens[row, : lengths[row]] = torch.tensor(completion_ids[i])
        tokens = tokens.to(device)
        new_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(mask)
        offset = mask.sum(-1)[index]
        logits = model(
            input_ids=tokens,
            attention_mask=torch.cat([mask[index], new_mask], dim=1),
            position_ids=offset[:, None] + torch.arange(width, device=device)[None, :],
            cache=cache,
            use_cache=True,
        ).logits.float()
        # Position j of the completion predicts its token j + 1; the prefill predicted token 0.
        token_lp = first.gather(1, tokens[:, :1])
        if width > 1:
            rest = torch.log_softmax(logits[:, :-1], dim=-1)
            token_lp = torch.cat(
                [token_lp, rest.gather(-1, tokens[:, 1:, None]).squeeze(-1)], dim=1
            )
        token_lp = token_lp.cpu()
        for row, i in enumerate(rows):
            result[i] = float(torch.exp(-token_lp[row, : lengths[row]].mean()))
    return result


@torch.inference_mode()
def benign_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    vectors: Mapping[str, SteeringVector],
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    units: Units = "raw",
    batch_size: int = 8,
    max_length: int = 256,
    progress: bool = False,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
    prefixes: Sequence[str | None] | None = None,
    halves: Sequence[str] | None = None,
    n_resamples: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean per-token KL(unsteered || steered) and the steered perplexity on benign text.

    ``human_perplexity`` is the perplexity the steered model assigns to the same fixed,
    human-written benign texts for every setting (the fluency cost judged on text the model
    did not write, as AurA reports it on Wikipedia): ``exp`` of the mean negative
    log-likelihood of each next token. At alpha 0 it is the unsteered model's perplexity.
    All alphas of one (direction, layer) run in one batch per group of texts (per-row alphas).

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        texts: Held-out benign texts (not used to build the vectors).
        vectors: ``{direction: vector}``, for example ``{"caa": v, "random": v.random_like()}``.
        layers: Steered layers.
        alphas: Coefficients.
        units: ``"raw"`` or ``"norm"``.
        batch_size: Texts per forward pass (each is repeated once per alpha).
        max_length: Longest tokenized text.
        progress: Show a tqdm progress bar.
        variant: How the vector is applied (:mod:`steerlib.steer.variants`; plain CAA when
            ``None``). Every position is steered, except with a variant whose positions
            are ``"generated"`` (``caa_generated``): it is judged with its own positions,
            teacher-forced (see ``prefixes``).
        probe: The toxicity probe of a gated variant.
        prefixes: The prompt part of each text (a string prefix of it: held-out texts are
            prompt + continuation, :func:`steerlib.data.subsets.pair_texts`). Used only by a
            variant that steers generated positions: the tokens the prefix covers are left
            unsteered and the rest (the continuation) is steered, and the KL and perplexity
            are taken over the steered positions only. A text that is no longer
            than its prefix (no continuation) plays its first half of tokens as the prompt.
            ``None``: every text is split at half its tokens.
        halves: One half name per text (e.g. ``"selection"``/``"confirmation"``, see
            :func:`steerlib.data.subsets.held_out_halves`); each half then gets its own rows.
        n_resamples: Bootstrap resamples of the intervals (0: none). The texts are the
            clusters: :func:`steerlib.evaluate.metrics.run_bootstrap` (BCa) resamples whole texts,
            the
            statistic being the pooled per-token value (``exp`` of the pooled NLL for the
            perplexity).
        seed: Seed of the bootstrap.

    Raises:
        ConfigError: ``prefixes`` or ``halves`` of another length than ``texts``.

    Returns:
        One row per (direction, layer, alpha) with :data:`KL_COLUMNS`; with ``halves``, one per
        (split, direction, layer, alpha), ``split`` being ``"all"`` or a half. With
        ``n_resamples``, also ``human_perplexity_ci_low/_high`` and ``kl_benign_ci_low/_high``
        (NaN for fewer than two texts); ``n_texts`` is the number of texts of the row.
    """
    if halves is not None and len(halves) != len(texts):
        raise ConfigError(f"halves has {len(halves)} names for {len(texts)} texts; give one each.")
    if not texts:
        return pd.DataFrame(columns=KL_COLUMNS)
    device = _device(model)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    teacher_forced = variant is not None and variant.positions == "generated"
    first = (
        continuation_starts(tokenizer, encoded, prefixes, max_length) if teacher_forced else None
    )
    n_texts = len(encoded)
    sums = {(d, layer, a): np.zeros(n_texts) for d in vectors for layer in layers for a in alphas}
    nll = {key: np.zeros(n_texts) for key in sums}
    tokens, predicted = np.zeros(n_texts), np.zeros(n_texts)
    jobs = [(d, layer) for d in vectors for layer in layers]
    starts = list(range(0, len(encoded), batch_size))
    bar = tqdm(total=len(starts) * (len(jobs) + 1), desc="benign KL", disable=not progress)
    for start in starts:
        ids, mask = left_pad(encoded[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        # Left padding shifts each row's continuation by its padding.
        row_first = (
            None
            if first is None
            else torch.tensor(first[start : start + batch_size]) + (mask == 0).sum(-1).cpu()
        )
        base = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        bar.update()
        real = mask.bool()
        if row_first is not None:  # judged where it steers: the continuation's positions
            positions = torch.arange(ids.shape[1])[None, :]
            real &= (positions >= row_first[:, None]).to(real.device)
        here = slice(start, start + ids.shape[0])
        tokens[here] = real.sum(-1).cpu().numpy()
        # Position t predicts token t + 1; both must be real tokens (and t a steered one).
        scored = real[:, :-1] & mask.bool()[:, 1:]
        predicted[here] = scored.sum(-1).cpu().numpy()
        targets = ids[:, 1:].unsqueeze(-1)
        n_alpha = len(alphas)
        rep_ids, rep_mask = ids.repeat(n_alpha, 1), mask.repeat(n_alpha, 1)
        row_alphas = torch.tensor(alphas, dtype=torch.float32).repeat_interleave(ids.shape[0])
        for direction, layer in jobs:
            steer: dict[str, Any] = {"layers": layer}
            if variant is not None:
                steer = variant.steering_kwargs(layer, num_layers(model), "all", probe)
                steer["positions"] = "all"
            with steering(model, vectors[direction], row_alphas, units=units, **steer) as handle:
                handle.set_steer_from(row_first)
                logits = model(input_ids=rep_ids, attention_mask=rep_mask).logits.float()
            steered = torch.log_softmax(logits, -1).view(n_alpha, *base.shape)
            kl = (base.exp() * (base - steered)).sum(-1)  # (alpha, batch, seq)
            token_logp = steered[:, :, :-1].gather(-1, targets.expand(n_alpha, -1, -1, -1))
            per_kl = (kl * real).sum(-1).cpu().numpy()  # (alpha, batch)
            per_nll = -(token_logp.squeeze(-1) * scored).sum(-1).cpu().numpy()
            for k, alpha in enumerate(alphas):
                sums[(direction, layer, alpha)][here] = per_kl[k]
                nll[(direction, layer, alpha)][here] = per_nll[k]
            bar.update()
    bar.close()
    names = np.asarray(["all"] * n_texts if halves is None else list(halves), dtype=object)
    groups = [("all", np.ones(n_texts, dtype=bool))]
    if halves is not None:
        groups += [(str(h), names == h) for h in sorted(set(names))]
    rows = []
    for split, chosen in groups:
        for (d, layer, a), kl_sums in sums.items():
            row = {
                "split": split,
                "direction": d,
                "layer": int(layer),
                "alpha": float(a),
                **_pooled(
                    nll[(d, layer, a)][chosen],
                    predicted[chosen],
                    kl_sums[chosen],
                    tokens[chosen],
                    n_resamples=n_resamples,
                    seed=seed,
                ),
            }
            rows.append(row)
    table = pd.DataFrame(rows)
    return table if halves is not None else table.drop(columns="split")


def _pooled(
    nll: np.ndarray,
    predicted: np.ndarray,
    kl: np.ndarray,
    tokens: np.ndarray,
    *,
    n_resamples: int,
    seed: int,
) -> dict[str, float]:
    """Pooled human perplexity and KL of a group of texts, with text-cluster intervals."""
    out = {
        "kl_benign": float(kl.sum() / max(tokens.sum(), 1)),
        "human_perplexity": math.exp(float(nll.sum() / max(predicted.sum(), 1))),
        "n_tokens": int(tokens.sum()),
        "n_texts": len(nll),
    }
    if n_resamples <= 0:
        return out
    options = {"confidence": 0.95, "n_resamples": n_resamples, "seed": seed, "method": "BCa"}
    for name, (values, counts), transform in (
        ("human_perplexity", (nll, predicted), np.exp),
        ("kl_benign", (kl, tokens), lambda x: x),
    ):
        low = high = math.nan
        if len(values) >= 2 and counts.sum() > 0:

            def statistic(v: np.ndarray, c: np.ndarray, axis: int = -1, f: Any = transform) -> Any:
                return f(np.sum(v, axis=axis) / np.maximum(np.sum(c, axis=axis), 1))

            low, high = run_bootstrap((values, counts), statistic, vectorized=True, **options)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def continuation_starts(
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[Sequence[int]],
    prefixes: Sequence[str | None] | None,
    max_length: int = 256,
) -> list[int]:
    """Index of each encoded text's first continuation token (after its prompt part).

    The prompt part is the longest run of leading tokens the text shares with its prefix
    encoded alone (a token merged across the seam counts as continuation). A text with no
    token after its prefix, or with no prefix given (``None``), is split at half its tokens,
    so every text has a steered part to judge. The index is at least 1: the first token (BOS or the
    attention sink) is never the continuation.

    Args:
        tokenizer: The tokenizer that encoded the texts.
        encoded: Token ids of each text (as the texts were encoded, special tokens included).
        prefixes: The prompt part of each text, or ``None``.
        max_length: The texts' truncation length.

    Raises:
        ConfigError: ``prefixes`` of another length than ``encoded``.
    """
    if prefixes is not None and len(prefixes) != len(encoded):
        raise ConfigError(
            f"got {len(prefixes)} prefixes for {len(encoded)} texts: give each held-out text's "
            "prompt part, in the texts' order (or None to split each text at half its tokens)."
        )
    starts = []
    for row, ids in enumerate(encoded):
        shared = 0
        if prefixes is not None and prefixes[row]:
            head = tokenizer(prefixes[row], truncation=True, max_length=max_length)["input_ids"]
            while shared < min(len(head), len(ids)) and head[shared] == ids[shared]:
                shared += 1
        if not 1 <= shared < len(ids):
            shared = len(ids) // 2
        starts.append(max(1, shared))
    return starts


@dataclass(frozen=True)
class Repetition:
    """How repetitive one text is (see :func:`repetition`).

    Attributes:
        distinct_2: Unique word bigrams over all bigrams (lower-cased, as
            :func:`~steerlib.evaluate.metrics.distinct_n_ngrams`); NaN for a text of fewer than two
            words.
        run: The most back-to-back copies of one word n-gram (1 when nothing repeats).
        gram: That n-gram ("" when nothing repeats).
        reasons: Why the text is flagged, one phrase each (empty: not flagged).
    """

    distinct_2: float
    run: int
    gram: str
    reasons: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        """The text looks degenerate: empty, few distinct bigrams, or a run of repeats."""
        return bool(self.reasons)

    def describe(self) -> str:
        """One phrase for a person: why the text is flagged, or that it is not."""
        return "repetitive: " + ", ".join(self.reasons) if self.reasons else "no repetition"


def repetition(
    text: str, *, min_distinct_2: float = 0.7, max_run: int = 3, max_n: int = 4
) -> Repetition:
    """Flag a text that has collapsed into repeats, as heavy steering makes it do.

    A text is flagged when it holds no word, when fewer than ``min_distinct_2`` of its word
    bigrams are unique, or when one word n-gram (n up to ``max_n``) appears ``max_run`` or
    more times back to back ("Winc Winc Winc"). Words are whitespace-separated, lower-cased.

    Args:
        text: One completion.
        min_distinct_2: Lowest unique share of bigrams of a text that is not flagged.
        max_run: Back-to-back copies of one n-gram that flag the text (2 or more).
        max_n: Longest n-gram looked at for runs (1 or more).

    Returns:
        A :class:`Repetition`.

    Raises:
        ConfigError: ``max_run`` below 2 or ``max_n`` below 1.

    Example:
        >>> repetition("central central Winc Winc Winc").describe()
        "repetitive: 'winc' ×3 in a row"
        >>> repetition("the park was quiet this morning").flagged
        False
    """
    if max_run < 2 or max_n < 1:
        raise ConfigError(
            f"max_run must be at least 2 and max_n at least 1, got {max_run} and {max_n}."
        )
    words = text.lower().split() if isinstance(text, str) else []
    distinct = distinct_n_ngrams([" ".join(words)], 2) if len(words) > 1 else math.nan
    run, gram = 1, ""
    for n in range(1, max_n + 1):
        for start in range(len(words) - n + 1):
            copies = 1
            head = words[start : start + n]
            while words[start + copies * n : start + (copies + 1) * n] == head:
                copies += 1
            if copies > run:
                run, gram = copies, " ".join(head)
    reasons = []
    if not words:
        reasons.append("empty text")
    if run >= max_run:
        reasons.append(f"{gram!r} \u00d7{run} in a row")
    if distinct < min_distinct_2:  # False for NaN
        reasons.append(f"distinct-2 {distinct:.2f} < {min_distinct_2:g}")
    return Repetition(distinct, run, gram, tuple(reasons))
