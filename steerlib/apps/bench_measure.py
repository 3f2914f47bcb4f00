"""The measuring instruments of ``python -m steerlib bench``: peak memory, matmul peak, FLOPs.

They know nothing of steering or generation; :mod:`steerlib.apps.bench_sections` uses them.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

__all__ = ["RunStats", "flops_per_token", "matmul_peak"]


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


class _PeakMemory:
    """Peak memory inside a ``with`` block: CUDA allocator peak, else sampled process RSS."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        """Resident set size of this process in bytes (lifetime maximum where unreadable)."""
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, self.rss())

    @property
    def label(self) -> str:
        """What the peak measures."""
        return "GPU allocated" if self.device.type == "cuda" else "process RSS"


def _device_name(device: torch.device) -> str:
    """The device with its product name where torch knows it (``cuda (NVIDIA H200)``)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5
) -> float:
    """Best measured FLOP/s of a square ``size`` matrix multiply (the machine's practical peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    best = float("inf")
    inner = 3
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * size**3 / best


def flops_per_token(model: nn.Module) -> float:
    """Matrix-multiply FLOPs of one token through the model: 2 x weights applied per token.

    Every module with a 2-D weight except embedding lookups counts (tied output heads
    included); attention scores over the cache are left out (small at these lengths).
    """
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) or not isinstance(weight, torch.Tensor):
            continue
        if weight.dim() == 2:
            total += weight.numel()
    return 2.0 * total


@dataclass
class RunStats:
    """One timed sweep.

    Attributes:
        method: ``"straightforward"`` or ``"engine"``.
        tokens: Generated tokens (kept tokens plus the stop token where a row stopped early).
        seconds: Wall time.
        peak_bytes: Peak memory during the run (see :class:`_PeakMemory`).
        completions: Number of completions.
    """

    method: str
    tokens: int
    seconds: float
    peak_bytes: int
    completions: int

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def _generated_tokens(table: pd.DataFrame, max_new_tokens: int) -> int:
    counts = table["n_new_tokens"].astype(int)
    return int((counts + (counts < max_new_tokens).astype(int)).sum())


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def _best(runs: list[RunStats]) -> RunStats:
    return max(runs, key=lambda r: r.tokens_per_second)
