"""Today's Python, torch and numpy under FastReID 1.4.0 (written for Python 3.8, torch 1.13 and
numpy < 1.24). These patches run before any FastReID module is imported: FastReID fails to import
without the first three. Each does nothing where the stack is already fine.

- collections_abc_aliases: `fastreid.data.build` and `fastreid.evaluation.testing` import
  `Mapping` from `collections`; the ABC aliases left it in Python 3.10.
- torch_six: `fastreid.data.build` imports `string_classes` from `torch._six`, removed in torch
  2.0; a stand-in module provides the names FastReID uses.
- numpy_bool: `fastreid.evaluation.rank` uses `np.bool`, removed in numpy 1.24 (numpy 2 has it
  again; then nothing is patched).
- typed_storage_warning: FastReID's ToTensor reads images through `torch.ByteStorage`, which
  torch 2 deprecates with one warning per image.
- cuda_home_warning: FastReID's `collect_env_info` imports `torch.utils.cpp_extension`, which
  warns "No CUDA runtime is found" on CPU-only machines with a CUDA toolkit folder.
"""
import collections
import collections.abc
import importlib.util
import logging
import sys
import types
import warnings

import numpy as np
import torch


def _patch_collections():
    names = ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable")
    missing = [n for n in names if not hasattr(collections, n)]
    for n in missing:
        setattr(collections, n, getattr(collections.abc, n))
    return bool(missing)


def _patch_torch_six():
    if "torch._six" in sys.modules or importlib.util.find_spec("torch._six") is not None:
        return False
    six = types.ModuleType("torch._six")
    six.string_classes = (str, bytes)
    six.int_classes = int
    six.container_abcs = collections.abc
    six.inf = float("inf")
    sys.modules["torch._six"] = six
    torch._six = six
    return True


def _patch_numpy_bool():
    if "bool" in np.__dict__:
        return False
    np.bool = bool
    return True


def _quiet_typed_storage_warning():
    # FastReID's ToTensor uses torch.ByteStorage, deprecated in torch 2: one warning per image.
    if not hasattr(torch, "TypedStorage"):
        return False
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
    return True


def _quiet_cuda_home_warning():
    # FastReID's collect_env_info (run by default_setup) imports torch.utils.cpp_extension, which
    # warns "No CUDA runtime is found" on every CPU-only machine that has a CUDA toolkit folder.
    if torch.cuda.is_available():
        return False
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return True


PATCHES = (
    ("collections_abc_aliases", _patch_collections),
    ("torch_six", _patch_torch_six),
    ("numpy_bool", _patch_numpy_bool),
    ("typed_storage_warning", _quiet_typed_storage_warning),
    ("cuda_home_warning", _quiet_cuda_home_warning),
)
