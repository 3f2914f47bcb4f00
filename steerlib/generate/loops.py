"""The decode loops of the sweep engine: the synced CPU loop and the sync-free CUDA loop.

Both continue a batch whose prompt is already prefilled (:mod:`steerlib.generate.decode`):

* :func:`_synced_loop` (the CPU path): rows that emit end-of-sequence are dropped from the batch
  (and from the cache) as they come, and sampling uses the tiered
  :func:`steerlib.generate.sampling.sample_next`;
* :func:`_static_loop` (on CUDA, :class:`DecodeOptions`): a decode step makes no host sync and
  keeps its shapes: finished rows stay, masked, the device is read every few steps, top-p
  sampling takes one partial top-k and fully sorts only a few rows, and the step is captured in
  a CUDA graph and replayed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from steerlib.errors import ConfigError
from steerlib.generate.sampling import sample_next, sample_static
from steerlib.generate.tokens import model_cache
from steerlib.steer.handle import SteeringHandle

__all__ = ["DecodeOptions"]

_DROP_FRACTION = 1 / 16
"""Finished rows are dropped once they are this fraction of the batch (a drop copies the cache)."""
_WARMUP_STEPS = 2
"""Eager steps (on a side stream) before a decode step is captured in a CUDA graph."""
_graphs_broken: list[str] = []
"""Why graph capture failed in this process (``cuda_graphs="auto"`` then stops trying)."""


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

    Returns:
        ``False`` when a step needed more full sorts than ``options.sort_rows`` (the batch must
        then be decoded again on the synced path), else ``True``.
    """
    rows = out.shape[0]
    device = out.device
    if handle is not None:
        # A device tensor read by the hooks at every step: no host-to-device copy per step.
        handle.alpha = row_alpha.to(device)
    step, done, overflow = _static_step(
        model=model,
        cache=cache,
        tokens=tokens,
        mask=mask,
        last=last,
        out=out,
        stops=stops,
        pad_id=pad_id,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        write_at=write_at,
        options=options,
    )
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


def _static_step(
    *,
    model: PreTrainedModel,
    cache: Any,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    last: torch.Tensor,
    out: torch.Tensor,
    stops: torch.Tensor,
    pad_id: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    write_at: torch.Tensor,
    options: DecodeOptions,
) -> tuple[Callable[[], None], torch.Tensor, torch.Tensor]:
    """The fixed-shape decode step of :func:`_static_loop`, and its ``done`` and overflow flags.

    The step reads and writes only the static tensors made here (and ``out``, ``write_at``,
    the cache) in place, so it can be captured in a CUDA graph.
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

    return step, done, overflow


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
