"""Capture the residual stream after every decoder layer, mean-pooled over content tokens.

One forward pass per batch serves every layer: a forward hook on each decoder layer pools its
output on the spot, so the full ``(batch, tokens, hidden)`` activations of 30 layers are never
held at once.

**Which positions are pooled** (the *content rule*, shared by every statistic over positions:
the pooled mean, ``token_norm`` and so ``units="norm"`` steering and the random control's
scale, and the median token norm of the diagnostics):

1. padding is left out (left or right padding alike);
2. special tokens (BOS, EOS, chat-template markers: ``tokenizer.all_special_ids``) are left out;
3. the first real position of every text is left out: it is the model's *attention sink*.
   A raw text gets no BOS token on many tokenizers (SmolLM2, GPT-2), so its first word takes
   that role; its residual norm is one to two orders of magnitude above the other tokens' at
   the middle and late layers (about 22,600 against a median of 146-640 on SmolLM2, layers
   12-27) and points the same way for every text;
4. the pooling window is the last ``last_n`` positions that remain;
5. per layer, a token of the window whose residual norm exceeds ``outlier_factor`` (default 10)
   times the median norm of the text's content tokens at that layer is left out too: a sink
   that sits elsewhere than the first position (a newline or a delimiter on some models).

The rule needs no knowledge of the architecture and is the same for raw and chat-formatted
texts. The first-position hidden state is kept apart (its mean per layer is the *sink
direction*), so diagnostics can say how much of a steering vector points along it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib._io import load_tensors, save_tensors
from steerlib.errors import ConfigError, DataError
from steerlib.models.layers import get_decoder_layers

__all__ = [
    "OUTLIER_FACTOR",
    "ResidualActivations",
    "capture_residuals",
    "content_mask",
    "last_n_mask",
    "texts_sha256",
]

OUTLIER_FACTOR = 10.0
"""A token whose residual norm is above this many times its text's median is not pooled."""


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of a list of texts (order matters), for provenance."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def last_n_mask(attention_mask: torch.Tensor, last_n: int) -> torch.Tensor:
    """Float mask of the last ``last_n`` positions of each row where the mask is 1.

    Args:
        attention_mask: ``(batch, seq)`` tensor of 1 (token) and 0 (padding or excluded), left
            or right padded.
        last_n: Window length; rows with fewer such positions use all of them.

    Returns:
        ``(batch, seq)`` float tensor with 1 where a position is pooled.

    Example:
        >>> last_n_mask(torch.tensor([[0, 1, 1, 1]]), 2).tolist()
        [[0.0, 0.0, 1.0, 1.0]]
    """
    real = attention_mask.to(torch.long)
    from_end = real.flip(-1).cumsum(-1).flip(-1)  # 1 at the last real token, 2 before it, ...
    return ((real == 1) & (from_end <= last_n)).to(torch.float32)


def first_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``(batch, seq)`` mask of each row's first real position (the attention sink)."""
    real = attention_mask.to(torch.long)
    return (real == 1) & (real.cumsum(-1) == 1)


def content_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int] = ()
) -> torch.Tensor:
    """Boolean mask of content positions: real, not a special token, not the first position.

    Args:
        input_ids: ``(batch, seq)`` token ids.
        attention_mask: ``(batch, seq)`` 1 for tokens, 0 for padding.
        special_ids: Ids of special tokens (``tokenizer.all_special_ids``).

    Returns:
        ``(batch, seq)`` boolean tensor (rules 1-3 of the module's content rule).

    Example:
        >>> content_mask(torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]])).tolist()
        [[False, False, True, True]]
    """
    real = attention_mask.to(torch.bool)
    mask = real & ~first_token_mask(attention_mask)
    if len(special_ids):
        special = torch.isin(input_ids, torch.as_tensor(list(special_ids), device=input_ids.device))
        mask &= ~special
    return mask


@dataclass
class ResidualActivations:
    """Pooled residual-stream activations of a set of texts.

    Attributes:
        pooled: ``(n_texts, n_layers, hidden)`` float32 tensor, on the CPU.
        token_norm: ``(n_texts, n_layers)`` mean L2 norm of the pooled token activations.
        layers: Layer index of each entry of dimension 1.
        last_n: Pooling window.
        provenance: Where the activations came from (model, texts hash, ...).
        sink: ``(n_layers, hidden)`` mean hidden state of the texts' first position (the
            attention sink; never pooled), or ``None`` for activations saved before it existed.
        median_norm: ``(n_texts, n_layers)`` median residual norm of each text's content tokens.
        n_tokens: ``(n_texts,)`` number of content tokens of each text (before the window).
        max_share: ``(n_texts, n_layers)`` largest share of one pooled position in the sum of
            the pooled positions' norms (1/window when all are alike, near 1 when one dominates).
    """

    pooled: torch.Tensor
    token_norm: torch.Tensor
    layers: list[int]
    last_n: int
    provenance: dict[str, Any] = field(default_factory=dict)
    sink: torch.Tensor | None = None
    median_norm: torch.Tensor | None = None
    n_tokens: torch.Tensor | None = None
    max_share: torch.Tensor | None = None

    _OPTIONAL = ("sink", "median_norm", "n_tokens", "max_share")

    def mean(self) -> torch.Tensor:
        """Mean pooled activation per layer, ``(n_layers, hidden)``."""
        return self.pooled.mean(dim=0)

    def mean_norms(self) -> dict[int, float]:
        """Mean residual-stream norm per layer (the unit of ``units="norm"`` steering)."""
        means = self.token_norm.mean(dim=0)
        return {layer: float(means[i]) for i, layer in enumerate(self.layers)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save as safetensors with the provenance in its metadata and a JSON sidecar."""
        meta = {**self.provenance, "layers": self.layers, "last_n": self.last_n}
        tensors = {"pooled": self.pooled.contiguous(), "token_norm": self.token_norm.contiguous()}
        for name in self._OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value.contiguous()
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ResidualActivations:
        """Load activations written by :meth:`save` (safetensors only; nothing is unpickled)."""
        tensors, meta = load_tensors(path, "activations")
        layers = [int(x) for x in meta.pop("layers")]
        last_n = int(meta.pop("last_n"))
        extra = {name: tensors.get(name) for name in cls._OPTIONAL}
        return cls(tensors["pooled"], tensors["token_norm"], layers, last_n, meta, **extra)


def _pooling_hook(
    index: int,
    current: dict[str, torch.Tensor],
    now: dict[str, list[Any]],
    outlier_factor: float,
) -> Any:
    """The forward hook that pools layer ``index``'s output of the current batch into ``now``.

    ``current`` holds the batch's ``content``, ``window`` and ``first`` masks.
    """

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        hidden = (output[0] if isinstance(output, tuple) else output).float()
        content = current["content"].to(hidden.device)
        window = current["window"].to(hidden.device)
        norms = hidden.norm(dim=-1)
        median = torch.nanmedian(norms.masked_fill(~content, float("nan")), dim=1).values
        weights = (window & (norms <= outlier_factor * median.unsqueeze(1))).float()
        counts = weights.sum(dim=1).clamp(min=1.0)
        now["pooled"][index] = (
            (hidden * weights.unsqueeze(-1)).sum(dim=1) / counts.unsqueeze(1)
        ).cpu()
        pooled_norms = norms * weights
        now["norm"][index] = (pooled_norms.sum(dim=1) / counts).cpu()
        now["share"][index] = (
            pooled_norms.max(dim=1).values / pooled_norms.sum(dim=1).clamp(min=1e-12)
        ).cpu()
        now["median"][index] = median.cpu()
        first = current["first"].to(hidden.device).float().unsqueeze(-1)
        now["sink"][index] = (hidden * first).sum(dim=(0, 1)).cpu()

    return hook


@torch.inference_mode()
def capture_residuals(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    last_n: int = 32,
    batch_size: int = 8,
    max_length: int = 512,
    outlier_factor: float = OUTLIER_FACTOR,
    progress: bool = True,
    layers_attribute: str | None = None,
) -> ResidualActivations:
    """Residual stream after every decoder layer, mean-pooled over the last content tokens.

    Positions are chosen by the content rule of this module's docstring: no padding, no
    special tokens, not the first position (the attention sink), the last ``last_n`` of what
    remains, and no token above ``outlier_factor`` times its text's median norm at that layer.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer (any padding side).
        texts: Texts to encode; each is truncated on the left to ``max_length`` tokens so its
            end, which is pooled, is kept.
        last_n: Pooling window (32 in the reference experiment).
        batch_size: Texts per forward pass.
        max_length: Longest tokenized text.
        outlier_factor: Norm outlier rule (``math.inf`` turns it off).
        progress: Show a tqdm progress bar.
        layers_attribute: Dotted path of the layer list for unusual model layouts.

    Returns:
        :class:`ResidualActivations` with one row per text.

    Raises:
        DataError: No texts, or a text with no content token (only special tokens, or one
            token, which is the sink).

    Example:
        >>> acts = capture_residuals(model, tokenizer, ["You idiot"], last_n=32)  # doctest: +SKIP
        >>> acts.pooled.shape  # doctest: +SKIP
        torch.Size([1, 30, 576])
    """
    if not texts:
        raise DataError("capture_residuals got no texts.")
    if last_n < 1:
        raise ConfigError(f"last_n must be at least 1, got {last_n}.")
    if not outlier_factor > 1:
        raise ConfigError(f"outlier_factor must be above 1, got {outlier_factor}.")
    modules = get_decoder_layers(model, layers_attribute)
    device = next(model.parameters()).device
    n_layers = len(modules)
    special_ids = sorted(set(getattr(tokenizer, "all_special_ids", []) or []))
    batches: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("pooled", "norm", "median", "share", "sink")
    }
    current: dict[str, torch.Tensor] = {}
    now: dict[str, list[Any]] = {k: [None] * n_layers for k in batches}

    old_side = tokenizer.truncation_side
    handles = [
        modules[i].register_forward_hook(_pooling_hook(i, current, now, outlier_factor))
        for i in range(n_layers)
    ]
    n_tokens: list[torch.Tensor] = []
    try:
        tokenizer.truncation_side = "left"
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="activations", disable=not progress, leave=False):
            batch = list(texts[start : start + batch_size])
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length
            ).to(device)
            content = content_mask(enc["input_ids"], enc["attention_mask"], special_ids)
            empty = [start + i for i, n in enumerate(content.sum(dim=1).tolist()) if n == 0]
            if empty:
                raise DataError(
                    f"text {empty[0]} ({texts[empty[0]][:60]!r}) has no content token once its "
                    "first position (the attention sink) and special tokens are left out; "
                    "drop texts of a single token."
                )
            current["content"] = content
            current["window"] = last_n_mask(content, last_n).bool()
            current["first"] = first_token_mask(enc["attention_mask"])
            n_tokens.append(content.sum(dim=1).cpu())
            model(**enc, use_cache=False)
            for key in ("pooled", "norm", "median", "share"):
                batches[key].append(torch.stack(now[key], dim=1))
            batches["sink"].append(torch.stack(now["sink"], dim=0))
    finally:
        tokenizer.truncation_side = old_side
        for handle in handles:
            handle.remove()
    provenance = {
        "n_texts": len(texts),
        "texts_sha256": texts_sha256(texts),
        "pooling": "mean_last_n_content",
        "outlier_factor": outlier_factor,
    }
    return ResidualActivations(
        pooled=torch.cat(batches["pooled"]),
        token_norm=torch.cat(batches["norm"]),
        layers=list(range(n_layers)),
        last_n=last_n,
        provenance=provenance,
        sink=torch.stack(batches["sink"]).sum(dim=0) / len(texts),
        median_norm=torch.cat(batches["median"]),
        n_tokens=torch.cat(n_tokens).to(torch.float32),
        max_share=torch.cat(batches["share"]),
    )
