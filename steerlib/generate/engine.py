"""Sweep engine: a whole (prompt x alpha x sample) sweep with far less work than ``generate``.

The straightforward sweep calls ``model.generate`` once per alpha with
``num_return_sequences``: every sample re-encodes its prompt, every batch pads to its longest
prompt, and each call holds only one alpha's rows. This engine runs its own decode loop:

* one batch carries many (prompt, alpha, sample) rows, each with its own alpha (the per-row
  alpha of :func:`steerlib.steer.hooks.steering`);
* each prompt's prefill runs once per (prompt, alpha) and its KV cache is expanded across the
  samples; with ``positions="generated"`` once per prompt for all alphas, because the prompt's
  cache does not depend on alpha then (the first new token is then unsteered, exactly as with
  ``steering(..., positions="generated")`` around ``generate``);
* prompts are bucketed by token length, so a prefill pads little;
* the KV cache is written into buffers sized for the whole decode, where ``generate``'s
  ``DynamicCache`` copies every layer's cache at every step (on a 2-core CPU with a batch of
  640 rows that copying was a third of the time);
* on a CPU, rows that emit end-of-sequence are dropped from the batch (and from the cache),
  and top-p sampling looks at the 64 most likely tokens first, then 1,024, then 8,192, and
  sorts the whole vocabulary only for rows whose nucleus is larger still (same distribution as
  ``TopPLogitsWarper``; steered text is often flat enough to need the second tier);
* on CUDA (:class:`DecodeOptions`), a decode step makes no host sync and keeps its shapes:
  finished rows stay, masked, the device is read every few steps, top-p sampling takes one
  partial top-k and fully sorts only a few rows, and the step is captured in a CUDA graph and
  replayed; batch and unit sizes come from the free device memory (:mod:`steerlib.generate.sizing`).

The work is split into :class:`~steerlib.generate.partition.SweepUnit` s (one direction, one layer,
one
length bucket of prompts, all alphas and samples), the unit of resume and of streaming to disk:
:func:`run_sweep` skips units already done and hands each finished unit's table to a callback. A
unit's random seed derives from the run seed and the unit key, so a resumed CPU run reproduces the
rows of an uninterrupted one. Greedy decoding equals per-alpha ``generate`` token for token in
float32; in bfloat16 or float16 the rounding depends on the batch's shape, so near-ties of the
argmax can flip (``python -m steerlib bench`` reports the agreement).

Over 500 lines because the batched decode, its sync-free and CUDA-graph paths and unit
generation share one KV-cache and sampler state; splitting it belongs to the layered-subpackage
work (issue 24), which moves these pieces into their own modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Container, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.generation import (
    COMPLETION_COLUMNS,
    PromptFormat,
    check_sampling,
    decode_new_tokens,
    derive_seed,
    encode_prompts,
    left_pad,
    model_cache,
    stop_token_ids,
)
from steerlib.generate.kvcache import PreallocatedLayer, preallocate_cache, static_cache
from steerlib.generate.partition import (
    DEFAULT_TOKENS_PER_UNIT,
    SweepUnit,
    check_prompts,
    sweep_units,
)
from steerlib.generate.sampling import sample_next, sample_static
from steerlib.generate.sizing import CPU_MAX_BATCH_ROWS, SweepSizes, choose_sizes
from steerlib.models.layers import num_layers
from steerlib.steer.hooks import Gate, Positions, SteeringHandle, SteeringMode, Units, steering
from steerlib.steer.probe import ToxicityProbe
from steerlib.steer.variants import Variant
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "DEFAULT_MAX_BATCH_ROWS",
    "DEFAULT_TOKENS_PER_UNIT",
    "DecodeOptions",
    "PreallocatedLayer",
    "SweepUnit",
    "decode_batch",
    "generate_unit",
    "preallocate_cache",
    "run_sweep",
    "sample_next",
    "sweep_sizes",
    "sweep_units",
]

DEFAULT_MAX_BATCH_ROWS = CPU_MAX_BATCH_ROWS
"""Most rows decoded together on a CPU; on CUDA see
:func:`steerlib.generate.sizing.choose_sizes`."""
_DROP_FRACTION = 1 / 16
"""Finished rows are dropped once they are this fraction of the batch (a drop copies the cache)."""


# ------------------------------------------------------------------------------------------
# Decode loop


@dataclass(frozen=True)
class DecodeOptions:
    """How the decode loop runs; the defaults pick the fast path for the device.

    Attributes:
        sync_free: The fixed-shape step without host syncs (:func:`_static_loop`): finished
            rows stay in the batch, masked, and the loop looks at the device only every
            ``check_every`` steps; sampling by :func:`steerlib.generate.sampling.sample_static`.
            ``"auto"``: on CUDA. Otherwise finished rows are dropped as they come and sampling
            uses the tiered :func:`steerlib.generate.sampling.sample_next` (the CPU path).
        cuda_graphs: Capture the sync-free step in a CUDA graph after two warm-up steps and
            replay it for the remaining steps of the batch. ``"auto"``: on CUDA with the
            sync-free step. A no-op off CUDA.
        top_k: Candidates per row of the sync-free sampler.
        sort_rows: Rows per step that may get a full-vocabulary sort in the sync-free sampler;
            ``None``: 1/32 of the batch, at least 8. A step that needed more sorts makes the
            batch decode again on the synced path (exact either way).
        check_every: Steps between looks at the device (all rows finished? too many sorts?).
    """

    sync_free: bool | Literal["auto"] = "auto"
    cuda_graphs: bool | Literal["auto"] = "auto"
    top_k: int = 1024
    sort_rows: int | None = None
    check_every: int = 4

    def __post_init__(self) -> None:
        for name in ("sync_free", "cuda_graphs"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ConfigError(f"{name} must be True, False or 'auto'.")
        if self.top_k < 1 or self.check_every < 1 or (self.sort_rows or 0) < 0:
            raise ConfigError("top_k and check_every must be at least 1, sort_rows at least 0.")

    def resolve(self, device: torch.device) -> tuple[bool, bool]:
        """``(sync_free, cuda_graphs)`` on ``device``."""
        cuda = device.type == "cuda"
        sync_free = cuda if self.sync_free == "auto" else bool(self.sync_free)
        graphs = sync_free if self.cuda_graphs == "auto" else bool(self.cuda_graphs)
        return sync_free, graphs and sync_free and cuda


_WARMUP_STEPS = 2
"""Eager steps (on a side stream) before a decode step is captured in a CUDA graph."""
_graphs_broken: list[str] = []
"""Why graph capture failed in this process (``cuda_graphs="auto"`` then stops trying)."""


@torch.inference_mode()
def decode_batch(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    vector: SteeringVector | Mapping[int, torch.Tensor] | None,
    layer: int | Sequence[int] | None,
    alphas: Sequence[float],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    positions: Positions,
    units: Units,
    stop_ids: set[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
    options: DecodeOptions | None = None,
    mode: SteeringMode = "add",
    gate: Gate | Mapping[int, Gate] | None = None,
    split_alpha: bool = False,
    gate_counts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate every (prompt, alpha, sample) row of a group of prompts in one batch.

    Args:
        model: A causal LM with a ``DynamicCache``-style KV cache.
        prompt_ids: Token ids of each prompt (unpadded).
        vector: Steering vector, or ``None`` for unsteered decoding (alphas ignored).
        layer: Steered layer, or several (see ``split_alpha``).
        alphas: Coefficients; every prompt gets every alpha.
        samples_per_prompt: Rows per (prompt, alpha).
        max_new_tokens: Decode steps.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        positions: ``"all"`` (prefill steered, once per (prompt, alpha)) or ``"generated"``
            (prefill unsteered, once per prompt).
        units: Alpha units of :func:`steerlib.steer.hooks.steering`.
        stop_ids: End-of-sequence ids; a row stops after emitting one.
        pad_id: Padding id (also written after a row stops).
        generator: Random generator for sampling (on the model's device).
        on_step: Called with the number of rows decoded at each step (progress bars).
        options: Decode-loop options (default: the fast path for the device).
        mode: Steering mode of :func:`steerlib.steer.hooks.steering`.
        gate: The probe of ``mode="gated"``.
        split_alpha: Divide alpha across the steered layers.
        gate_counts: Filled (with ``mode="gated"``) with ``fired`` and ``gated``, per output
            row: steered content positions where the gate fired, and all of them.

    Returns:
        ``(prompts x alphas x samples, max_new_tokens)`` new token ids on the CPU, rows ordered
        prompt, then alpha, then sample.
    """
    options = options or DecodeOptions()
    device = next(model.parameters()).device
    sync_free, graphs = options.resolve(device)
    # The gate keeps per-row counters in the hook: not captured in a CUDA graph.
    graphs = graphs and mode != "gated"
    if vector is not None and layer is None:
        raise ConfigError("layer is required when a steering vector is given.")
    kwargs = dict(
        vector=vector,
        layer=layer,
        alphas=alphas,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        positions=positions,
        units=units,
        stop_ids=stop_ids,
        pad_id=pad_id,
        on_step=on_step,
        options=options,
        mode=mode,
        gate=gate,
        split_alpha=split_alpha,
        gate_counts=gate_counts,
    )
    if not sync_free:
        out = _decode(model, prompt_ids, generator=generator, static=False, graphs=False, **kwargs)
    else:
        if generator is None:  # the redo below needs a state to return to
            generator = torch.Generator(device=device)
            generator.manual_seed(int(torch.randint(2**62, (1,))))
        state = generator.get_state()
        out = _decode(model, prompt_ids, generator=generator, static=True, graphs=graphs, **kwargs)
        if out is None:  # more rows needed a full sort than planned: decode again, synced
            generator.set_state(state)
            out = _decode(
                model, prompt_ids, generator=generator, static=False, graphs=False, **kwargs
            )
    assert out is not None
    return out.cpu()


def _decode(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    vector: SteeringVector | Mapping[int, torch.Tensor] | None,
    layer: int | Sequence[int] | None,
    alphas: Sequence[float],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    positions: Positions,
    units: Units,
    stop_ids: set[int],
    pad_id: int,
    generator: torch.Generator | None,
    on_step: Callable[[int], None] | None,
    options: DecodeOptions,
    static: bool,
    graphs: bool,
    mode: SteeringMode = "add",
    gate: Gate | Mapping[int, Gate] | None = None,
    split_alpha: bool = False,
    gate_counts: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Prefill, then the static (sync-free) or the synced decode loop; ``None`` on overflow."""
    device = next(model.parameters()).device
    n_alphas, n_samples = len(alphas), samples_per_prompt
    steered = vector is not None
    share_prefill = positions == "generated" or not steered
    if share_prefill:
        prefill_seqs = list(prompt_ids)
        prefill_alpha = [0.0]
        expand = n_alphas * n_samples
    else:
        prefill_seqs = [seq for seq in prompt_ids for _ in alphas]
        prefill_alpha = [float(a) for _ in prompt_ids for a in alphas]
        expand = n_samples
    row_alpha = torch.tensor(
        [float(a) for _ in prompt_ids for a in alphas for _ in range(n_samples)]
    )
    n_rows = row_alpha.numel()
    input_ids, mask = left_pad(prefill_seqs, pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(stop_ids) or [-1], device=device)
    out = torch.full((n_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    context: AbstractContextManager[SteeringHandle | None] = (
        steering(
            model,
            vector,
            prefill_alpha,
            layer,
            positions=positions,
            units=units,
            mode=mode,
            gate=gate,
            split_alpha=split_alpha,
        )
        if steered
        else nullcontext()
    )
    with context as handle:
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
        if temperature == 0:
            tokens = logits.argmax(-1).repeat_interleave(expand)
        else:
            tokens = sample_next(
                logits.repeat_interleave(expand, dim=0),
                temperature=temperature,
                top_p=top_p,
                generator=generator,
                overwrite=True,
            )
        del logits
        if expand > 1:
            mask = mask.repeat_interleave(expand, dim=0)
        last = position[:, -1].repeat_interleave(expand)
        if handle is not None:
            handle.expand_rows(expand)
        out[:, 0] = tokens
        if on_step is not None:
            on_step(n_rows)
        width = input_ids.shape[1]
        loop = dict(
            model=model,
            cache=cache,
            handle=handle,
            tokens=tokens,
            mask=mask,
            last=last,
            row_alpha=row_alpha,
            out=out,
            stops=stops,
            pad_id=pad_id,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            on_step=on_step,
        )
        write_at = torch.full((1,), width, dtype=torch.long, device=device)
        if static and static_cache(cache, width + max_new_tokens, write_at, repeats=expand):
            if not _static_loop(**loop, write_at=write_at, options=options, graphs=graphs):
                return None
        else:
            preallocate_cache(cache, width + max_new_tokens, repeats=expand)
            _synced_loop(**loop)
        if handle is not None and gate_counts is not None and mode == "gated":
            fired, gated = handle.gate_counts()
            gate_counts["fired"], gate_counts["gated"] = fired, gated
    return out


def _synced_loop(
    *,
    model: PreTrainedModel,
    cache: Any,
    handle: SteeringHandle | None,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    last: torch.Tensor,
    row_alpha: torch.Tensor,
    out: torch.Tensor,
    stops: torch.Tensor,
    pad_id: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    on_step: Callable[[int], None] | None,
) -> None:
    """The CPU decode loop: finished rows leave the batch (and the cache) as they come."""
    active = torch.arange(out.shape[0], device=out.device)
    alpha_now = row_alpha
    if handle is not None:
        handle.set_alpha(alpha_now)
    done = torch.isin(tokens, stops)
    for step in range(1, out.shape[1]):
        n_done = int(done.sum())
        if n_done == len(active):
            break
        if n_done and n_done >= _DROP_FRACTION * len(active):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, last, tokens, active = mask[keep], last[keep], tokens[keep], active[keep]
            done = done[keep]
            alpha_now = alpha_now[keep.cpu()]
            if handle is not None:
                handle.select_rows(keep)
                handle.set_alpha(alpha_now)
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last = last + 1
        result = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=last[:, None],
            cache=cache,
            use_cache=True,
        )
        cache = model_cache(result)
        logits = result.logits[:, -1, :].float()
        del result
        tokens = sample_next(
            logits, temperature=temperature, top_p=top_p, generator=generator, overwrite=True
        )
        del logits
        # Rows that stopped earlier keep the pad id written at the start.
        tokens = torch.where(done, torch.full_like(tokens, pad_id), tokens)
        out[active, step] = tokens
        done = done | torch.isin(tokens, stops)
        if on_step is not None:
            on_step(len(active))


def _static_loop(
    *,
    model: PreTrainedModel,
    cache: Any,
    handle: SteeringHandle | None,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    last: torch.Tensor,
    row_alpha: torch.Tensor,
    out: torch.Tensor,
    stops: torch.Tensor,
    pad_id: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    on_step: Callable[[int], None] | None,
    write_at: torch.Tensor,
    options: DecodeOptions,
    graphs: bool,
) -> bool:
    """The sync-free decode loop over a :func:`~steerlib.generate.kvcache.static_cache` cache.

    Every step has the same shapes and reads and writes the same tensors in place: the
    tokens, the positions, a 4-D additive attention mask over the whole capacity (a column
    opens as its position is written), the output column, the finished rows (kept in the batch,
    their new tokens replaced by the pad id) and the sampler's overflow flag. So the step
    launches no host sync and can be captured in a CUDA graph. The device is read only every
    ``options.check_every`` steps.

    Kept in one piece (about 80 lines): the step closure and the loop that warms it up,
    captures and replays it share a dozen static tensors.

    Returns:
        ``False`` when a step needed more full sorts than ``options.sort_rows`` (the batch must
        then be decoded again on the synced path), else ``True``.
    """
    rows, capacity = out.shape[0], cache.layers[0].capacity
    dtype = next(model.parameters()).dtype
    device = out.device
    floor = torch.finfo(dtype).min
    mask4d = torch.full((rows, 1, 1, capacity), floor, dtype=dtype, device=device)
    mask4d[:, 0, 0, : mask.shape[1]].masked_fill_(mask.bool(), 0.0)
    token_buf = tokens[:, None].clone()
    position = last[:, None].clone()
    done = (tokens[:, None] == stops).any(-1)
    overflow = torch.zeros((), dtype=torch.bool, device=device)
    column = torch.ones(1, dtype=torch.long, device=device)
    sort_rows = options.sort_rows if options.sort_rows is not None else max(8, rows // 32)
    if handle is not None:
        # A device tensor read by the hooks at every step: no host-to-device copy per step.
        handle.alpha = row_alpha.to(device)

    def step() -> None:
        mask4d.index_fill_(3, write_at, 0.0)
        position.add_(1)
        result = model(
            input_ids=token_buf,
            attention_mask=mask4d,
            position_ids=position,
            cache=cache,
            use_cache=True,
        )
        logits = result.logits[:, -1, :].float()
        new, over = sample_static(
            logits,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
            top_k=options.top_k,
            sort_rows=sort_rows,
        )
        new = torch.where(done, pad_id, new)
        out.index_copy_(1, column, new[:, None])
        token_buf.copy_(new[:, None])
        done.logical_or_((new[:, None] == stops).any(-1))
        overflow.logical_or_(over)
        write_at.add_(1)
        column.add_(1)

    graph = None
    n_steps = out.shape[1]
    for index in range(1, n_steps):
        if graph is not None:
            graph.replay()
        elif graphs and not _graphs_broken and index > _WARMUP_STEPS and index < n_steps - 1:
            graph = _capture(step, device, generator, options)
            if graph is None:
                step()
            else:
                graph.replay()
        elif graphs and not _graphs_broken:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream(device).wait_stream(side)
        else:
            step()
        if on_step is not None:
            on_step(rows)
        if index % options.check_every == 0 or index == n_steps - 1:
            all_done, overflowed = torch.stack([done.all(), overflow]).tolist()
            if overflowed:
                return False
            if all_done:
                break
    return True


def _capture(
    step: Callable[[], None],
    device: torch.device,
    generator: torch.Generator | None,
    options: DecodeOptions,
) -> Any:
    """A CUDA graph of ``step`` (not yet replayed), or ``None`` where capture fails in auto mode."""
    graph = torch.cuda.CUDAGraph()
    try:
        if generator is not None and hasattr(graph, "register_generator_state"):
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as exc:
        if options.cuda_graphs is True:
            raise
        _graphs_broken.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        warnings.warn(
            f"CUDA graph capture of the decode step failed ({_graphs_broken[-1]}); decoding "
            "without graphs from now on (cuda_graphs=False hides this).",
            stacklevel=3,
        )
        torch.cuda.synchronize(device)
        return None
    return graph


# ------------------------------------------------------------------------------------------
# Units and sweeps


def _unit_prompts(unit: SweepUnit, prompts: pd.DataFrame) -> pd.DataFrame:
    by_id = prompts.assign(prompt_id=prompts["prompt_id"].astype(str)).set_index(
        "prompt_id", drop=False
    )
    missing = [pid for pid in unit.prompt_ids if pid not in by_id.index]
    if missing:
        raise ConfigError(
            f"unit {unit.key} names prompt ids {missing[:3]} that the prompts table lacks; "
            "build the units from the same prompts table."
        )
    return by_id.loc[list(unit.prompt_ids)].reset_index(drop=True)


@torch.inference_mode()
def generate_unit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    unit: SweepUnit,
    prompts: pd.DataFrame,
    *,
    vector: SteeringVector | None,
    alphas: Sequence[float],
    samples_per_prompt: int = 1,
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    top_p: float = 0.9,
    prompt_format: PromptFormat = "raw",
    positions: Positions = "all",
    units: Units = "raw",
    seed: int = 0,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    progress: bool = False,
    decode: DecodeOptions | None = None,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
) -> pd.DataFrame:
    """Generate all alphas x samples of one unit's prompts.

    Kept in one piece (about 90 lines): it expands one unit's rows, batches them and collects the
    table, each part a few lines over the same row index.

    Args:
        model: A causal LM (see :func:`steerlib.models.loading.load_model`).
        tokenizer: Its tokenizer.
        unit: The unit (see :func:`sweep_units`).
        prompts: Table holding the unit's prompts (``prompt_id``, ``prompt``; a ``subset``
            column and other prompt columns are kept).
        vector: The unit's steering vector; ``None`` for unsteered decoding (alphas must be 0).
        alphas: Coefficients.
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: Sampling temperature; 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"``.
        seed: Run seed; the unit's seed derives from it and ``unit.key``.
        max_batch_rows: Most rows decoded together (a prompt's alphas x samples are never
            split).
        progress: Show a progress bar over generated rows x tokens.
        decode: Decode-loop options (default: the fast path for the device).
        variant: How the vector is applied (:mod:`steerlib.steer.variants`); ``None``: plain CAA at
            ``unit.layer``.
        probe: The toxicity probe of a gated variant.

    Returns:
        One row per completion: :data:`steerlib.generate.generation.COMPLETION_COLUMNS`, then the
        other
        prompt columns; ordered by the prompts table, alpha, sample. A gated variant adds
        ``gate_fired`` and ``gate_positions`` (steered content positions where the gate fired,
        and all of them).
    """
    check_sampling(temperature, top_p, max_new_tokens, samples_per_prompt)
    if not alphas:
        raise ConfigError("alphas is empty: give at least one coefficient.")
    if vector is None and any(a != 0 for a in alphas):
        raise ConfigError("alphas other than 0 need a steering vector.")
    if max_batch_rows < 1:
        raise ConfigError(f"max_batch_rows must be at least 1, got {max_batch_rows}.")
    if vector is not None:
        vector.check_compatible(model, allow_other_model=True)
    check_prompts(prompts)
    table = _unit_prompts(unit, prompts)
    encoded = encode_prompts(tokenizer, table["prompt"].tolist(), prompt_format)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, unit.key))
    per_prompt = len(alphas) * samples_per_prompt
    group = max(1, max_batch_rows // per_prompt)
    total = len(encoded) * per_prompt * max_new_tokens
    bar = tqdm(total=total, desc=unit.key, unit="tok", disable=not progress, leave=False)
    direction = unit.direction if vector is not None else "none"
    steer: dict[str, Any] = {"layers": unit.layer, "positions": positions, "mode": "add"}
    if variant is not None and vector is not None:
        steer = variant.steering_kwargs(unit.layer, num_layers(model), positions, probe)
    gated = steer["mode"] == "gated"
    records: list[dict[str, Any]] = []
    try:
        for start in range(0, len(order), group):
            chunk = order[start : start + group]
            counts_out: dict[str, torch.Tensor] = {}
            new_tokens = decode_batch(
                model,
                [encoded[i] for i in chunk],
                vector=vector,
                layer=steer["layers"],
                alphas=alphas,
                samples_per_prompt=samples_per_prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                positions=steer["positions"],
                units=units,
                stop_ids=stop_ids,
                pad_id=pad_id,
                generator=generator,
                on_step=bar.update if progress else None,
                options=decode,
                mode=steer["mode"],
                gate=steer.get("gate"),
                split_alpha=steer.get("split_alpha", False),
                gate_counts=counts_out,
            )
            texts, counts = decode_new_tokens(tokenizer, new_tokens, stop_ids)
            row = 0
            for index in chunk:
                record = table.iloc[index].to_dict()
                for alpha in alphas:
                    for sample in range(samples_per_prompt):
                        records.append(
                            {
                                **record,
                                "layer": int(unit.layer),
                                "alpha": float(alpha),
                                "direction": direction,
                                "sample": sample,
                                "completion": texts[row],
                                "n_new_tokens": counts[row],
                                **(
                                    {
                                        "gate_fired": int(counts_out["fired"][row]),
                                        "gate_positions": int(counts_out["gated"][row]),
                                    }
                                    if gated and counts_out
                                    else {}
                                ),
                            }
                        )
                        row += 1
    finally:
        bar.close()
    out = pd.DataFrame(records)
    extra = [c for c in prompts.columns if c not in COMPLETION_COLUMNS]
    rank = {pid: i for i, pid in enumerate(prompts["prompt_id"].astype(str))}
    out = out.sort_values(
        ["prompt_id", "alpha", "sample"],
        key=lambda s: s.map(rank) if s.name == "prompt_id" else s,
        kind="stable",
    )
    gate_columns = ["gate_fired", "gate_positions"] if "gate_fired" in out.columns else []
    return out[COMPLETION_COLUMNS + extra + gate_columns].reset_index(drop=True)


def sweep_sizes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    *,
    max_new_tokens: int = 20,
    prompt_format: PromptFormat = "raw",
    tokens_per_unit: int | None = None,
    max_batch_rows: int | None = None,
) -> SweepSizes:
    """The unit and batch sizes :func:`run_sweep` uses for ``prompts`` (given values win).

    A caller that makes several sweeps of one step (or shares one out over workers) chooses
    them once and passes them to each call, so every call names its units alike.
    """
    longest = max(
        len(ids) for ids in encode_prompts(tokenizer, prompts["prompt"].tolist(), prompt_format)
    )
    return choose_sizes(
        model,
        row_tokens=longest + max_new_tokens,
        max_new_tokens=max_new_tokens,
        max_batch_rows=max_batch_rows,
        tokens_per_unit=tokens_per_unit,
    )


def run_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: pd.DataFrame,
    vectors: Mapping[str, SteeringVector],
    *,
    layers: Sequence[int],
    alphas: Sequence[float],
    samples_per_prompt: int = 1,
    max_new_tokens: int = 20,
    temperature: float = 0.7,
    top_p: float = 0.9,
    prompt_format: PromptFormat = "raw",
    positions: Positions = "all",
    units: Units = "raw",
    seed: int = 0,
    done: Container[str] = (),
    on_unit: Callable[[SweepUnit, pd.DataFrame], None] | None = None,
    progress: bool = True,
    tokens_per_unit: int | None = None,
    max_batch_rows: int | None = None,
    key_prefix: str = "",
    decode: DecodeOptions | None = None,
    variant: Variant | None = None,
    probe: ToxicityProbe | None = None,
) -> pd.DataFrame:
    """Run a steering sweep: every vector x layer x alpha x prompt x sample.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Table with ``prompt_id`` and ``prompt`` (other columns such as ``subset`` are
            kept).
        vectors: ``{direction: vector}``, e.g. ``{"caa": v, "random": v.random_like()}``; the
            keys name the units and fill the output's ``direction`` column.
        layers: Steered layers (one at a time).
        alphas: Coefficients.
        samples_per_prompt: Samples per (prompt, alpha).
        max_new_tokens: New tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: Nucleus threshold.
        prompt_format: ``"raw"`` or ``"chat"``.
        positions: ``"all"`` or ``"generated"``.
        units: ``"raw"`` or ``"norm"``.
        seed: Run seed; each unit's seed derives from it and the unit key.
        done: Keys of units to skip (already on disk).
        on_unit: Called as ``on_unit(unit, table)`` after each generated unit (score it and
            write it atomically there).
        progress: Show progress bars.
        tokens_per_unit: See :func:`sweep_units`; ``None``: chosen by
            :func:`steerlib.generate.sizing.choose_sizes` (on a CPU 16,384; on CUDA one batch of the
            rows that fit the card's memory, so a resumed run names its units alike on the
            same card).
        max_batch_rows: See :func:`generate_unit`; ``None``: chosen likewise (CPU: 640; CUDA:
            from the free memory).
        key_prefix: See :func:`sweep_units`.
        decode: Decode-loop options (default: the fast path for the device).
        variant: See :func:`generate_unit` (one variant for the whole call).
        probe: See :func:`generate_unit`.

    Returns:
        The concatenated tables of the units generated by this call (not the skipped ones).

    Example:
        >>> table = run_sweep(model, tok, prompts, {"caa": v}, layers=[18],
        ...                   alphas=[-1, 0, 1.5], samples_per_prompt=25)  # doctest: +SKIP
    """
    if not vectors:
        raise ConfigError("vectors is empty: give at least one steering vector.")
    unset = [name for name, vector in vectors.items() if vector is None]
    if unset:
        raise ConfigError(
            f"vectors {unset} are None; the unsteered baseline comes from generate_completions."
        )
    if tokens_per_unit is None or max_batch_rows is None:
        sizes = sweep_sizes(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            prompt_format=prompt_format,
            max_batch_rows=max_batch_rows,
            tokens_per_unit=tokens_per_unit,
        )
        tokens_per_unit, max_batch_rows = sizes.tokens_per_unit, sizes.max_batch_rows
    all_units = sweep_units(
        prompts,
        layers=list(layers),
        directions=list(vectors),
        tokens_per_unit=tokens_per_unit,
        alphas=alphas,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        tokenizer=tokenizer,
        prompt_format=prompt_format,
        key_prefix=key_prefix,
    )
    todo = [unit for unit in all_units if unit.key not in done]
    tables: list[pd.DataFrame] = []
    bar = tqdm(todo, desc="sweep", unit="unit", disable=not progress)
    try:
        for unit in bar:
            bar.set_postfix_str(unit.key)
            table = generate_unit(
                model,
                tokenizer,
                unit,
                prompts,
                vector=vectors[unit.direction],
                alphas=alphas,
                samples_per_prompt=samples_per_prompt,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                prompt_format=prompt_format,
                positions=positions,
                units=units,
                seed=seed,
                max_batch_rows=max_batch_rows,
                progress=progress,
                decode=decode,
                variant=variant,
                probe=probe,
            )
            if on_unit is not None:
                on_unit(unit, table)
            tables.append(table)
    finally:
        bar.close()
    if not tables:
        columns = COMPLETION_COLUMNS + [c for c in prompts.columns if c not in COMPLETION_COLUMNS]
        return pd.DataFrame(columns=columns)
    return pd.concat(tables, ignore_index=True)
