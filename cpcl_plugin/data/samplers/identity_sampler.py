"""P x K batches over pseudo identities (FastReID's triplet_sampler.py holds its counterparts,
which take identity labels)."""
import logging

import numpy as np

from .data_sampler import EpochPairSampler

__all__ = ["PseudoIdentitySampler"]

logger = logging.getLogger(__name__)


class PseudoIdentitySampler(EpochPairSampler):
    """P x K batches over image pseudo labels: each batch takes P groups of K pairs. A group is one
    cluster (K distinct pairs of it, repeating only when the cluster is smaller than K) or, with
    `outliers="singleton"`, K distinct outlier pairs, each its own identity; with "drop", outliers
    are left out. No group appears twice in a batch. With fewer clusters than P it falls back to
    the shuffled pass of EpochPairSampler and says so. Same batches on every rank, each rank taking
    its share of each batch; an epoch has as many batches as the shuffled pass."""

    def __init__(self, size, batch_size_per_rank, num_instances, outliers="singleton", seed=0):
        super().__init__(size, batch_size_per_rank, seed)
        self.batch_size_per_rank, self.k = batch_size_per_rank, num_instances
        self.outliers = outliers
        self.labels = None

    def set_labels(self, image_labels):
        """Per-pair image pseudo labels; None returns to shuffled batches."""
        self.labels = None if image_labels is None else np.asarray(image_labels)

    def _clusters(self):
        labels = self.labels
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        return [g for g in np.split(order, starts[1:]) if len(g) and labels[g[0]] >= 0]

    def __iter__(self):
        if self.labels is None:
            yield from super().__iter__()
            return
        clusters = self._clusters()
        p = self.batch_size_per_rank * self.world // self.k
        if len(clusters) < p:
            logger.warning(f"Only {len(clusters)} pseudo identities for P = {p} per batch: this "
                           f"epoch uses shuffled batches instead of P x K.")
            yield from super().__iter__()
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = list(clusters)
        if self.outliers == "singleton":
            outliers = rng.permutation(np.flatnonzero(self.labels < 0))
            groups += [outliers[i:i + self.k] for i in range(0, len(outliers) - self.k + 1, self.k)]
        lo = self.rank * self.batch_size_per_rank
        queue = []
        for _ in range(self.per_rank // self.batch_size_per_rank):
            if len(queue) < p:  # a fresh pass over the groups; no group twice in one batch
                queue = rng.permutation(len(groups)).tolist()
            chosen, queue = queue[:p], queue[p:]
            items = []
            for g in chosen:
                members = groups[g]
                items.extend(rng.choice(members, self.k, replace=len(members) < self.k).tolist())
            yield from items[lo:lo + self.batch_size_per_rank]
