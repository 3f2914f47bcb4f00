"""The unsteered pass over held-out benign texts, made once and reused by steered measurements.

Every measurement of what steering costs on benign text (:func:`steerlib.evaluate.benign.benign_kl`,
the alpha search of :mod:`steerlib.evaluate.search`) compares the steered next-token
distributions with the unsteered model's on the same texts. :func:`base_pass` tokenizes the
texts into batches, marks the judged positions and makes the unsteered forward pass once;
:func:`measure` then judges one steering at some alphas against it: one steered forward pass per
batch of texts, the unsteered one reused. The unsteered log-probabilities are kept while they fit
in ``keep_bytes``; a batch beyond that has its unsteered pass made again at each measurement.

**Alpha 0 steers nothing** under every operator of :data:`~steerlib.steer.operators.OPERATORS`:
each returns ``h - 0 * (...)``, which is ``h`` exactly, and norm preservation then rescales by
``|h| / |h| = 1`` (``tests/test_search.py`` checks each operator). So alpha 0 needs no steered
pass (:func:`judge`): its KL is 0 and its negative log-likelihood the unsteered pass's, the same
numbers a steered pass at alpha 0 alone gives, bit for bit.

**Below the first steered layer nothing is steered**, so a steered pass starts there: the
unsteered residual entering that layer is computed once per batch of texts
(:func:`kept_residual`) and every alpha's copy of the batch runs from it
(:mod:`steerlib.models.partial`). The log-probabilities equal the whole pass's up to float
rounding (the layers below ran on one copy of the batch instead of one per alpha); on the
default run this cut the search and KL passes' CPU time by the share of the layers skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.tokens import left_pad, pad_token_id
from steerlib.models.partial import KeptResidual, keeping, layer_output, replayed_below
from steerlib.steer.steering import Steering

__all__ = [
    "BasePass",
    "TextBatch",
    "base_log_probs",
    "base_pass",
    "continuation_starts",
    "judge",
    "kept_residual",
    "measure",
    "steered_log_probs",
    "text_batches",
    "unsteered_nll",
]

KEEP_BYTES = 1 << 30
"""Most bytes of unsteered log-probabilities a :class:`BasePass` keeps (1 GiB)."""
RESIDUAL_KEEP_BYTES = 256 << 20
"""Most bytes of unsteered residuals (:func:`kept_residual`) one :class:`TextBatch` keeps."""


@dataclass
class TextBatch:
    """One batch of held-out texts, left-padded, with the positions it is judged on.

    Attributes:
        start: Index of its first text.
        ids: ``(batch, seq)`` token ids.
        mask: Their attention mask.
        first: Teacher-forced: each row's first steered position (padding included); else None.
        real: ``(batch, seq)`` judged positions (the KL's).
        scored: ``(batch, seq - 1)`` judged next-token predictions (the perplexity's).
        base: The unsteered log-probabilities, when kept (:func:`base_pass`).
        residuals: Unsteered residuals entering a layer, by layer (:func:`kept_residual`).
    """

    start: int
    ids: torch.Tensor
    mask: torch.Tensor
    first: torch.Tensor | None
    real: torch.Tensor
    scored: torch.Tensor
    base: torch.Tensor | None = None
    residuals: dict[int, KeptResidual] = field(default_factory=dict)

    @property
    def rows(self) -> slice:
        """Its texts' indices."""
        return slice(self.start, self.start + self.ids.shape[0])

    def keep(self, residuals: Iterable[KeptResidual]) -> None:
        """Keep ``residuals`` by layer while all kept stay under :data:`RESIDUAL_KEEP_BYTES`."""
        for kept in residuals:
            held = sum(r.nbytes for layer, r in self.residuals.items() if layer != kept.layer)
            if held + kept.nbytes <= RESIDUAL_KEEP_BYTES:
                self.residuals[kept.layer] = kept


@dataclass
class BasePass:
    """The unsteered pass over a list of held-out texts (:func:`base_pass`).

    Attributes:
        texts: The texts.
        prefixes: Their prompt parts (teacher-forced), or None.
        teacher_forced: Whether the continuation alone is judged (a variant steering
            generated positions only).
        batches: The batches, with their unsteered log-probabilities where kept.
        tokens: Each text's judged positions.
        predicted: Each text's judged next-token predictions.
        nll: Each text's unsteered negative log-likelihood, summed.
    """

    texts: tuple[str, ...]
    prefixes: tuple[str | None, ...] | None
    teacher_forced: bool
    batches: list[TextBatch]
    tokens: np.ndarray
    predicted: np.ndarray
    nll: np.ndarray

    @property
    def perplexity(self) -> float:
        """The unsteered model's perplexity on the texts (pooled over their tokens)."""
        return math.exp(float(self.nll.sum() / max(self.predicted.sum(), 1)))

    def matches(
        self, texts: Sequence[str], prefixes: Sequence[str | None] | None, teacher_forced: bool
    ) -> bool:
        """Whether it is the pass of these texts, judged this way."""
        judged_by = tuple(prefixes) if prefixes is not None and teacher_forced else None
        return (
            self.texts == tuple(texts)
            and self.teacher_forced == teacher_forced
            and (self.prefixes if teacher_forced else None) == judged_by
        )


def text_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    device: torch.device,
    prefixes: Sequence[str | None] | None = None,
    teacher_forced: bool = False,
    batch_size: int = 8,
    max_length: int = 256,
) -> list[TextBatch]:
    """The texts in left-padded batches of ``batch_size``, with their judged positions.

    Teacher-forced, each row is judged from its continuation's first token on
    (:func:`continuation_starts`); else at every real position.
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    pad_id = pad_token_id(tokenizer)
    starts = (
        continuation_starts(tokenizer, encoded, prefixes, max_length) if teacher_forced else None
    )
    batches = []
    for start in range(0, len(encoded), batch_size):
        ids, mask = left_pad(encoded[start : start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        # Left padding shifts each row's continuation by its padding.
        first = (
            None
            if starts is None
            else torch.tensor(starts[start : start + batch_size]) + (mask == 0).sum(-1).cpu()
        )
        real = mask.bool()
        if first is not None:  # judged where it steers: the continuation's positions
            positions = torch.arange(ids.shape[1])[None, :]
            real &= (positions >= first[:, None]).to(real.device)
        # Position t predicts token t + 1; both must be real tokens (and t a steered one).
        scored = real[:, :-1] & mask.bool()[:, 1:]
        batches.append(TextBatch(start, ids, mask, first, real, scored))
    return batches


def base_log_probs(
    model: PreTrainedModel, batch: TextBatch, keep_for: Iterable[Steering] = ()
) -> torch.Tensor:
    """``(batch, seq, vocab)`` unsteered next-token log-probabilities (the kept ones if any).

    A pass made here also keeps, on ``batch``, the residual entering the first layer of each of
    ``keep_for`` (:func:`kept_residual` then finds it instead of running the layers below again).
    """
    if batch.base is not None:
        return batch.base
    starts = {min(steering.layers) for steering in keep_for} - {0}
    with keeping(model, starts) as kept:
        logits = model(input_ids=batch.ids, attention_mask=batch.mask).logits
    batch.keep(kept.values())
    return torch.log_softmax(logits.float(), -1)


@torch.inference_mode()
def base_pass(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    prefixes: Sequence[str | None] | None = None,
    teacher_forced: bool = False,
    batch_size: int = 8,
    max_length: int = 256,
    keep_bytes: int = KEEP_BYTES,
) -> BasePass:
    """The unsteered pass over ``texts``, its log-probabilities kept up to ``keep_bytes``.

    Args:
        model: The model.
        tokenizer: Its tokenizer.
        texts: Held-out benign texts.
        prefixes: Each text's prompt part (teacher-forced; see
            :func:`steerlib.evaluate.benign.benign_kl`).
        teacher_forced: Judge each text's continuation only (a variant that steers
            generated positions).
        batch_size: Texts per forward pass.
        max_length: Longest tokenized text.
        keep_bytes: Most bytes of log-probabilities kept (0: none; each measurement then
            makes the unsteered pass again).

    Raises:
        ConfigError: No texts.
    """
    if not texts:
        raise ConfigError("the unsteered pass needs held-out benign texts: set kl_texts above 0.")
    device = next(model.parameters()).device
    batches = text_batches(
        tokenizer,
        texts,
        device=device,
        prefixes=prefixes,
        teacher_forced=teacher_forced,
        batch_size=batch_size,
        max_length=max_length,
    )
    n_texts, kept = len(texts), 0
    tokens, predicted, nll = np.zeros(n_texts), np.zeros(n_texts), np.zeros(n_texts)
    for batch in batches:
        base = base_log_probs(model, batch)
        tokens[batch.rows] = batch.real.sum(-1).cpu().numpy()
        predicted[batch.rows] = batch.scored.sum(-1).cpu().numpy()
        nll[batch.rows] = unsteered_nll(batch, base)
        size = base.numel() * base.element_size()
        if kept + size <= keep_bytes:
            batch.base, kept = base, kept + size
    judged_by = tuple(prefixes) if prefixes is not None and teacher_forced else None
    return BasePass(tuple(texts), judged_by, teacher_forced, batches, tokens, predicted, nll)


def steered_log_probs(
    model: PreTrainedModel,
    steering: Steering,
    ids: torch.Tensor,
    mask: torch.Tensor,
    alphas: Sequence[float],
    first: torch.Tensor | None = None,
    kept: KeptResidual | None = None,
) -> torch.Tensor:
    """``(alpha, batch, seq, vocab)`` next-token log-probabilities of a batch under ``steering``.

    Every alpha is one copy of the batch in one forward pass (per-row alphas). Every position
    is steered, or, with ``first`` (teacher forcing), each row's positions from ``first[row]``
    on (the prompt part before it left as it is). With ``kept``, the unsteered residual entering
    the first steered layer (:func:`kept_residual`), the layers below it are not run again
    (:func:`steerlib.models.partial.replayed_below`).
    """
    n_alpha = len(alphas)
    rep_ids, rep_mask = ids.repeat(n_alpha, 1), mask.repeat(n_alpha, 1)
    row_alphas = torch.tensor(alphas, dtype=torch.float32).repeat_interleave(ids.shape[0])
    replay = nullcontext() if kept is None else replayed_below(model, kept, copies=n_alpha)
    with steering.with_(positions="all").hooks(model, row_alphas) as handle, replay:
        handle.set_steer_from(first)
        logits = model(input_ids=rep_ids, attention_mask=rep_mask).logits.float()
    return torch.log_softmax(logits, -1).view(n_alpha, *ids.shape, -1)


def kept_residual(
    model: PreTrainedModel, batch: TextBatch, steering: Steering
) -> KeptResidual | None:
    """The unsteered residual entering ``steering``'s first layer for ``batch``; None at layer 0.

    Steering changes nothing below its first layer, so that residual is the same for every
    alpha: it is computed once (layers below only) and kept on the batch while its residuals
    stay under :data:`RESIDUAL_KEEP_BYTES`. One kept by another model (or by this one in another
    dtype or on another device) is made again.
    """
    start = min(steering.layers)
    if start < 1:
        return None
    kept = batch.residuals.get(start)
    if kept is None or not kept.made_by(model):
        kept = layer_output(model, start, input_ids=batch.ids, attention_mask=batch.mask)
        batch.keep([kept])
    return kept


def unsteered_nll(batch: TextBatch, base: torch.Tensor) -> np.ndarray:
    """``(batch,)`` each row's summed unsteered NLL of its judged next tokens."""
    return _nll(base.unsqueeze(0), batch)[0]


def _nll(logp: torch.Tensor, batch: TextBatch) -> np.ndarray:
    """``(alpha, batch)`` summed negative log-likelihood of each row's judged next tokens."""
    targets = batch.ids[:, 1:].unsqueeze(-1)
    token_logp = logp[:, :, :-1].gather(-1, targets.expand(logp.shape[0], -1, -1, -1))
    return -(token_logp.squeeze(-1) * batch.scored).sum(-1).cpu().numpy()


def judge(
    model: PreTrainedModel,
    batch: TextBatch,
    base: torch.Tensor,
    steering: Steering,
    alphas: Sequence[float],
    base_nll: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, batch)`` summed token KL and NLL of ``batch`` under ``steering`` at ``alphas``.

    The nonzero alphas share one steered forward pass (one copy of the batch each); alpha 0
    takes KL 0 and the unsteered ``base_nll`` (see the module docstring).

    Args:
        model: The model.
        batch: The texts.
        base: Their unsteered log-probabilities.
        steering: The steering judged.
        alphas: Its coefficients.
        base_nll: ``(batch,)`` each row's unsteered summed NLL.
    """
    kl = np.zeros((len(alphas), batch.ids.shape[0]))
    nll = np.tile(np.asarray(base_nll, dtype=float), (len(alphas), 1))
    steered_at = [k for k, alpha in enumerate(alphas) if alpha != 0]
    if steered_at:
        steered = steered_log_probs(
            model,
            steering,
            batch.ids,
            batch.mask,
            [alphas[k] for k in steered_at],
            batch.first,
            kept_residual(model, batch, steering),
        )
        token_kl = (base.exp() * (base - steered)).sum(-1)  # (alpha, batch, seq)
        kl[steered_at] = (token_kl * batch.real).sum(-1).cpu().numpy()
        nll[steered_at] = _nll(steered, batch)
    return kl, nll


@torch.inference_mode()
def measure(
    model: PreTrainedModel, base: BasePass, steering: Steering, alphas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ``(kl_benign, human_perplexity)`` of ``steering`` at each of ``alphas``.

    One steered forward pass per batch of texts (all nonzero alphas as rows), against the
    unsteered pass ``base`` (made again for a batch whose log-probabilities it did not keep).
    The values are those :func:`steerlib.evaluate.benign.benign_kl` gives for the same texts
    and alphas (pooled over the texts' tokens).
    """
    n_texts = len(base.texts)
    kl, nll = np.zeros((len(alphas), n_texts)), np.zeros((len(alphas), n_texts))
    for batch in base.batches:
        logp = base_log_probs(model, batch, keep_for=[steering])
        here = batch.rows
        kl[:, here], nll[:, here] = judge(model, batch, logp, steering, alphas, base.nll[here])
    pooled_kl = np.array([float(row.sum() / max(base.tokens.sum(), 1)) for row in kl])
    ppl = np.array([math.exp(float(row.sum() / max(base.predicted.sum(), 1))) for row in nll])
    return pooled_kl, ppl


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
