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
  ``MODEL.DEVICE`` before launching), and behaves exactly as before otherwise. It shares its
  steps (process group, then FastReID's per-machine group) with `environment_process_group`,
  which joins the process group that torchrun or SLURM describe instead of spawning.

Patches that keep a FastReID user's own image re-id project working beside the plugin, along
DefaultTrainer's train -> evaluate -> checkpoint path (``Baseline``, ``NaiveIdentitySampler``,
``ReidEvaluator``; tests/test_fastreid_baseline.py runs FastReID's bag-of-tricks config on CPU):

- ``contiguous_params_grads``: ``build_optimizer`` flattens parameters into ContiguousParams
  buffers by default; torch >= 2's ``zero_grad()`` sets the buffers' grads to None, the optimiser
  then skips them, and the weights silently never change. Optimisers built over ContiguousParams
  zero their gradient buffers in place instead (FastReID's own semantics, and its checkpoints'
  optimiser format, are kept).
- ``amp_trainer_cpu``: ``AMPTrainer`` (``SOLVER.AMP.ENABLED``, on in FastReID's bag-of-tricks
  configs) asserts CUDA in every step. Its AMP is CUDA float16 autocast, a speed-up only, so a
  model that is not on CUDA trains in float32, with one warning; CUDA models are unchanged.
- ``ddp_cpu_device_ids``: ``DefaultTrainer`` wraps the model in DDP with
  ``device_ids=[local_rank]``, which torch rejects for a CPU model; CPU models get none.
- ``reid_evaluator_no_exit``: ``ReidEvaluator`` compiles its Cython module at run time (``make``,
  with whichever ``python3`` is on PATH, into site-packages) and calls ``sys.exit(1)`` when that
  fails, e.g. without Cython or a compiler. Where the module is not built, the evaluator compiles
  nothing and uses FastReID's Python ranking and ROC, which give the Cython module's numbers; it
  says so once in the log, with how to build the module ahead of time (rank.py's and roc.py's
  own import-time warnings are left out).
- ``rank_short_gallery``: that Python ``eval_market1501`` cuts each query's CMC at ``max_rank``
  after leaving out the same-camera matches; on a gallery shorter than ``max_rank`` (50) the
  queries' curves then differ in length and numpy raises (the Cython code fills the tail from
  stale memory instead: a CMC that can fall). Each curve is padded with its last value (its match
  is found by then), and AP is computed without a per-item Python loop (Market-1501's full test
  set in seconds, near the Cython time); all other numbers are FastReID's, bit for bit.
- ``jaccard_cpu``: ``compute_jaccard_distance`` (``TEST.RERANK``) moves the features to CUDA for a
  faiss-GPU search unless ``search_option=3``; without CUDA, or with a faiss built without GPU
  support (faiss-cpu), it uses the CPU search.
- ``verify_results_raises``: ``verify_results`` (``TEST.EXPECTED_RESULTS``) calls ``sys.exit(1)``
  when a result is off; it raises `ResultsVerificationError` instead (a script still exits
  non-zero; a caller can catch it).
- ``metric_printer_once_per_iteration``: ``PeriodicWriter`` writes after each step and again after
  each epoch; when both fall on one iteration before ``IterationTimer`` has timed any (epochs of
  one or two iterations), ``CommonMetricPrinter``'s ETA estimate divides by zero and ends the run
  after its last checkpoint, without results. The printer prints once per iteration (FastReID's
  bug on any stack, patched because both trainers, FastReID's and the plugin's, hit it).
- ``fastreid_version``: the PyPI 1.4.0 package still says ``__version__ = "1.3"``, which
  ``default_setup``'s environment table prints; it is set from the installed metadata.

Also here, used in place of FastReID's classes rather than patched into them:

- `writer_classes()` (TensorboardWriter, JSONWriter): FastReID's writers keep one "last written iteration" for
  all scalars, so a scalar put after a write at the same iteration is never written; evaluation
  metrics (put after the epoch's last step) never reached TensorBoard or metrics.json. These
  keep the last written iteration per scalar, and write once more when closed. They handle
  scalars only (the project puts no images or histograms).

Left as they are (they work, or are FastReID's own limits rather than today's stack's):
``compute_euclidean_distance``'s deprecated ``addmm_`` overload (a warning); the loaders'
``pin_memory=True`` without an accelerator (a warning); ``NaiveIdentitySampler``, which loops
forever with fewer identities than a batch needs; RegNet's ``load_cfg_fom_args``, a command-line
helper that no trainer calls, which exits when given no arguments.
"""
import collections
import collections.abc
import contextlib
import functools
import inspect
import io
import logging
import os
import sys
import types

__all__ = ["apply", "applied", "dist_backend", "environment_process_group", "registry_names",
           "writer_classes", "ResultsVerificationError"]

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


def _join_process_group(backend, init_method, world_size, rank, local_rank, machine_rank):
    """Initialise torch's default process group, then FastReID's per-machine group
    (``comm._LOCAL_PROCESS_GROUP``, behind ``comm.get_local_rank``/``get_local_size``)."""
    import torch
    import torch.distributed as dist
    from fastreid.utils import comm

    if backend == "nccl":
        # Before the first collective (the barrier, the gather below), which runs on this device.
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size,
                                rank=rank)
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", init_method)
        raise
    # synchronize is needed here to prevent a possible timeout after calling init_process_group
    # (FastReID's note; maskrcnn-benchmark issue 172).
    comm.synchronize()
    # Each rank's machine, from every rank: under SLURM's cyclic task distribution the ranks of a
    # machine are not contiguous, so they cannot be computed from the process counts.
    machine_of_rank = [None] * world_size
    dist.all_gather_object(machine_of_rank, machine_rank)
    assert comm._LOCAL_PROCESS_GROUP is None
    # new_group must be called by every rank for every group, in the same order.
    for machine in sorted(set(machine_of_rank)):
        group = dist.new_group([r for r, m in enumerate(machine_of_rank) if m == machine])
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _leave_process_group():
    import torch.distributed as dist
    from fastreid.utils import comm

    if dist.is_initialized():
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args):
    """FastReID's worker, with the backend chosen by `dist_backend()` and CUDA calls only on CUDA."""
    import torch

    backend = dist_backend()
    if backend == "nccl":
        assert num_gpus_per_machine <= torch.cuda.device_count(), (
            f"--num-gpus {num_gpus_per_machine} asks for more GPUs than the "
            f"{torch.cuda.device_count()} this machine has")
    _join_process_group(backend, dist_url, world_size,
                        machine_rank * num_gpus_per_machine + local_rank, local_rank, machine_rank)
    try:
        main_func(*args)
    finally:
        _leave_process_group()


@contextlib.contextmanager
def environment_process_group(launch):
    """Join, for the ``with`` block, the process group that torchrun's or SLURM's variables
    describe (`launch`: a ``cpcl_plugin.engine.launch.EnvironmentLaunch``), through env://
    initialisation and the same steps as the launcher's worker; yields the backend's name."""
    os.environ.update(launch.torch_environment())  # what env:// reads; SLURM sets none of it
    backend = dist_backend()
    _join_process_group(backend, "env://", launch.world_size, launch.rank, launch.local_rank,
                        launch.node_rank)
    try:
        yield backend
    finally:
        _leave_process_group()


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


def _rebind(original, replacement):
    """Point every loaded FastReID module's name for `original` at `replacement` (FastReID
    re-exports functions from its packages; modules imported later take the new one)."""
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "fastreid" or name.startswith("fastreid.")):
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, replacement)


def _zero_grad_in_place(optimizer, set_to_none=False):
    # ContiguousParams' parameters' grads are views of the group buffer's grad: it must stay.
    type(optimizer).zero_grad(optimizer, set_to_none=False)


def _patch_contiguous_params():
    import torch
    from fastreid.solver import build as solver_build

    original = solver_build.build_optimizer
    default = inspect.signature(torch.optim.Optimizer.zero_grad).parameters.get("set_to_none")
    if getattr(original, "_cpcl_patched", False) or default is None or default.default is not True:
        return False

    @functools.wraps(original)
    def build_optimizer(cfg, model, contiguous=True):
        optimizer, params = original(cfg, model, contiguous)
        if contiguous:
            optimizer.zero_grad = functools.partial(_zero_grad_in_place, optimizer)
        return optimizer, params

    build_optimizer._cpcl_patched = True
    _rebind(original, build_optimizer)
    return True


def _on_cuda(model):
    param = next(iter(model.parameters()), None)
    return param is not None and param.device.type == "cuda"


def _patch_amp_trainer():
    import torch
    from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer

    cuda_assert = "[AMPTrainer] CUDA is required for AMP training!"
    if cuda_assert not in AMPTrainer.run_step.__code__.co_consts:
        return False
    original_init, original_step = AMPTrainer.__init__, AMPTrainer.run_step

    def amp_init(self, model, data_loader, optimizer, param_wrapper, grad_scaler=None):
        if grad_scaler is None and not _on_cuda(model):
            # A disabled scaler passes losses and steps through, and warns about nothing.
            scaler_cls = getattr(torch.amp, "GradScaler", None)
            grad_scaler = scaler_cls("cuda", enabled=False) if scaler_cls else \
                torch.cuda.amp.GradScaler(enabled=False)
        original_init(self, model, data_loader, optimizer, param_wrapper, grad_scaler)

    def amp_run_step(self):
        if _on_cuda(self.model):
            return original_step(self)
        if not getattr(self, "_cpcl_fp32_said", False):
            self._cpcl_fp32_said = True
            logging.getLogger("fastreid.engine.train_loop").warning(
                "SOLVER.AMP.ENABLED: FastReID's AMP is CUDA float16 autocast; this model "
                "is not on CUDA, so it trains in float32.")
        return SimpleTrainer.run_step(self)

    AMPTrainer.__init__, AMPTrainer.run_step = amp_init, amp_run_step
    return True


def _patch_ddp_device_ids():
    from torch.nn.parallel import DistributedDataParallel
    from fastreid.engine import defaults

    if defaults.DistributedDataParallel is not DistributedDataParallel:
        return False

    class CPUAwareDDP(DistributedDataParallel):
        """torch's DDP; a model that is not on CUDA gets no device_ids (torch rejects them)."""

        def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
            if device_ids is not None and not _on_cuda(module):
                device_ids = output_device = None
            super().__init__(module, device_ids, output_device, *args, **kwargs)

    defaults.DistributedDataParallel = CPUAwareDDP
    return True


def _cython_rank_module_dir():
    from fastreid.evaluation import rank_cylib
    return os.path.dirname(os.path.abspath(rank_cylib.__file__))


def _patch_reid_evaluator():
    from fastreid.evaluation import rank_cylib, reid_evaluation
    from fastreid.utils import comm

    if "exit" not in rank_cylib.compile_helper.__code__.co_names or \
            getattr(reid_evaluation.ReidEvaluator._compile_dependencies, "_cpcl_patched", False):
        return False
    try:
        from fastreid.evaluation.rank_cylib import rank_cy  # noqa: F401
        return False  # built: FastReID compiles nothing
    except ImportError:
        pass

    def compile_dependencies(self):
        if comm.is_main_process() and not getattr(compile_dependencies, "said", False):
            compile_dependencies.said = True
            logging.getLogger(reid_evaluation.__name__).warning(
                "FastReID's Cython evaluation module is not built: ReidEvaluator uses FastReID's "
                "Python ranking and ROC (the same numbers; slower on full-size sets). To build it "
                "once: "
                "pip install cython, then run `python setup.py build_ext --inplace` in %s",
                _cython_rank_module_dir())
        comm.synchronize()

    compile_dependencies._cpcl_patched = True
    reid_evaluation.ReidEvaluator._compile_dependencies = compile_dependencies
    import warnings
    with warnings.catch_warnings():
        # rank.py and roc.py warn at import that their Cython module is missing; the evaluator
        # says it once, in the log, with how to build it.
        warnings.filterwarnings("ignore", message="Cython r(ank|oc) evaluation")
        from fastreid.evaluation import rank, roc  # noqa: F401
    return True


def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """FastReID's pure-Python ``eval_market1501``, with each query's CMC padded to ``max_rank``
    (its last value: the match is found by then) and AP without a Python loop."""
    import numpy as np

    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    all_cmc, all_AP, all_INP = [], [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        keep = ~((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        raw_cmc = (g_pids[order] == q_pids[q_idx]).astype(np.int32)[keep]
        if not np.any(raw_cmc):
            continue  # the query's identity is not in the gallery
        cmc = raw_cmc.cumsum()
        max_pos_idx = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        cmc = cmc[:max_rank]
        all_cmc.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
        # precision at each rank, kept where there is a match (FastReID's definition)
        precision = raw_cmc.cumsum() / np.arange(1.0, len(raw_cmc) + 1.0) * raw_cmc
        all_AP.append(precision.sum() / raw_cmc.sum())
    assert all_cmc, 'Error: all query identities do not appear in gallery'
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / float(len(all_cmc))
    return all_cmc, all_AP, all_INP


def _short_gallery_breaks(eval_fn):
    """Whether `eval_fn` fails on a gallery shorter than max_rank where queries lose different
    numbers of same-camera items (query 0 loses one of three, query 1 none)."""
    import numpy as np
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], np.float32)
    args = (dist, np.array([1, 2]), np.array([1, 1, 2]), np.array([0, 0]), np.array([0, 1, 1]), 50)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "gallery is quite small" note
            cmc = eval_fn(*args)[0]
    except ValueError:
        return True
    return len(cmc) != 3


def _patch_rank_short_gallery():
    from fastreid.evaluation import rank
    if rank.eval_market1501 is eval_market1501 or not _short_gallery_breaks(rank.eval_market1501):
        return False
    _rebind(rank.eval_market1501, eval_market1501)
    return True


def _patch_jaccard_cpu():
    import faiss
    import torch
    from fastreid.utils import compute_dist

    original = compute_dist.compute_jaccard_distance
    gpu_search = torch.cuda.is_available() and faiss.get_num_gpus() > 0  # faiss-cpu has none
    if gpu_search or getattr(original, "_cpcl_patched", False):
        return False

    @functools.wraps(original)
    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        # options 0-2 are faiss-GPU searches on CUDA tensors; 3 is the CPU search
        return original(features, k1=k1, k2=k2, search_option=3, fp16=fp16)

    compute_jaccard_distance._cpcl_patched = True
    _rebind(original, compute_jaccard_distance)
    return True


class ResultsVerificationError(RuntimeError):
    """FastReID's ``verify_results`` found a result outside TEST.EXPECTED_RESULTS (it logged
    which)."""


def _patch_verify_results():
    from fastreid.evaluation import testing

    original = testing.verify_results
    if "exit" not in original.__code__.co_names:
        return False

    @functools.wraps(original)
    def verify_results(cfg, results):
        try:
            return original(cfg, results)
        except SystemExit:
            raise ResultsVerificationError(
                "Evaluation results differ from TEST.EXPECTED_RESULTS (see the log).") from None

    _rebind(original, verify_results)
    return True


def _patch_fastreid_version():
    from importlib import metadata
    import fastreid
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
    from fastreid.utils.events import CommonMetricPrinter, EventStorage
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
    from fastreid.utils.events import CommonMetricPrinter, get_event_storage
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


_PATCHES = (
    ("collections_abc_aliases", _patch_collections),
    ("torch_six", _patch_torch_six),
    ("numpy_bool", _patch_numpy_bool),
    ("dataloaderx_cpu", _patch_dataloaderx),
    ("launch_gloo", _patch_launch),
    ("typed_storage_warning", _quiet_typed_storage_warning),
    ("cuda_home_warning", _quiet_cuda_home_warning),
    ("one_sentence_errors", _quiet_one_sentence_errors),
    ("contiguous_params_grads", _patch_contiguous_params),
    ("amp_trainer_cpu", _patch_amp_trainer),
    ("ddp_cpu_device_ids", _patch_ddp_device_ids),
    ("reid_evaluator_no_exit", _patch_reid_evaluator),
    ("rank_short_gallery", _patch_rank_short_gallery),
    ("jaccard_cpu", _patch_jaccard_cpu),
    ("verify_results_raises", _patch_verify_results),
    ("fastreid_version", _patch_fastreid_version),
    ("metric_printer_once_per_iteration", _patch_metric_printer),
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
