"""Where and how a torch model runs: device, dtype, and batches that shrink on out-of-memory.

Every GPU backend (SAM, Depth-Anything) goes through here, so "auto" means the same thing
everywhere: CUDA when present (bf16 if the card supports it, else fp16), float32 on CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

log = logging.getLogger("synthvg")

T = TypeVar("T")
R = TypeVar("R")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU (asked-for CUDA on a
    machine without one falls back to the CPU with a warning)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %r asked for but no CUDA device is present; running on the CPU", device)
        return torch.device("cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it (fp16 otherwise), float32 on the CPU."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for code that feeds float32 tensors to a model (no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class AdaptiveBatcher:
    """Runs a function over items in batches; a CUDA out-of-memory error halves the batch and
    retries it. The smaller size sticks for this worker: memory pressure rarely goes away."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def run(self, fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
        out: list[R] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + self.batch_size]
            try:
                results = fn(chunk)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("CUDA out of memory; retrying with batches of %d", self.batch_size)
                continue
            out.extend(results)
            start += len(chunk)
        return out
