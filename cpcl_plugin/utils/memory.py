"""The peak memory of this process over a stretch of work (the pseudo-label pass logs it per rank).

Resident memory: Linux's VmHWM, restarted by writing "5" to /proc/self/clear_refs. Where that
cannot be done, the peak is the process's lifetime peak (getrusage), and `PeakMemory.since_start`
says so. CUDA: torch's peak of allocated memory on the current device, when CUDA is in use.
"""
import resource
import sys

import torch

__all__ = ["PeakMemory"]

_GB = float(1 << 30)


def _restart_resident_peak():
    """True where the resident peak could be restarted now (Linux clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _resident_peak_bytes():
    """VmHWM of /proc/self/status, else the lifetime peak from getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


class PeakMemory:
    """``peak = PeakMemory()`` restarts the peaks; ``peak.gigabytes()`` reads them since then:
    (resident GB, CUDA GB or None). ``peak.since_start`` is False where the resident number is
    the process's lifetime peak instead."""

    def __init__(self):
        self.since_start = _restart_resident_peak()
        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def gigabytes(self):
        cuda = torch.cuda.max_memory_allocated() / _GB if self.cuda else None
        return _resident_peak_bytes() / _GB, cuda
