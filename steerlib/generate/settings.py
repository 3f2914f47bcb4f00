"""How completions are sampled, as one frozen value, and the table they come back in.

:class:`DecodingSettings` travels whole from a run's parameters to every generation path (the
sweep engine, ``generate_completions``, the reference generator, the bench); :func:`derive_seed`
makes each batch's or unit's seed from the run seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, TypeAlias

from steerlib.errors import ConfigError
from steerlib.steer.hooks import Positions, Units

__all__ = [
    "COMPLETION_COLUMNS",
    "DecodingSettings",
    "PromptFormat",
    "check_sampling",
    "derive_seed",
    "sampling_kwargs",
]

PromptFormat: TypeAlias = Literal["raw", "chat"]
"""``"raw"``: the prompt text as is (RealToxicityPrompts continuation). ``"chat"``: the prompt
as the user turn of the model's chat template, followed by the assistant header."""


@dataclass(frozen=True)
class DecodingSettings:
    """How completions are sampled and steered, as one frozen value.

    The sweep engine (:func:`steerlib.generate.engine.run_sweep`,
    :func:`~steerlib.generate.engine.generate_unit`,
    :func:`~steerlib.generate.decode.decode_batch`),
    :func:`steerlib.generate.generation.generate_completions` and the reference generator
    (:mod:`steerlib.generate.reference`) take it whole (``settings=``). ``positions`` and
    ``units`` are the run's: a :class:`~steerlib.steer.steering.Steering` bound from a variant
    carries the resolved ones, and generation reads them from it.

    Attributes:
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: Steered positions, ``"all"`` or ``"generated"``.
        units: Alpha units, ``"raw"`` or ``"norm"``.
        seed: Base seed; each unit's or batch's seed derives from it.

    Example:
        >>> DecodingSettings(max_new_tokens=8).as_kwargs()["top_p"]
        0.9
    """

    samples_per_prompt: int = 1
    max_new_tokens: int = 20
    temperature: float = 0.7
    top_p: float = 0.9
    prompt_format: PromptFormat = "raw"
    positions: Positions = "all"
    units: Units = "raw"
    seed: int = 0

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p, self.max_new_tokens, self.samples_per_prompt)

    @classmethod
    def of(cls, params: Any) -> DecodingSettings:
        """The settings of a run's parameters (a :class:`~steerlib.experiment.config.RunParams`)."""
        return cls(**{name: getattr(params, name) for name in cls.__dataclass_fields__})

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments."""
        return asdict(self)

    def but(self, **changes: Any) -> DecodingSettings:
        """A copy with the given fields changed; ``None`` values leave a field as it is.

        Example:
            >>> DecodingSettings().but(top_p=0.5, temperature=None).temperature
            0.7
        """
        given = {name: value for name, value in changes.items() if value is not None}
        return replace(self, **given) if given else self


COMPLETION_COLUMNS = [
    "prompt_id",
    "prompt",
    "layer",
    "alpha",
    "direction",
    "steered",
    "sample",
    "completion",
    "n_new_tokens",
]

"""Columns of a completions table, in order (other prompt columns follow). ``steered`` is
False on unsteered rows (see :func:`steerlib.generate.steered.is_unsteered`; tables of old
runs lack it)."""


def derive_seed(seed: int, *keys: Any) -> int:
    """A 63-bit seed from a base seed and any keys, stable across processes and platforms.

    Example:
        >>> derive_seed(0, "batch", 3) == derive_seed(0, "batch", 3)
        True
    """
    text = "\x1f".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def sampling_kwargs(temperature: float, top_p: float) -> dict[str, Any]:
    """``generate`` arguments for nucleus sampling (greedy at temperature 0), top-k disabled.

    Example:
        >>> sampling_kwargs(0.0, 0.9)
        {'do_sample': False, 'temperature': None, 'top_p': None, 'top_k': None}
    """
    sample = temperature > 0
    return {
        "do_sample": sample,
        "temperature": temperature if sample else None,
        "top_p": top_p if sample else None,
        "top_k": None,
    }


def check_sampling(temperature: float, top_p: float, max_new_tokens: int, samples: int) -> None:
    """Raise ConfigError for a sampling setting the samplers cannot use."""
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}.")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}.")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if samples < 1:
        raise ConfigError(f"samples_per_prompt must be at least 1, got {samples}.")
