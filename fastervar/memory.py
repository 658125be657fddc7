"""Peak memory of one variant while it runs, measured in the same process as the others.

On a GPU it is torch's peak allocation; on the CPU a thread samples this process's resident set
(Linux /proc) and the figure is the peak above what was resident when the variant started.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_STATM = Path("/proc/self/statm")
_STATUS = Path("/proc/self/status")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def peak_resident_bytes() -> int | None:
    """The kernel's high-water mark of this process's resident set (VmHWM), or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_resident() -> bool:
    """Restart VmHWM from the current resident set (Linux's clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def available_bytes() -> int | None:
    """Memory the kernel can still give without swapping (MemAvailable), or None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMemory:
    """Context manager; `peak_bytes` is the peak working memory of the block, or None if unknown."""

    def __init__(self, device: str = "cpu", interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak_bytes: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 -- typing.Self needs Python 3.11
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        self._start = resident_bytes()
        self._max = self._start
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = resident_bytes()
            if now is not None and now > self._max:
                self._max = now
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._max, resident_bytes() or 0) - self._start
