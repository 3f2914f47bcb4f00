"""A KV cache written into buffers sized for the whole decode (used by the sweep engine).

``transformers``' ``DynamicCache`` concatenates at every step, copying every layer's cache; on a
2-core CPU with a batch of 640 rows that copying was a third of the sweep's time.
:func:`preallocate_cache` swaps a prefilled cache's layers for :class:`PreallocatedLayer` s,
which write each step's keys and values in place. :func:`static_cache` swaps them for
:class:`StaticLayer` s instead: buffers of a fixed shape, written at a position held in a device
tensor and attended over whole (unwritten positions masked), so that a decode step has the same
shapes and addresses at every step and can be captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

__all__ = ["PreallocatedLayer", "StaticLayer", "preallocate_cache", "static_cache"]


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers sized for the whole decode.

    ``DynamicLayer.update`` concatenates, copying the layer's whole cache at every step; this
    layer writes the new step in place and exposes views of the filled part, so a step costs
    only its own keys and values. It grows (by copying) if a decode outruns its capacity.

    Args:
        keys: ``(batch, heads, length, head_dim)`` keys of the prefill.
        values: Values of the same batch and length.
        capacity: Positions to reserve (prefill length plus the new tokens to come).
        repeats: Rows each prefill row becomes (``repeat_interleave`` on the batch), so a
            prompt's cache is expanded across its samples while it is copied in.
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, capacity: int, repeats: int = 1
    ) -> None:
        super().__init__()
        batch, heads, length = keys.shape[:3]
        capacity = max(capacity, length)
        self.device = keys.device
        self.is_initialized = True
        self._length = length
        self._keys = self._buffer(keys, batch, heads, capacity, repeats)
        self._values = self._buffer(values, batch, heads, capacity, repeats)
        self._expose()

    @staticmethod
    def _buffer(
        states: torch.Tensor, batch: int, heads: int, capacity: int, repeats: int
    ) -> torch.Tensor:
        length, dim = states.shape[2], states.shape[3]
        buffer = states.new_empty((batch, repeats, heads, capacity, dim))
        buffer[:, :, :, :length] = states[:, None]
        return buffer.view(batch * repeats, heads, capacity, dim)

    def _expose(self) -> None:
        self.keys = self._keys[:, :, : self._length]
        self.values = self._values[:, :, : self._length]

    @property
    def capacity(self) -> int:
        """Positions the buffers hold."""
        return self._keys.shape[2]

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity)
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            new = old.new_empty((old.shape[0], old.shape[1], capacity, old.shape[3]))
            new[:, :, : self._length] = old[:, :, : self._length]
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions in place; return the filled keys and values (views)."""
        end = self._length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self._keys[:, :, self._length : end] = key_states
        self._values[:, :, self._length : end] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Filled positions."""
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` positions (``DynamicLayer`` convention)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove.")
        self._length = max(0, self._length + tokens_to_remove)
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times."""
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices``."""
        self._keys = self._keys[indices]
        self._values = self._values[indices]
        self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the rows (beam search)."""
        self.batch_select_indices(beam_idx.to(self._keys.device))


class StaticLayer(PreallocatedLayer):
    """A layer of fixed shape for graph-captured decoding: ``update`` returns the whole buffers.

    The new keys and values are written at the position ``write_at`` holds (a one-element
    device tensor shared by all layers, advanced by the caller), with ``index_copy_``, so a
    step launches the same kernels on the same addresses every time. The buffers start zeroed
    (never NaN), and the positions not yet written must be masked out by the caller's 4-D
    attention mask.

    Args:
        keys: ``(batch, heads, length, head_dim)`` keys of the prefill.
        values: Values of the same batch and length.
        capacity: Positions of the buffers (prefill length plus the new tokens to come).
        write_at: ``(1,)`` long tensor on the cache's device: the next position to write.
        repeats: Rows each prefill row becomes.
    """

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        capacity: int,
        write_at: torch.Tensor,
        repeats: int = 1,
    ) -> None:
        self.write_at = write_at
        super().__init__(keys, values, capacity, repeats=repeats)

    @staticmethod
    def _buffer(
        states: torch.Tensor, batch: int, heads: int, capacity: int, repeats: int
    ) -> torch.Tensor:
        length, dim = states.shape[2], states.shape[3]
        buffer = states.new_zeros((batch, repeats, heads, capacity, dim))
        buffer[:, :, :, :length] = states[:, None]
        return buffer.view(batch * repeats, heads, capacity, dim)

    def _expose(self) -> None:
        self.keys = self._keys
        self.values = self._values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one position at ``write_at``; return the whole buffers."""
        self._keys.index_copy_(2, self.write_at, key_states)
        self._values.index_copy_(2, self.write_at, value_states)
        self._length += key_states.shape[-2]
        return self._keys, self._values


def _plain(layer: Any, capacity: int) -> bool:
    """A layer holding every position of a ``(batch, heads, length, dim)`` cache."""
    if not (layer.is_initialized and getattr(layer, "keys", None) is not None):
        return False
    if layer.keys.dim() != 4:
        return False
    if type(layer) is DynamicLayer:
        return True
    # A sliding window longer than the decode (Phi-4-mini: 262,144) keeps every position.
    window = getattr(layer, "sliding_window", None)
    return type(layer) is DynamicSlidingWindowLayer and window is not None and window > capacity


def static_cache(cache: Any, capacity: int, write_at: torch.Tensor, repeats: int = 1) -> bool:
    """Move a prefilled ``DynamicCache``'s layers into :class:`StaticLayer` s, if all can move.

    Args:
        cache: The cache returned by the prefill (changed in place only when all layers move).
        capacity: Positions per row (prefill length plus new tokens).
        write_at: See :class:`StaticLayer`; set it to the prefill length before decoding.
        repeats: Rows each cached row becomes.

    Returns:
        Whether every layer moved (else the cache is unchanged and the caller decodes with
        :func:`preallocate_cache`).
    """
    if not all(_plain(layer, capacity) for layer in cache.layers):
        return False
    for index, layer in enumerate(cache.layers):
        cache.layers[index] = StaticLayer(
            layer.keys, layer.values, capacity, write_at, repeats=repeats
        )
    return True


def preallocate_cache(cache: Any, capacity: int, repeats: int = 1) -> None:
    """Move a prefilled ``DynamicCache``'s plain layers into :class:`PreallocatedLayer` s.

    Plain layers are full-attention layers and sliding-window layers whose window is longer
    than ``capacity``. Layers of other kinds (short sliding windows, quantized,
    linear-attention) are only repeated.

    Args:
        cache: The cache returned by the prefill (changed in place).
        capacity: Positions to reserve per row.
        repeats: Rows each cached row becomes.
    """
    for index, layer in enumerate(cache.layers):
        if _plain(layer, capacity):
            cache.layers[index] = PreallocatedLayer(
                layer.keys, layer.values, capacity, repeats=repeats
            )
        elif repeats > 1:
            layer.batch_repeat_interleave(repeats)
