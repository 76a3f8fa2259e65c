"""The peak memory of this process over a stretch of work (the pseudo-label pass logs it per rank).

Resident memory: Linux's VmHWM, restarted by writing "5" to /proc/self/clear_refs. Where that
cannot be done (no such file, the write refused, or accepted without effect), the peak is the
process's lifetime peak, and `PeakMemory.since_start` says so. The restarted peak starts at the
memory resident then: a stretch that reuses memory the process already holds (freed to its
allocator, not to the system) adds nothing to it. CUDA: torch's peak of allocated memory on the
current device, when CUDA is in use.
"""
import resource
import sys

import torch

__all__ = ["PeakMemory"]

_GB = float(1 << 30)
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kb(*names):
    """The kB values of `names` in /proc/self/status (None where unreadable)."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in names:
                    values[key] = int(line.split()[1])
    except OSError:
        return None
    return [values[n] for n in names] if len(values) == len(names) else None


def _restart_resident_peak():
    """True where the resident peak was restarted now (Linux clear_refs): the write is accepted
    and VmHWM came down, unless it was the resident memory already (nothing to restart)."""
    before = _status_kb("VmHWM", "VmRSS")
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    after = _status_kb("VmHWM", "VmRSS")
    return before is not None and after is not None and (after[0] < before[0]
                                                          or before[0] <= before[1])


def _resident_peak_bytes():
    """VmHWM of /proc/self/status, else the lifetime peak from getrusage."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm[0] * 1024
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
