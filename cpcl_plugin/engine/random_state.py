"""Every random state that shapes the rest of a run, saved with each checkpoint so that a resumed
run continues exactly as the uninterrupted one would have.

What draws random numbers after a checkpoint: the training augmentation (flip and crop draw from
torch, random erasing from Python's `random`), the base seed that each DataLoader iterator draws
from torch (each worker seeds Python, numpy and torch from it), and anything using numpy's global
generator. The training sampler is seeded by (its seed, epoch): its seed is SEED, or with a
negative SEED one drawn at the start of the run, so it is saved too. Each rank has its own
generators (seeded SEED + rank), so every rank's states are gathered into rank 0's checkpoint.
"""
import random

import numpy as np
import torch
from fastreid.utils import comm

__all__ = ["RandomStates"]


def _this_process_states():
    # numpy's key array travels as a tensor: checkpoints are read with torch.load(weights_only).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            # Only where this process uses CUDA: asking would initialise it in a CPU run.
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def _restore(states):
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RandomStates:
    """A checkpointable (state_dict / load_state_dict) holding every rank's generator states as
    they were at the last `capture()`, which all ranks call together before a checkpoint, and the
    seed of the training `sampler` (restored into it on load). `restored` tells whether a loaded
    checkpoint had them."""

    def __init__(self, sampler):
        self.sampler = sampler
        self._states = None
        self.restored = False

    def capture(self):
        own = _this_process_states()
        self._states = comm.all_gather(own) if comm.get_world_size() > 1 else [own]

    def state_dict(self):
        return {"ranks": self._states if self._states is not None else [_this_process_states()],
                "sampler_seed": int(self.sampler.seed)}

    def load_state_dict(self, state):
        self.sampler.seed = int(state["sampler_seed"])
        ranks = state["ranks"]
        if len(ranks) != comm.get_world_size():
            return  # each process keeps its own seed; `restored` stays False (the trainer says so)
        _restore(ranks[comm.get_rank()])
        self._states = ranks
        self.restored = True
