"""The training pass over pairs and the evaluation batches (FastReID's data_sampler.py has
their counterparts, TrainingSampler and InferenceSampler)."""
import numpy as np
from fastreid.utils import comm
from torch.utils.data import Sampler

__all__ = ["EpochPairSampler", "KindAwareBatchSampler"]


class EpochPairSampler(Sampler):
    """One shuffled pass over the pairs per epoch, the same permutation on every rank, each rank
    taking its own contiguous share. Seeded by (seed, epoch), so a resumed run sees the same order
    as an uninterrupted one."""

    def __init__(self, size, batch_size_per_rank, seed=0):
        self.size = size
        self.rank, self.world = comm.get_rank(), comm.get_world_size()
        self.per_rank = (size // (batch_size_per_rank * self.world)) * batch_size_per_rank
        if self.per_rank == 0:
            raise ValueError(f"The training set has {size} pairs, fewer than one batch of "
                             f"{batch_size_per_rank * self.world}; lower SOLVER.IMS_PER_BATCH.")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        start = self.rank * self.per_rank
        yield from perm[start:start + self.per_rank].tolist()

    def __len__(self):
        return self.per_rank


class KindAwareBatchSampler(Sampler):
    """Batches over this rank's contiguous share of an eval set that never mix captions and images."""

    def __init__(self, size, num_query, batch_size):
        rank, world = comm.get_rank(), comm.get_world_size()
        per_rank = (size + world - 1) // world
        start, stop = min(size, rank * per_rank), min(size, (rank + 1) * per_rank)
        # This rank's captions, then its images.
        self.ranges = ((start, min(stop, num_query)), (max(start, num_query), stop))
        self.batch_size = batch_size

    def __iter__(self):
        for lo, hi in self.ranges:
            for b in range(lo, hi, self.batch_size):
                yield list(range(b, min(b + self.batch_size, hi)))

    def __len__(self):
        return sum(max(0, -(-(hi - lo) // self.batch_size)) for lo, hi in self.ranges)
