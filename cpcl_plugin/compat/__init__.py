"""The one place that adapts FastReID 1.4.0 (PyPI; JDAI-CV's code of early 2023) to today's
Python, torch and numpy and to CPU-only machines; nothing else in the project touches FastReID's
internals. The modules, by what their patches serve (each lists its patches and why):

- stack.py: today's Python/torch/numpy, applied here before any FastReID module is imported;
- loop.py: FastReID's training loop and data loader on CPU and torch 2;
- launching.py: FastReID's launcher on CPU (gloo), and joining torchrun's or SLURM's group;
- reid_projects.py: a FastReID user's own re-id project (Baseline, ReidEvaluator) beside the plugin;
- writers.py: per-scalar TensorBoard and metrics.json writers, used in place of FastReID's;
- registries.py: what FastReID's registries hold, and the backbone depths its builders accept.

Every patch is feature-detected and does nothing where FastReID or the stack is already fine;
`applied()` lists those that took effect. `apply()` runs from ``import cpcl_plugin``.
"""
from . import stack

_APPLIED = [name for name, patch in stack.PATCHES if patch()]

# FastReID imports only from here on, with the stack patched.
from . import launching, loop, registries, reid_projects, writers  # noqa: E402
from .launching import dist_backend, join_process_group, leave_process_group  # noqa: E402
from .registries import backbone_depths, registry_names  # noqa: E402
from .reid_projects import ResultsVerificationError, eval_market1501  # noqa: E402

__all__ = ["apply", "applied", "dist_backend", "join_process_group", "leave_process_group",
           "registry_names", "backbone_depths", "ResultsVerificationError", "eval_market1501"]

_PATCHES = loop.PATCHES + launching.PATCHES + reid_projects.PATCHES
_DONE = False


def applied():
    """Names of the patches that took effect in this process."""
    return list(_APPLIED)


def apply():
    """Apply every patch that is needed (the stack's are in already); safe to call again."""
    global _DONE
    if not _DONE:
        _APPLIED.extend(name for name, patch in _PATCHES if patch())
        _DONE = True
    return applied()
