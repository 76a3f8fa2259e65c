"""Progress of long steps (feature extraction, index building, clustering, evaluation, drawing) as
log lines of one form everywhere:

    encoding 3074 gallery images: 0/3074 items
    encoding 3074 gallery images: 620/3074 items (41.2 items/s, eta 0:00:59)
    encoding 3074 gallery images: 3074/3074 items in 0:01:14 (41.5 items/s)

Plain log lines rather than a redrawn bar: they read the same on a terminal, in a log file and in a
CI log. A step logs its start, then a line whenever another tenth is done (at most one per
MIN_INTERVAL seconds) or MAX_INTERVAL seconds have passed without one, then its end: about a dozen
lines however long it runs, and never a silent minute.
"""
import contextlib
import datetime
import logging
import sys
import time

__all__ = ["Progress", "track", "console_logging", "quiet_logger"]

logger = logging.getLogger("cpcl_plugin.progress")

MIN_INTERVAL = 2.0    # seconds between two lines, at least
MAX_INTERVAL = 30.0   # seconds between two lines, at most (while updates arrive)


def _duration(seconds):
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
    """Counts the units done of one step and logs its progress (module docstring).

        with Progress("clustering 6156 images", total=6156, unit="images") as progress:
            for chunk in chunks:
                ...
                progress.update(len(chunk))

    `enabled=False` counts without logging (e.g. on ranks other than 0). Leaving the `with` block
    logs the end line, or where the step stopped when an exception left it.
    """

    def __init__(self, step, total, unit="items", enabled=True, log=None, clock=time.monotonic,
                 min_interval=MIN_INTERVAL, max_interval=MAX_INTERVAL):
        self.step, self.total, self.unit = step, int(total), unit
        self.enabled, self._log = enabled, log or logger
        self._clock, self._min, self._max = clock, min_interval, max_interval
        self.done = 0
        self._start = self._last = clock()
        self._last_tenth = 0
        self._closed = False
        self._emit(f"{self.step}: 0/{self.total} {self.unit}")

    def _emit(self, message):
        if self.enabled:
            self._log.info(message)

    def _rate(self, now):
        elapsed = now - self._start
        return self.done / elapsed if elapsed > 0 else float("inf")

    def update(self, n=1):
        """Record `n` more units done; logs a line when one is due."""
        self.done += n
        now = self._clock()
        tenth = 10 * self.done // self.total if self.total > 0 else 10
        since = now - self._last
        if self.done >= self.total or not ((tenth > self._last_tenth and since >= self._min)
                                           or since >= self._max):
            return  # the end line comes from close()
        rate = self._rate(now)
        eta = _duration((self.total - self.done) / rate) if 0 < rate < float("inf") else "?"
        self._emit(f"{self.step}: {self.done}/{self.total} {self.unit} "
                   f"({rate:.3g} {self.unit}/s, eta {eta})")
        self._last, self._last_tenth = now, tenth

    def close(self, stopped=False):
        """Log the end line once: the time the step took, or where it stopped."""
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        if stopped:
            self._emit(f"{self.step}: stopped at {self.done}/{self.total} {self.unit} after "
                       f"{_duration(now - self._start)}")
        else:
            rate = self._rate(now)
            speed = f" ({rate:.3g} {self.unit}/s)" if rate < float("inf") else ""
            self._emit(f"{self.step}: {self.done}/{self.total} {self.unit} in "
                       f"{_duration(now - self._start)}{speed}")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(stopped=exc_type is not None)
        return False


def track(iterable, step, total=None, unit="items", count=None, **kwargs):
    """Yield the items of `iterable`, logging the step's progress as each one is consumed. Each item
    counts 1, or `count(item)` units; `total` defaults to len(iterable). Other keyword arguments
    go to Progress (e.g. enabled=comm.is_main_process())."""
    total = len(iterable) if total is None else total
    with Progress(step, total, unit, **kwargs) as progress:
        for item in iterable:
            yield item
            progress.update(1 if count is None else count(item))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each line (so a caller that redirects
    stderr, a test's capture included, gets the lines)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


class _Formatter(logging.Formatter):
    def format(self, record):
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[{self.formatTime(record, '%H:%M:%S')}] {prefix}{record.getMessage()}"


@contextlib.contextmanager
def console_logging(level=logging.INFO):
    """While in the block, the project's log lines (progress included) of `level` and above go to
    stderr, so that a tool's stdout holds only its results; not also through the root logger,
    which libraries may have configured (open_clip's logging.info calls basicConfig). Undone on
    leaving, so that calling a tool's main() from Python leaves logging as it found it."""
    top = logging.getLogger("cpcl_plugin")
    handler, old = _StderrHandler(), (top.level, top.propagate)
    handler.setFormatter(_Formatter())
    handler.setLevel(level)
    top.addHandler(handler)
    top.propagate = False
    if top.getEffectiveLevel() > level:
        top.setLevel(level)
    try:
        yield
    finally:
        top.removeHandler(handler)
        top.setLevel(old[0])
        top.propagate = old[1]


@contextlib.contextmanager
def quiet_logger(name, level=logging.WARNING):
    """While in the block, the logger `name` drops lines below `level` (e.g. another progress form
    that this project's replaces). Forked data-loader workers, started inside, inherit it."""
    log = logging.getLogger(name)
    old = log.level
    log.setLevel(max(level, log.getEffectiveLevel()))
    try:
        yield
    finally:
        log.setLevel(old)
