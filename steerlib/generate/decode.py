"""One batch of the sweep engine: every (prompt, alpha, sample) row of a group of prompts.

:func:`decode_batch` prefills the prompts (once per (prompt, alpha), or once per prompt when the
prefill does not depend on alpha), expands the KV cache across the samples and hands the batch to
a decode loop (:mod:`steerlib.generate.loops`). It takes the steering whole (a
:class:`~steerlib.steer.steering.Steering`, any variant) and the sampling whole (a
:class:`~steerlib.generate.settings.DecodingSettings`); the loose keyword arguments of earlier
releases (``vector``, ``layer``, ``mode``, ``gate``...) still build the same two values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from steerlib.errors import ConfigError
from steerlib.generate import loops
from steerlib.generate.kvcache import preallocate_cache, static_cache
from steerlib.generate.loops import DecodeOptions
from steerlib.generate.sampling import sample_next
from steerlib.generate.settings import DecodingSettings
from steerlib.generate.tokens import left_pad, model_cache
from steerlib.steer.gate import Gate
from steerlib.steer.handle import SteeringHandle
from steerlib.steer.hooks import Positions, Units, VectorLike
from steerlib.steer.operators import operator_for_mode
from steerlib.steer.steering import Steering

__all__ = ["DecodeOptions", "decode_batch", "loose_steering"]


@dataclass(frozen=True, eq=False)
class _Plan:
    """Everything one batch's decode reads, besides the model, the prompts and the generator."""

    steering: Steering | None
    alphas: tuple[float, ...]
    settings: DecodingSettings
    stop_ids: frozenset[int]
    pad_id: int
    on_step: Callable[[int], None] | None
    options: DecodeOptions
    gate_counts: dict[str, torch.Tensor] | None


def loose_steering(
    vector: VectorLike | None,
    layer: int | Sequence[int] | None,
    *,
    positions: Positions | None = None,
    units: Units | None = None,
    mode: str | None = None,
    gate: Gate | Mapping[int, Gate] | None = None,
    split_alpha: bool | None = None,
) -> Steering | None:
    """The :class:`~steerlib.steer.steering.Steering` of the loose keyword arguments.

    Raises:
        ConfigError: A vector without a layer, or an unknown mode.
    """
    if vector is None:
        return None
    if layer is None:
        raise ConfigError("layer is required when a steering vector is given.")
    layers = (int(layer),) if isinstance(layer, int) else tuple(int(k) for k in layer)
    return Steering(
        vector,
        layers,
        operator_for_mode(mode or "add"),
        positions=positions or "all",
        units=units or "raw",
        gate=gate,
        split_alpha=bool(split_alpha),
    )


@torch.inference_mode()
def decode_batch(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    alphas: Sequence[float],
    stop_ids: set[int],
    pad_id: int,
    steering: Steering | None = None,
    settings: DecodingSettings | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
    options: DecodeOptions | None = None,
    gate_counts: dict[str, torch.Tensor] | None = None,
    vector: VectorLike | None = None,
    layer: int | Sequence[int] | None = None,
    samples_per_prompt: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    positions: Positions | None = None,
    units: Units | None = None,
    mode: str | None = None,
    gate: Gate | Mapping[int, Gate] | None = None,
    split_alpha: bool | None = None,
) -> torch.Tensor:
    """Generate every (prompt, alpha, sample) row of a group of prompts in one batch.

    Args:
        model: A causal LM with a ``DynamicCache``-style KV cache.
        prompt_ids: Token ids of each prompt (unpadded).
        alphas: Coefficients; every prompt gets every alpha.
        stop_ids: End-of-sequence ids; a row stops after emitting one.
        pad_id: Padding id (also written after a row stops).
        steering: How rows are steered (any variant); ``None``: unsteered (alphas ignored).
            With ``positions == "all"`` the prefill is steered, once per (prompt, alpha);
            with ``"generated"`` it is unsteered, once per prompt.
        settings: Sampling (``samples_per_prompt``, ``max_new_tokens``, ``temperature``,
            ``top_p``); the loose arguments below override its fields.
        generator: Random generator for sampling (on the model's device).
        on_step: Called with the number of rows decoded at each step (progress bars).
        options: Decode-loop options (default: the fast path for the device).
        gate_counts: Filled (for a probe-gated steering) with ``fired`` and ``gated``, per
            output row: steered content positions where the gate fired, and all of them.
        vector: The loose form of ``steering`` (plain CAA unless ``mode`` says otherwise),
            with ``layer``, ``positions``, ``units``, ``mode``, ``gate`` and ``split_alpha``
            as in :func:`steerlib.steer.hooks.steering`.
        layer: See ``vector``.
        samples_per_prompt: Rows per (prompt, alpha).
        max_new_tokens: Decode steps.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        positions: See ``vector``.
        units: See ``vector``.
        mode: See ``vector``.
        gate: See ``vector``.
        split_alpha: See ``vector``.

    Returns:
        ``(prompts x alphas x samples, max_new_tokens)`` new token ids on the CPU, rows ordered
        prompt, then alpha, then sample.
    """
    if steering is None:
        steering = loose_steering(
            vector,
            layer,
            positions=positions,
            units=units,
            mode=mode,
            gate=gate,
            split_alpha=split_alpha,
        )
    settings = (settings or DecodingSettings()).but(
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
    )
    options = options or DecodeOptions()
    plan = _Plan(
        steering,
        tuple(float(a) for a in alphas),
        settings,
        frozenset(stop_ids),
        pad_id,
        on_step,
        options,
        gate_counts,
    )
    device = next(model.parameters()).device
    sync_free, graphs = options.resolve(device)
    # The gate keeps per-row counters in the hook: not captured in a CUDA graph.
    graphs = graphs and not (steering is not None and steering.gated)
    if not sync_free:
        out = _decode(model, prompt_ids, plan, generator, static=False, graphs=False)
    else:
        if generator is None:  # the redo below needs a state to return to
            generator = torch.Generator(device=device)
            generator.manual_seed(int(torch.randint(2**62, (1,))))
        state = generator.get_state()
        out = _decode(model, prompt_ids, plan, generator, static=True, graphs=graphs)
        if out is None:  # more rows needed a full sort than planned: decode again, synced
            generator.set_state(state)
            out = _decode(model, prompt_ids, plan, generator, static=False, graphs=False)
    assert out is not None
    return out.cpu()


def _prefill_rows(
    prompt_ids: Sequence[Sequence[int]], plan: _Plan
) -> tuple[list[Sequence[int]], list[float], int, torch.Tensor]:
    """``(prefill sequences, their alphas, rows per prefill row, alpha of every output row)``."""
    alphas, n_samples = plan.alphas, plan.settings.samples_per_prompt
    if plan.steering is None or plan.steering.positions == "generated":
        prefill_seqs, prefill_alpha = list(prompt_ids), [0.0]
        expand = len(alphas) * n_samples
    else:
        prefill_seqs = [seq for seq in prompt_ids for _ in alphas]
        prefill_alpha = [a for _ in prompt_ids for a in alphas]
        expand = n_samples
    row_alpha = torch.tensor([a for _ in prompt_ids for a in alphas for _ in range(n_samples)])
    return prefill_seqs, prefill_alpha, expand, row_alpha


def _first_tokens(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    position: torch.Tensor,
    plan: _Plan,
    generator: torch.Generator | None,
    expand: int,
) -> tuple[Any, torch.Tensor]:
    """Prefill: the KV cache and the first new token of every output row."""
    result = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = model_cache(result)
    logits = result.logits[:, -1, :].float()
    del result
    if plan.settings.temperature == 0:
        return cache, logits.argmax(-1).repeat_interleave(expand)
    tokens = sample_next(
        logits.repeat_interleave(expand, dim=0),
        temperature=plan.settings.temperature,
        top_p=plan.settings.top_p,
        generator=generator,
        overwrite=True,
    )
    return cache, tokens


def _decode(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    plan: _Plan,
    generator: torch.Generator | None,
    *,
    static: bool,
    graphs: bool,
) -> torch.Tensor | None:
    """Prefill, then the static (sync-free) or the synced decode loop; ``None`` on overflow."""
    device = next(model.parameters()).device
    max_new_tokens = plan.settings.max_new_tokens
    prefill_seqs, prefill_alpha, expand, row_alpha = _prefill_rows(prompt_ids, plan)
    input_ids, mask = left_pad(prefill_seqs, plan.pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = torch.full(
        (row_alpha.numel(), max_new_tokens), plan.pad_id, dtype=torch.long, device=device
    )
    context: AbstractContextManager[SteeringHandle | None] = (
        plan.steering.hooks(model, prefill_alpha) if plan.steering is not None else nullcontext()
    )
    with context as handle:
        cache, tokens = _first_tokens(model, input_ids, mask, position, plan, generator, expand)
        if expand > 1:
            mask = mask.repeat_interleave(expand, dim=0)
        if handle is not None:
            handle.expand_rows(expand)
        out[:, 0] = tokens
        if plan.on_step is not None:
            plan.on_step(row_alpha.numel())
        width = input_ids.shape[1]
        loop = dict(
            model=model,
            cache=cache,
            handle=handle,
            tokens=tokens,
            mask=mask,
            last=position[:, -1].repeat_interleave(expand),
            row_alpha=row_alpha,
            out=out,
            stops=torch.tensor(sorted(plan.stop_ids) or [-1], device=device),
            pad_id=plan.pad_id,
            temperature=plan.settings.temperature,
            top_p=plan.settings.top_p,
            generator=generator,
            on_step=plan.on_step,
        )
        write_at = torch.full((1,), width, dtype=torch.long, device=device)
        if static and static_cache(cache, width + max_new_tokens, write_at, repeats=expand):
            finished = loops._static_loop(
                **loop, write_at=write_at, options=plan.options, graphs=graphs
            )
            if not finished:
                return None
        else:
            preallocate_cache(cache, width + max_new_tokens, repeats=expand)
            loops._synced_loop(**loop)
        gated = plan.steering is not None and plan.steering.gated
        if handle is not None and plan.gate_counts is not None and gated:
            plan.gate_counts["fired"], plan.gate_counts["gated"] = handle.gate_counts()
    return out
