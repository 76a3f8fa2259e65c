"""FastReID's launcher on CPU-only machines, and joining a process group that torchrun or SLURM
started (cpcl_plugin/engine/launch.py decides which launch a process is part of).

- launch_gloo: `fastreid.engine.launch._distributed_worker` asserts CUDA, hard-codes NCCL and
  calls `torch.cuda.set_device`. The replacement uses gloo and no CUDA call when CUDA is absent or
  `CPCL_DEVICE=cpu` is in the environment (engine/launch.py sets it from MODEL.DEVICE before
  launching), and behaves as before otherwise.
- `join_process_group` / `leave_process_group`: torch's default process group plus FastReID's
  per-machine group (`comm._LOCAL_PROCESS_GROUP`, behind `comm.get_local_rank`), shared by that
  worker and by processes that torchrun or srun started.
"""
import importlib
import logging
import os

import torch
import torch.distributed as dist
from fastreid.utils import comm

__all__ = ["dist_backend", "join_process_group", "leave_process_group"]

# `fastreid.engine` re-exports the function `launch`, which shadows the module of that name.
_LAUNCH_MODULE = importlib.import_module("fastreid.engine.launch")


def dist_backend():
    """The process-group backend a launched worker uses: NCCL on CUDA machines, gloo otherwise."""
    if os.environ.get("CPCL_DEVICE", "").lower().startswith("cpu") or not torch.cuda.is_available():
        return "gloo"
    return "nccl"


def join_process_group(backend, init_method, world_size, rank, local_rank, machine_rank):
    """Initialise torch's default process group, then FastReID's per-machine group
    (``comm._LOCAL_PROCESS_GROUP``, behind ``comm.get_local_rank``/``get_local_size``)."""
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


def leave_process_group():
    """Destroy what `join_process_group` made (safe when nothing was joined)."""
    # FastReID caches its gloo group (the default group itself under gloo) in an lru_cache:
    # while it holds it, destroy_process_group leaves the group's gloo threads running into
    # interpreter exit, where tearing them down can abort the process ("terminate called
    # without an active exception").
    comm._get_global_gloo_group.cache_clear()
    if dist.is_initialized():
        dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args):
    """FastReID's worker, with the backend of `dist_backend()` and CUDA calls only on CUDA."""
    backend = dist_backend()
    if backend == "nccl":
        assert num_gpus_per_machine <= torch.cuda.device_count(), (
            f"--num-gpus {num_gpus_per_machine} asks for more GPUs than the "
            f"{torch.cuda.device_count()} this machine has")
    join_process_group(backend, dist_url, world_size,
                       machine_rank * num_gpus_per_machine + local_rank, local_rank, machine_rank)
    try:
        main_func(*args)
    finally:
        leave_process_group()


def _patch_launch():
    src = getattr(_LAUNCH_MODULE._distributed_worker, "__code__", None)
    if src is None or "NCCL" not in src.co_consts:
        return False
    _LAUNCH_MODULE._distributed_worker = _distributed_worker
    return True


PATCHES = (("launch_gloo", _patch_launch),)
