"""Adapts FastReID 1.4.0 (PyPI, JDAI-CV code of early 2023) to today's Python, torch, numpy and
to CPU-only machines. This is the only module of the project that touches FastReID internals.

`apply()` runs once, from ``import cpcl_plugin``, before anything else imports FastReID. Every patch
is feature-detected: it does nothing where the running FastReID (or Python/torch/numpy) is already
fine, and `applied()` lists the patches that actually took effect.

Patches, and why:

- ``collections_abc_aliases``: ``fastreid.data.build`` and ``fastreid.evaluation.testing`` do
  ``from collections import Mapping``; the ABC aliases left ``collections`` in Python 3.10.
- ``torch_six``: ``fastreid.data.build`` imports ``string_classes`` from ``torch._six``, removed in
  torch 2.0. A tiny stand-in module provides the names FastReID uses.
- ``numpy_bool``: ``fastreid.evaluation.rank`` uses ``np.bool``, removed in numpy 1.24 (numpy 2
  brought it back; then nothing is patched).
- ``dataloaderx_cpu``: ``DataLoaderX`` creates a CUDA stream in ``__init__`` and its prefetch
  thread calls ``torch.cuda.set_device``: both fail without CUDA. Without CUDA the loader keeps the
  background prefetch thread but skips streams and device copies.
- ``typed_storage_warning``: FastReID's ``ToTensor`` reads images through ``torch.ByteStorage``,
  which torch 2 deprecates with a warning per image; the warning is silenced, the code still works.
- ``cuda_home_warning``: FastReID's ``collect_env_info`` imports ``torch.utils.cpp_extension``,
  which warns "No CUDA runtime is found" on CPU-only machines; that logger is quieted there only.
- ``one_sentence_errors``: ``TrainerBase.train`` logs every exception with its traceback before
  re-raising it. Errors whose class sets ``one_sentence = True`` (the project's ConfigError and
  DatasetError) already say what to fix and are printed by the tools as one line; their
  traceback is left out of that log record.
- ``launch_gloo``: ``fastreid.engine.launch._distributed_worker`` asserts CUDA, hard-codes NCCL and
  calls ``torch.cuda.set_device``. The replacement uses gloo and no CUDA call when CUDA is absent
  or when ``CPCL_DEVICE=cpu`` is in the environment (``tools/train_net.py`` sets it from
  ``MODEL.DEVICE`` before launching), and behaves exactly as before otherwise.

Also here, used in place of FastReID's classes rather than patched into them:

- `writer_classes()` (TensorboardWriter, JSONWriter): FastReID's writers keep one "last written iteration" for
  all scalars, so a scalar put after a write at the same iteration is never written; evaluation
  metrics (put after the epoch's last step) never reached TensorBoard or metrics.json. These
  keep the last written iteration per scalar, and write once more when closed. They handle
  scalars only (the project puts no images or histograms).

Not patched here, because the project simply does not use the broken path: ``build_optimizer``'s
ContiguousParams (the trainer calls it with ``contiguous=False``), ``ReidEvaluator`` (the project
has its own text-to-image evaluator on top of ``evaluate_rank``), ``AMPTrainer`` (CUDA-only) and
DDP's ``device_ids`` on CPU (the trainer builds DDP itself).
"""
import collections
import collections.abc
import functools
import logging
import os
import sys
import types

__all__ = ["apply", "applied", "dist_backend", "registry_names", "writer_classes"]

_APPLIED = []
_DONE = False


def applied():
    """Names of the patches that took effect in this process."""
    return list(_APPLIED)


def _patch_collections():
    names = ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable")
    missing = [n for n in names if not hasattr(collections, n)]
    for n in missing:
        setattr(collections, n, getattr(collections.abc, n))
    return bool(missing)


def _patch_torch_six():
    try:
        import torch._six  # noqa: F401
        return False
    except ImportError:
        pass
    import torch
    six = types.ModuleType("torch._six")
    six.string_classes = (str, bytes)
    six.int_classes = int
    six.container_abcs = collections.abc
    six.inf = float("inf")
    sys.modules["torch._six"] = six
    torch._six = six
    return True


def _patch_numpy_bool():
    import numpy as np
    if "bool" in np.__dict__:
        return False
    np.bool = bool
    return True


def registry_names(registry):
    """The names registered in a FastReID Registry (it has no public listing in 1.4)."""
    return sorted(registry._obj_map)


def dist_backend():
    """The process-group backend a launched worker uses: NCCL on CUDA machines, gloo otherwise."""
    import torch
    if os.environ.get("CPCL_DEVICE", "").lower().startswith("cpu") or not torch.cuda.is_available():
        return "gloo"
    return "nccl"


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args):
    """FastReID's worker, with the backend chosen by `dist_backend()` and CUDA calls only on CUDA."""
    import torch
    import torch.distributed as dist
    from fastreid.utils import comm

    backend = dist_backend()
    if backend == "nccl":
        assert num_gpus_per_machine <= torch.cuda.device_count(), (
            f"--num-gpus {num_gpus_per_machine} asks for more GPUs than the "
            f"{torch.cuda.device_count()} this machine has")
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size,
                                rank=global_rank)
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    comm.synchronize()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    assert comm._LOCAL_PROCESS_GROUP is None
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        group = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    try:
        main_func(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _patch_launch():
    import importlib
    # `fastreid.engine` re-exports the function `launch`, which shadows the module of that name.
    launch_mod = importlib.import_module("fastreid.engine.launch")
    src = getattr(launch_mod._distributed_worker, "__code__", None)
    if src is None or "NCCL" not in src.co_consts:
        return False
    launch_mod._distributed_worker = _distributed_worker
    return True


def _patch_dataloaderx():
    import torch
    from fastreid.data import data_utils

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


def _quiet_typed_storage_warning():
    # FastReID's ToTensor uses torch.ByteStorage, deprecated in torch 2: one warning per image.
    import warnings
    import torch
    if not hasattr(torch, "TypedStorage"):
        return False
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
    return True


def _quiet_cuda_home_warning():
    # FastReID's collect_env_info (run by default_setup) imports torch.utils.cpp_extension, which
    # warns "No CUDA runtime is found" on every CPU-only machine that has a CUDA toolkit folder.
    import torch
    if torch.cuda.is_available():
        return False
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return True


class _OneSentenceErrorFilter(logging.Filter):
    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, "one_sentence", False)


def _quiet_one_sentence_errors():
    logging.getLogger("fastreid.engine.train_loop").addFilter(_OneSentenceErrorFilter())
    return True


def _new_scalars(storage, window_size, written):
    """{iteration: {name: value}} of the scalars newer than their own last write; updates
    `written` ({name: last written iteration})."""
    out = {}
    for name, (value, iteration) in storage.latest_with_smoothing_hint(window_size).items():
        if iteration > written.get(name, -1):
            out.setdefault(iteration, {})[name] = value
            written[name] = iteration
    return out


@functools.lru_cache(maxsize=None)
def writer_classes():
    """(TensorboardWriter, JSONWriter): FastReID's event writers, with the last written iteration
    kept per scalar (defined on first use: they subclass FastReID's, imported after apply())."""
    import json

    from fastreid.utils import events

    class PerScalarWrites:
        """The shared part: scalars newer than their own last write; one more write on close
        (the evaluation after the last epoch comes after the last periodic write)."""

        def _unwritten(self):
            return _new_scalars(events.get_event_storage(), self._window_size,
                                self.__dict__.setdefault("_written", {}))

        def close(self):
            self.write()
            super().close()

    class TensorboardWriter(PerScalarWrites, events.TensorboardXWriter):
        """FastReID's TensorBoard writer, with the last written iteration kept per scalar."""

        def write(self):
            for iteration, scalars in self._unwritten().items():
                for name, value in scalars.items():
                    self._writer.add_scalar(name, value, iteration)

    class JSONWriter(PerScalarWrites, events.JSONWriter):
        """FastReID's metrics.json writer, with the last written iteration kept per scalar."""

        def write(self):
            new = self._unwritten()
            for iteration in sorted(new):
                self._file_handle.write(json.dumps(dict(new[iteration], iteration=iteration),
                                                   sort_keys=True) + "\n")
            self._file_handle.flush()
            os.fsync(self._file_handle.fileno())

    return TensorboardWriter, JSONWriter


_PATCHES = (
    ("collections_abc_aliases", _patch_collections),
    ("torch_six", _patch_torch_six),
    ("numpy_bool", _patch_numpy_bool),
    ("dataloaderx_cpu", _patch_dataloaderx),
    ("launch_gloo", _patch_launch),
    ("typed_storage_warning", _quiet_typed_storage_warning),
    ("cuda_home_warning", _quiet_cuda_home_warning),
    ("one_sentence_errors", _quiet_one_sentence_errors),
)


def apply():
    """Apply every patch that is needed; safe to call more than once."""
    global _DONE
    if _DONE:
        return applied()
    # The first three must run before any FastReID module is imported.
    for name, patch in _PATCHES:
        if patch():
            _APPLIED.append(name)
    _DONE = True
    return applied()
