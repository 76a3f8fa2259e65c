"""FastReID's training loop and data loader on today's torch and on CPU, for both trainers
(FastReID's DefaultTrainer and the plugin's CPCLTrainer).

- dataloaderx_cpu: `DataLoaderX` creates a CUDA stream in `__init__`, and its prefetch thread
  calls `torch.cuda.set_device`; both fail without CUDA. Without CUDA the loader keeps the
  background prefetch thread but skips streams and device copies.
- one_sentence_errors: `TrainerBase.train` logs every exception with its traceback before
  re-raising it. Errors whose class sets `one_sentence = True` (cpcl_plugin/errors.py) already say
  what to fix, and the tools print them as one line; their traceback is left out of that record.
- metric_printer_once_per_iteration: `PeriodicWriter` writes after each step and again after
  each epoch; when both fall on one iteration before `IterationTimer` has timed any (epochs of
  one or two iterations), `CommonMetricPrinter`'s ETA divides by zero and ends the run after its
  last checkpoint, without results. The printer prints once per iteration.
- fastreid_version: the PyPI 1.4.0 package says `__version__ = "1.3"`, which `default_setup`'s
  environment table prints; it is set from the installed metadata.
"""
import functools
import logging
from importlib import metadata

import fastreid
import torch
from fastreid.data import data_utils
from fastreid.utils.events import CommonMetricPrinter, EventStorage, get_event_storage


def _patch_dataloaderx():
    if torch.cuda.is_available() or getattr(data_utils.DataLoaderX, "_cpcl_cpu_safe", False):
        return False
    cls = data_utils.DataLoaderX
    gen = data_utils.BackgroundGenerator

    def loader_init(self, local_rank, **kwargs):
        torch.utils.data.DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank

    def loader_preload(self):
        self.batch = next(self.iter, None)

    def loader_next(self):
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch

    def generator_run(self):
        for item in self.generator:
            if self.exit_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)

    cls.__init__ = loader_init
    cls.preload = loader_preload
    cls.__next__ = loader_next
    cls._cpcl_cpu_safe = True
    gen.run = generator_run
    return True


class _OneSentenceErrorFilter(logging.Filter):
    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, "one_sentence", False)


def _quiet_one_sentence_errors():
    logging.getLogger("fastreid.engine.train_loop").addFilter(_OneSentenceErrorFilter())
    return True


def _patch_fastreid_version():
    try:
        installed = metadata.version("fastreid")
    except metadata.PackageNotFoundError:  # a source checkout: its own __version__ stands
        return False
    if fastreid.__version__ == installed:
        return False
    fastreid.__version__ = installed
    return True


def _printer_divides_by_zero():
    """Whether CommonMetricPrinter fails when written twice at one iteration without timings."""
    printer = CommonMetricPrinter(max_iter=10)
    printer.logger = logging.getLogger("cpcl_plugin.compat.trial")
    printer.logger.disabled = True
    with EventStorage(0) as storage:
        storage.epoch = 0  # set by the trainer's loop
        try:
            printer.write()
            printer.write()
        except ZeroDivisionError:
            return True
    return False


def _patch_metric_printer():
    original = CommonMetricPrinter.write
    if getattr(original, "_cpcl_patched", False) or not _printer_divides_by_zero():
        return False

    @functools.wraps(original)
    def write(self):
        iteration = get_event_storage().iter
        if getattr(self, "_cpcl_last_printed", None) == iteration:
            return  # printed already: nothing new to report
        self._cpcl_last_printed = iteration
        original(self)

    write._cpcl_patched = True
    CommonMetricPrinter.write = write
    return True


PATCHES = (
    ("dataloaderx_cpu", _patch_dataloaderx),
    ("one_sentence_errors", _quiet_one_sentence_errors),
    ("fastreid_version", _patch_fastreid_version),
    ("metric_printer_once_per_iteration", _patch_metric_printer),
)
