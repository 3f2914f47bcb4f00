"""Contrastive activation addition (CAA) steering vectors.

A :class:`SteeringVector` holds one direction per decoder layer: the mean pooled residual
activation of toxic texts minus that of non-toxic texts (it points toward toxicity; see
:mod:`steerlib.steer.hooks` for the sign convention). It is a value with arithmetic
(``vector * 1.5``, ``a + b``, ``-v``), and it is saved as safetensors with its provenance
(model, layers, pooling, texts hash, library version) both in the file's metadata and in a JSON
sidecar.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib._io import load_tensors, save_tensors
from steerlib.errors import ConfigError, DataError, ModelError
from steerlib.models.layers import LayerSpec, hidden_size, num_layers, resolve_layers
from steerlib.models.loading import model_id, model_revision
from steerlib.steer.activations import ResidualActivations, capture_residuals
from steerlib.steer.diagnostics import dominated_layers, sink_directions, vector_diagnostics

__all__ = ["SteeringVector", "caa_from_texts", "compute_caa", "library_version", "model_provenance"]


def library_version() -> str:
    """Installed steerlib version."""
    try:
        return version("steerlib")
    except PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        return "0+unknown"


Scalar = int | float


@dataclass(frozen=True)
class SteeringVector:
    """One steering direction per decoder layer, with provenance.

    Attributes:
        directions: ``{layer: (hidden,) float32 tensor}``.
        provenance: JSON-serializable facts about how it was built.
        mean_norms: Mean residual-stream norm per layer (the unit of ``units="norm"``).
        nontoxic_projections: Mean projection of the non-toxic pooled activations on the unit
            direction, per layer (the level ``mode="clamp"`` pulls the component down to).

    Example:
        >>> v = SteeringVector({3: torch.ones(4)})
        >>> (v * 2 + v)[3].tolist()
        [3.0, 3.0, 3.0, 3.0]
    """

    directions: dict[int, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)
    mean_norms: dict[int, float] = field(default_factory=dict)
    nontoxic_projections: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ConfigError("a SteeringVector needs at least one layer.")
        sizes = {tuple(t.shape) for t in self.directions.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ConfigError(f"every direction must be a 1-D tensor of one size, got {sizes}.")

    @property
    def layers(self) -> list[int]:
        """Layer indices, sorted."""
        return sorted(self.directions)

    @property
    def hidden_size(self) -> int:
        """Width of the directions."""
        return int(next(iter(self.directions.values())).shape[0])

    def __getitem__(self, layer: int) -> torch.Tensor:
        """Direction at ``layer``."""
        try:
            return self.directions[layer]
        except KeyError:
            raise ConfigError(
                f"this steering vector has no layer {layer}; it holds layers {self.layers}."
            ) from None

    def __len__(self) -> int:
        return len(self.directions)

    # -- arithmetic -------------------------------------------------------------------------
    def _derived(self, directions: dict[int, torch.Tensor], op: str) -> SteeringVector:
        provenance = {**self.provenance, "arithmetic": [*self.provenance.get("arithmetic", []), op]}
        return SteeringVector(directions, provenance, dict(self.mean_norms))

    def __mul__(self, other: Scalar) -> SteeringVector:
        if not isinstance(other, int | float):
            return NotImplemented
        return self._derived({k: v * other for k, v in self.directions.items()}, f"* {other}")

    __rmul__ = __mul__

    def __truediv__(self, other: Scalar) -> SteeringVector:
        if not isinstance(other, int | float):
            return NotImplemented
        return self._derived({k: v / other for k, v in self.directions.items()}, f"/ {other}")

    def __neg__(self) -> SteeringVector:
        return self._derived({k: -v for k, v in self.directions.items()}, "neg")

    def __add__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.hidden_size != self.hidden_size:
            raise ConfigError(
                f"cannot add vectors of hidden size {self.hidden_size} and {other.hidden_size}."
            )
        layers = set(self.directions) | set(other.directions)
        zero = torch.zeros(self.hidden_size)
        summed = {k: self.directions.get(k, zero) + other.directions.get(k, zero) for k in layers}
        return self._derived(summed, "+ vector")

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self + (-other)

    # -- views ------------------------------------------------------------------------------
    def select(self, layers: LayerSpec) -> SteeringVector:
        """A vector with only the given layers."""
        chosen = self.layers if layers == "all" else [int(x) for x in np.atleast_1d(layers)]
        return SteeringVector(
            {k: self[k] for k in chosen},
            dict(self.provenance),
            {k: v for k, v in self.mean_norms.items() if k in chosen},
            {k: v for k, v in self.nontoxic_projections.items() if k in chosen},
        )

    def diagnostics(self) -> list[dict[str, Any]]:
        """Per-layer checks recorded when the vector was built (see ``steer.diagnostics``)."""
        return list(self.provenance.get("diagnostics", []))

    def norms(self) -> dict[int, float]:
        """L2 norm of the direction at each layer."""
        return {k: float(self.directions[k].norm()) for k in self.layers}

    def cosine_similarity(self) -> np.ndarray:
        """``(n_layers, n_layers)`` cosine similarities between layers' directions."""
        stacked = torch.stack([self.directions[k].float() for k in self.layers])
        unit = stacked / stacked.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return (unit @ unit.T).numpy()

    def random_like(self, seed: int = 0) -> SteeringVector:
        """A control: random Gaussian directions with the same norm at each layer.

        A toxicity reduction that this control also achieves is not a steering effect.
        """
        generator = torch.Generator().manual_seed(seed)
        directions = {}
        for k in self.layers:
            noise = torch.randn(self.hidden_size, generator=generator)
            directions[k] = noise / noise.norm() * self.directions[k].norm()
        provenance = {
            k: v for k, v in self.provenance.items() if k not in {"diagnostics", "direction"}
        }
        provenance.update(direction="random", random_seed=seed)
        return SteeringVector(directions, provenance, dict(self.mean_norms))

    @property
    def direction(self) -> str:
        """``"caa"`` or ``"random"``."""
        return str(self.provenance.get("direction", "caa"))

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors) and ``path.with_suffix('.json')`` (provenance).

        Returns:
            The safetensors path.
        """
        meta = {**self.provenance, "layers": self.layers}
        meta["mean_norms"] = {str(k): v for k, v in self.mean_norms.items()}
        if self.nontoxic_projections:
            meta["nontoxic_projections"] = {str(k): v for k, v in self.nontoxic_projections.items()}
        tensors = {f"layer.{k}": self.directions[k].contiguous().float() for k in self.layers}
        return save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SteeringVector:
        """Read a vector written by :meth:`save` (safetensors only; nothing is unpickled)."""
        tensors, meta = load_tensors(path, "steering vector")
        directions = {int(name.split(".", 1)[1]): t for name, t in tensors.items()}
        meta.pop("layers", None)
        mean_norms = {int(k): float(v) for k, v in (meta.pop("mean_norms", {}) or {}).items()}
        projections = {
            int(k): float(v) for k, v in (meta.pop("nontoxic_projections", {}) or {}).items()
        }
        return cls(directions, meta, mean_norms, projections)

    def check_compatible(self, model: PreTrainedModel, *, allow_other_model: bool = False) -> None:
        """Raise if this vector cannot, or should not, be applied to ``model``.

        Args:
            model: The model to steer.
            allow_other_model: Only warn (instead of raising) when the vector was built on a
                model with another id but the same shape.

        Raises:
            ModelError: Hidden size or layer count differ, or the model id differs (unless
                allowed).
        """
        width = hidden_size(model)
        if width != self.hidden_size:
            raise ModelError(
                f"this steering vector has hidden size {self.hidden_size} but the model has "
                f"{width}: it was built for another model ({self.provenance.get('model_id')})."
            )
        built_layers = self.provenance.get("num_layers")
        if built_layers is not None and int(built_layers) != num_layers(model):
            raise ModelError(
                f"this steering vector was built on a model with {built_layers} layers; "
                f"the model has {num_layers(model)}."
            )
        built_for = self.provenance.get("model_id")
        current = model_id(model)
        if built_for and built_for != current:
            message = (
                f"this steering vector was built for model {built_for!r}, not {current!r}; "
                "rebuild it, or pass allow_other_model=True to apply it anyway."
            )
            if not allow_other_model:
                raise ModelError(message)
            warnings.warn(message, stacklevel=2)


def compute_caa(
    toxic: ResidualActivations,
    nontoxic: ResidualActivations,
    *,
    layers: LayerSpec = "all",
    provenance: Mapping[str, Any] | None = None,
    project_sink: bool = True,
) -> SteeringVector:
    """Difference of means, per layer: ``mean(toxic) - mean(nontoxic)``, sink part removed.

    The pooled activations already leave the attention-sink position out
    (:mod:`steerlib.steer.activations`). Every content token still carries part of the sink's
    direction (cosine about 0.4-0.6 on SmolLM2), and how much differs between kinds of text
    (rare sub-word tokens, as in profanity, carry less), so the plain difference of means keeps
    a component along it: |cosine| 0.5-0.7 at layers 3-6 on RTP texts. Subtracting along that
    direction moves every token toward or away from the sink, which is what broke fluency in
    the vectors made before the content rule. With ``project_sink`` (the default) that
    component is projected out: ``v - (v . s) s`` with ``s`` the unit mean first-position
    state of both sets at the layer. The diagnostics record the cosine before
    (``sink_cosine_raw``) and after, and the share of the norm removed.

    Args:
        toxic: Pooled activations of toxic texts.
        nontoxic: Pooled activations of non-toxic texts (same model).
        layers: Layers to keep.
        provenance: Extra provenance to record.
        project_sink: Remove the component along the sink direction (needs activations that
            recorded it; older files are used as they are, and the provenance says so).

    Returns:
        A :class:`SteeringVector` pointing toward toxicity.
    """
    if toxic.layers != nontoxic.layers or toxic.pooled.shape[2] != nontoxic.pooled.shape[2]:
        raise ConfigError("toxic and non-toxic activations come from different models or layers.")
    indices = resolve_layers(len(toxic.layers), layers)
    kept = {toxic.layers[i] for i in indices}
    sinks = sink_directions(toxic, nontoxic) if project_sink else None
    diagnostics = [
        r
        for r in vector_diagnostics(toxic, nontoxic, project_sink=project_sink)
        if r["layer"] in kept
    ]
    flagged = dominated_layers(diagnostics)
    if flagged:
        warnings.warn(
            f"the steering vector at layer(s) {flagged} is dominated by one position (|cosine| "
            "with the attention sink or one token's share of the pooled window above 0.5): "
            "check the texts' tokenization and the pooling rule before steering with it.",
            stacklevel=2,
        )
    diff = toxic.mean() - nontoxic.mean()
    if sinks is not None:
        diff = diff - (diff * sinks).sum(dim=1, keepdim=True) * sinks
    all_norms = torch.cat([toxic.token_norm, nontoxic.token_norm]).mean(dim=0)
    directions = {toxic.layers[i]: diff[i].clone() for i in indices}
    mean_norms = {toxic.layers[i]: float(all_norms[i]) for i in indices}
    nontoxic_mean = nontoxic.mean()
    projections = {
        toxic.layers[i]: float(nontoxic_mean[i] @ (diff[i] / diff[i].norm().clamp(min=1e-12)))
        for i in indices
    }
    meta: dict[str, Any] = {
        "method": "caa_mean_difference",
        "direction": "caa",
        "pooling": toxic.provenance.get("pooling", "mean_last_n"),
        "outlier_factor": toxic.provenance.get("outlier_factor"),
        "last_n": toxic.last_n,
        "n_toxic": int(toxic.pooled.shape[0]),
        "n_nontoxic": int(nontoxic.pooled.shape[0]),
        "toxic_texts_sha256": toxic.provenance.get("texts_sha256"),
        "nontoxic_texts_sha256": nontoxic.provenance.get("texts_sha256"),
        "steerlib_version": library_version(),
        "torch_version": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "diagnostics": diagnostics,
        "sink_projected": sinks is not None,
    }
    meta.update(provenance or {})
    return SteeringVector(directions, meta, mean_norms, projections)


def caa_from_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    toxic_texts: Sequence[str],
    nontoxic_texts: Sequence[str],
    *,
    last_n: int = 32,
    batch_size: int = 8,
    source: str = "unspecified",
    progress: bool = True,
    project_sink: bool = True,
) -> SteeringVector:
    """Capture activations of both text sets and build the CAA vector for every layer.

    Pooling follows the content rule of :mod:`steerlib.steer.activations` (no special tokens, no
    attention-sink position, no norm outliers); see :func:`compute_caa` for ``project_sink``.

    Example:
        >>> v = caa_from_texts(model, tok, toxic, nontoxic, source="bundled")  # doctest: +SKIP
    """
    if len(toxic_texts) == 0 or len(nontoxic_texts) == 0:
        raise DataError("caa_from_texts needs at least one toxic and one non-toxic text.")
    toxic = capture_residuals(
        model, tokenizer, toxic_texts, last_n=last_n, batch_size=batch_size, progress=progress
    )
    nontoxic = capture_residuals(
        model, tokenizer, nontoxic_texts, last_n=last_n, batch_size=batch_size, progress=progress
    )
    return compute_caa(
        toxic,
        nontoxic,
        provenance=model_provenance(model) | {"texts_source": source},
        project_sink=project_sink,
    )


def model_provenance(model: PreTrainedModel) -> dict[str, Any]:
    """Model facts recorded with vectors and activations."""
    return {
        "model_id": model_id(model),
        "model_revision": model_revision(model),
        "model_class": type(model).__name__,
        "hidden_size": hidden_size(model),
        "num_layers": num_layers(model),
    }
