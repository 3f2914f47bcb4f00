"""Linear toxicity probes on the residual stream: the gate of conditional steering.

A probe at a layer is a logistic regression (scikit-learn) fitted on the contrastive pooled
activations the chain captures in step 03 (toxic texts labelled 1, non-toxic 0), on standardized
features; the standardization is folded into the weights, so the probe is a plain
``sigmoid(weight . h + bias)`` on raw residual states, which the hook evaluates per position
(:class:`steerlib.steer.hooks.Gate`). Its held-out accuracy is the mean accuracy of stratified
k-fold cross-validation. Probes are saved as safetensors (``layer.<k>.weight``,
``layer.<k>.bias``) with a JSON sidecar (accuracies, folds, provenance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlib._io import load_tensors, save_tensors
from steerlib.errors import ConfigError, DataError
from steerlib.models.layers import LayerSpec, resolve_layers
from steerlib.steer.activations import ResidualActivations
from steerlib.steer.hooks import Gate

__all__ = ["ToxicityProbe", "fit_probe"]


@dataclass(frozen=True)
class ToxicityProbe:
    """One linear probe per layer.

    Attributes:
        weights: ``{layer: (hidden,) float32}`` weights on raw residual states.
        biases: ``{layer: intercept}``.
        accuracy: ``{layer: mean held-out accuracy}`` from cross-validation.
        provenance: How it was fitted (folds, texts, regularization).
    """

    weights: dict[int, torch.Tensor]
    biases: dict[int, float]
    accuracy: dict[int, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """Layer indices, sorted."""
        return sorted(self.weights)

    def gate(self, layer: int, *, threshold: float = 0.5, soft: bool = False) -> Gate:
        """The hook's :class:`~steerlib.steer.hooks.Gate` at ``layer``."""
        if layer not in self.weights:
            raise ConfigError(f"the probe has no layer {layer}; it holds layers {self.layers}.")
        return Gate(self.weights[layer], self.biases[layer], threshold=threshold, soft=soft)

    def probability(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        """Probability of "toxic" for ``(..., hidden)`` states at ``layer``."""
        return torch.sigmoid(states.float() @ self.weights[layer] + self.biases[layer])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write safetensors and a JSON sidecar; returns the safetensors path."""
        tensors: dict[str, torch.Tensor] = {}
        for k in self.layers:
            tensors[f"layer.{k}.weight"] = self.weights[k].contiguous().float()
            tensors[f"layer.{k}.bias"] = torch.tensor([self.biases[k]], dtype=torch.float32)
        meta = {
            **self.provenance,
            "layers": self.layers,
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
        }
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ToxicityProbe:
        """Read a probe written by :meth:`save`."""
        tensors, meta = load_tensors(path, "toxicity probe")
        layers = [int(k) for k in meta.pop("layers")]
        accuracy = {int(k): float(v) for k, v in (meta.pop("accuracy", {}) or {}).items()}
        weights = {k: tensors[f"layer.{k}.weight"] for k in layers}
        biases = {k: float(tensors[f"layer.{k}.bias"][0]) for k in layers}
        return cls(weights, biases, accuracy, meta)


def fit_probe(
    toxic: ResidualActivations,
    nontoxic: ResidualActivations,
    *,
    layers: LayerSpec = "all",
    folds: int = 5,
    c: float = 1.0,
    seed: int = 0,
) -> ToxicityProbe:
    """Fit a logistic-regression probe per layer on pooled toxic (1) and non-toxic (0) states.

    Args:
        toxic: Pooled activations of toxic texts (step 03).
        nontoxic: Pooled activations of non-toxic texts.
        layers: Layers to fit.
        folds: Stratified cross-validation folds for the held-out accuracy (fewer when a class
            has fewer texts).
        c: Inverse L2 regularization strength of the logistic regression.
        seed: Seed of the fold shuffling.

    Returns:
        The :class:`ToxicityProbe`, fitted on all texts, with its cross-validated accuracy.

    Raises:
        DataError: Fewer than two texts of a class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_toxic, n_nontoxic = int(toxic.pooled.shape[0]), int(nontoxic.pooled.shape[0])
    if min(n_toxic, n_nontoxic) < 2:
        raise DataError(
            f"a probe needs at least two texts of each class; got {n_toxic} toxic and "
            f"{n_nontoxic} non-toxic: raise n_pairs."
        )
    if toxic.layers != nontoxic.layers:
        raise ConfigError("toxic and non-toxic activations come from different layers.")
    labels = np.r_[np.ones(n_toxic), np.zeros(n_nontoxic)]
    k = max(2, min(folds, n_toxic, n_nontoxic))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    weights, biases, accuracy = {}, {}, {}
    for index in resolve_layers(len(toxic.layers), layers):
        layer = toxic.layers[index]
        features = torch.cat([toxic.pooled[:, index], nontoxic.pooled[:, index]]).double().numpy()
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        accuracy[layer] = float(cross_val_score(model, features, labels, cv=splitter).mean())
        model.fit(features, labels)
        scaler, regression = model[0], model[1]
        coef = regression.coef_[0] / scaler.scale_
        weights[layer] = torch.tensor(coef, dtype=torch.float32)
        # Stored as float32, as saved, so a loaded probe gates exactly as the fitted one.
        biases[layer] = float(np.float32(regression.intercept_[0] - coef @ scaler.mean_))
    provenance = {
        "method": "logistic_regression_standardized",
        "C": c,
        "folds": k,
        "seed": seed,
        "n_toxic": n_toxic,
        "n_nontoxic": n_nontoxic,
        "last_n": toxic.last_n,
        "model_id": toxic.provenance.get("model_id"),
    }
    return ToxicityProbe(weights, biases, accuracy, provenance)
