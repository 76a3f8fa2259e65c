"""Patches that keep a FastReID user's own image re-id project working beside the plugin, along
DefaultTrainer's train -> evaluate -> checkpoint path (Baseline, NaiveIdentitySampler,
ReidEvaluator; tests/test_fastreid_baseline.py trains FastReID's bag-of-tricks config on CPU).

- contiguous_params_grads: `build_optimizer` flattens parameters into ContiguousParams buffers by
  default; torch >= 2's `zero_grad()` sets the buffers' grads to None, the optimiser then skips
  them, and the weights never change. Such optimisers zero their gradient buffers in place
  (FastReID's own semantics and checkpoint format kept).
- amp_trainer_cpu: `AMPTrainer` asserts CUDA in every step. Its AMP is CUDA float16 autocast, a
  speed-up only, so a model not on CUDA trains in float32, with one warning.
- ddp_cpu_device_ids: `DefaultTrainer` wraps the model in DDP with `device_ids=[local_rank]`,
  which torch rejects for a CPU model; CPU models get none.
- reid_evaluator_no_exit: `ReidEvaluator` compiles its Cython module at run time and calls
  `sys.exit(1)` when that fails. Where the module is not built, it compiles nothing and uses
  FastReID's Python ranking and ROC (the same numbers), saying so once with how to build it.
- rank_short_gallery: that Python `eval_market1501` cuts each query's CMC at `max_rank` after
  leaving out same-camera matches; on a gallery shorter than `max_rank` the curves differ in
  length and numpy raises. Each curve is padded with its last value, and AP is computed without a
  per-item loop; every other number is FastReID's, bit for bit.
- jaccard_cpu: `compute_jaccard_distance` (TEST.RERANK) searches with faiss on CUDA unless
  `search_option=3`; without CUDA, or with faiss-cpu, it uses the CPU search.
- verify_results_raises: `verify_results` (TEST.EXPECTED_RESULTS) calls `sys.exit(1)` when a
  result is off; it raises `ResultsVerificationError` instead.

Left as they are (FastReID's own limits, not today's stack's): `compute_euclidean_distance`'s
deprecated `addmm_` overload (a warning); `pin_memory=True` without an accelerator (a warning);
NaiveIdentitySampler, which loops forever with fewer identities than a batch needs; RegNet's
`load_cfg_fom_args`, which exits when given no arguments.
"""
import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import os
import sys
import warnings

import faiss
import numpy as np
import torch
from fastreid.engine import defaults
from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer
from fastreid.evaluation import rank_cylib, reid_evaluation, testing
from fastreid.solver import build as solver_build
from fastreid.utils import comm, compute_dist
from torch.nn.parallel import DistributedDataParallel

with warnings.catch_warnings():
    # rank.py and roc.py warn at import that their Cython module is missing; the evaluator says
    # it once, in the log, with how to build it (reid_evaluator_no_exit).
    warnings.filterwarnings("ignore", message="Cython r(ank|oc) evaluation")
    from fastreid.evaluation import rank, roc  # noqa: F401  (roc: imported for its warning only)

__all__ = ["ResultsVerificationError", "eval_market1501"]


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
    return os.path.dirname(os.path.abspath(rank_cylib.__file__))


def _patch_reid_evaluator():
    if "exit" not in rank_cylib.compile_helper.__code__.co_names or \
            getattr(reid_evaluation.ReidEvaluator._compile_dependencies, "_cpcl_patched", False):
        return False
    if importlib.util.find_spec("fastreid.evaluation.rank_cylib.rank_cy") is not None:
        return False  # built: FastReID compiles nothing

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
    return True


def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """FastReID's pure-Python ``eval_market1501``, with each query's CMC padded to ``max_rank``
    (its last value: the match is found by then) and AP without a Python loop."""
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
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], np.float32)
    args = (dist, np.array([1, 2]), np.array([1, 1, 2]), np.array([0, 0]), np.array([0, 1, 1]), 50)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "gallery is quite small" note
            cmc = eval_fn(*args)[0]
    except ValueError:
        return True
    return len(cmc) != 3


def _patch_rank_short_gallery():
    if rank.eval_market1501 is eval_market1501 or not _short_gallery_breaks(rank.eval_market1501):
        return False
    _rebind(rank.eval_market1501, eval_market1501)
    return True


def _patch_jaccard_cpu():
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


PATCHES = (
    ("contiguous_params_grads", _patch_contiguous_params),
    ("amp_trainer_cpu", _patch_amp_trainer),
    ("ddp_cpu_device_ids", _patch_ddp_device_ids),
    ("reid_evaluator_no_exit", _patch_reid_evaluator),
    ("rank_short_gallery", _patch_rank_short_gallery),
    ("jaccard_cpu", _patch_jaccard_cpu),
    ("verify_results_raises", _patch_verify_results),
)
