"""PseudoLabelHook: the per-epoch pseudo-label pass of CPCL.

Before each epoch from PSEUDO.START_EPOCH: features of every unique training image and every
caption, in eval mode with test transforms, in dataset-index order -> k nearest neighbours per
modality, each rank searching its share of the rows (exchanged between all) -> Jaccard distance
per modality, each rank finding and summing the DBSCAN graph's pairs of its share of the rows ->
DBSCAN and OPLM (rank 0) -> labels sent to every rank -> prototype memory rebuilt ->
labels handed to the training set and (under PSEUDO.PK_BATCHES) the P x K sampler. The model is
back in train mode afterwards (inference_on_dataset).

Built to scale to a million pairs: features are collected in float16 (every rank holds all of
them), each rank sums only its share of the rows into the prototypes (one all-reduce combines the
shares), and the co-occurrence is sparse. Each pass logs the peak memory of every rank.

Training never reads identity labels. The one place that does is `monitoring_identities`, used
only to log how good the pseudo labels are, clearly apart from everything that trains.
"""
import hashlib
import logging
import math
import time

import numpy as np
import torch
import torch.distributed as dist
from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from ..clustering import (SearchShare, cluster, cooccurrence, knn_share, mine_outliers,
                          pseudo_label_quality, resolve_search, row_share, search_rule)
from ..clustering.oplm import label_sums, normalized_rows
from ..clustering.ranks import FailedElsewhere, one_process
from ..data.build import build_feature_loader, flatten_pairs
from ..data.datasets import build_dataset
from ..evaluation.features import extract_features
from ..utils.checkpoint import unwrap
from ..utils.memory import PeakMemory
from ..utils.progress import Progress

__all__ = ["PseudoLabelHook", "unwrap", "clustering_settings", "memory_contents"]

logger = logging.getLogger(__name__)


def clustering_settings(cfg):
    """The keyword arguments of `cluster` that PSEUDO configures (the same for both modalities)."""
    p = cfg.PSEUDO
    return dict(eps=p.EPS, min_samples=p.MIN_SAMPLES, k1=p.K1, k2=p.K2, search=p.SEARCH,
                exact_max=p.EXACT_MAX, **search_options(cfg))


def search_options(cfg):
    """The approximate search's settings (PSEUDO.IVF), as `knn_share` names them."""
    ivf = cfg.PSEUDO.IVF
    return dict(nlist=ivf.NLIST, nprobe=ivf.NPROBE, train_per_list=ivf.TRAIN_PER_LIST,
                min_recall=ivf.MIN_RECALL, max_nprobe=ivf.MAX_NPROBE, recall_rows=ivf.RECALL_ROWS)


def shared_neighbours(features, k, search, options, rank=0, world_size=1):
    """(lists, search): the (N, k) nearest-neighbour lists of `features`, on every rank, and how
    the search went (`SearchShare` without rows and lists, the same on every rank). Each rank
    searches its share of the rows (`knn_share`, on its own device) and the shares are
    exchanged. Identical to one process searching everything. A failed search on any rank, or
    shares that do not cover every row once, raise the same RuntimeError on every rank, so that
    no rank is left waiting."""
    if len(features) == 0:
        return np.zeros((0, 0), dtype=np.int64), SearchShare(None, None, search, 1.0)
    k = min(k, len(features))
    how = None
    try:
        found = knn_share(features, k, search, rank, world_size,
                          all_gather=comm.all_gather if world_size > 1 else one_process,
                          **options)
        share = (found.rows, found.lists.astype(np.int32))  # half the bytes to send
        how = found._replace(rows=None, lists=None)
    except FailedElsewhere:
        share = None  # the failing rank sends its own error
    except Exception as err:  # sent as text: every exception pickles as a string
        share = f"the neighbour search failed on rank {rank}: {err!r}"
    shares = comm.all_gather(share) if world_size > 1 else [share]
    problem = next((s for s in shares if isinstance(s, str)), None)
    lists = None
    if problem is None:
        lists = np.full((len(features), k), -1, dtype=np.int64)
        for rows, part in shares:
            lists[rows] = part
        written = np.bincount(np.concatenate([rows for rows, _ in shares]),
                              minlength=len(features))
        if (written != 1).any():
            problem = (f"the ranks' shares of the {search} neighbour search cover "
                       f"{int((written == 0).sum())} rows not at all and "
                       f"{int((written > 1).sum())} rows more than once (a bug: please "
                       f"report it with this line)")
    if problem:
        raise RuntimeError(problem)
    return lists, how


def _digest(*arrays):
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def _memory_digest(memory):
    return _digest(*[t.numpy() for t in memory.export_state().values()])


def _all_reduce_sum(array):
    """The element-wise sum of `array` over all ranks, identical on every rank (one all-reduce
    of the world group; through the GPU where the backend is NCCL, which reduces CUDA tensors
    only)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.from_numpy(array).to(device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def memory_contents(image_features, text_features, image_labels, text_labels, pair_image,
                    rank=0, world_size=1):
    """The inputs of PrototypeMemory.rebuild: (image prototypes (K_v, d), text prototypes
    (K_t, d), sparse co-occurrence (K_v, K_t)) from every image's and caption's feature and label.

    Every rank holds all the features and labels; each sums only its share of the rows (float64
    sums, features may be float16), the two sum matrices go through one all-reduce together, and
    the normalisation follows: every rank ends with the same bits. The co-occurrence needs only
    the labels, so each rank builds it alone. Call it on every rank of a `world_size` > 1 group.
    """
    image_labels, text_labels, pair_image = (np.asarray(a, dtype=np.int64) for a in
                                             (image_labels, text_labels, pair_image))
    kv, kt = int(image_labels.max(initial=-1) + 1), int(text_labels.max(initial=-1) + 1)
    # Rows [r N / W, (r + 1) N / W) of each modality (sums need no block alignment).
    images, captions = (row_share(len(y), rank, world_size, block=1)
                        for y in (image_labels, text_labels))
    sums = np.concatenate([label_sums(image_features[images], image_labels[images], kv),
                           label_sums(text_features[captions], text_labels[captions], kt)])
    if world_size > 1:
        sums = _all_reduce_sum(sums)
    return (normalized_rows(sums[:kv]), normalized_rows(sums[kv:]),
            cooccurrence(image_labels[pair_image], text_labels, kv, kt))


def monitoring_identities(cfg):
    """MONITORING ONLY: (image identities, caption identities) of DATASETS.NAMES' training
    images and captions, read from the dataset files, in training-set order. Never passed to
    anything that trains."""
    records = [r for name in cfg.DATASETS.NAMES for r in build_dataset(cfg, name).split("train")]
    image_ids = np.array([r.pid for r in records])
    return image_ids, image_ids[[i for i, _ in flatten_pairs(records)]]


class PseudoLabelHook(HookBase):

    def __init__(self, cfg):
        self.cfg = cfg
        self.image_labels = self.text_labels = None  # per unique image / per caption
        self._true_ids = None
        # MONITORING ONLY, on rank 0: per clustering epoch, {"epoch", "image": quality,
        # "text": quality, **counts}, the quality against the identities (pseudo_label_quality).
        self.quality_history = []
        self._before_oplm = None  # (image, caption) labels before OPLM, for that monitoring

    # -- the per-epoch pass ---------------------------------------------------------------------
    def before_epoch(self):
        trainer, cfg = self.trainer, self.cfg
        train_set = trainer.data_loader.dataset
        sampler = trainer.data_loader.batch_sampler.sampler
        memory = unwrap(trainer.model).memory
        if not cfg.PSEUDO.ENABLED or trainer.epoch < cfg.PSEUDO.START_EPOCH:
            train_set.set_pseudo_labels(None, None)
            sampler.set_labels(None)
            return
        start, peak = time.perf_counter(), PeakMemory()
        # float16: half the memory of the copy of every feature that each rank holds.
        text_f, image_f, image_valid = extract_features(
            trainer.model, *build_feature_loader(cfg, train_set), dtype=torch.float16)
        searched = [self._neighbours(f, unit) for f, unit in ((image_f[image_valid], "images"),
                                                              (text_f, "captions"))]
        neighbours = [lists for lists, _ in searched]
        labels, problem = None, None
        try:  # every rank: the clustering is shared (rank 0's result is the labels)
            labels = self._cluster(image_f, text_f, train_set.pair_image, image_valid,
                                   neighbours)
        except FailedElsewhere:
            pass  # the failing rank says what failed
        except Exception as err:  # every rank must reach the collective below, then fail
            problem = f"on rank {comm.get_rank()}: {err!r}"  # text: not every error pickles
        results = comm.all_gather((labels, problem)) if comm.get_world_size() > 1 else \
            [(labels, problem)]
        problem = next((p for _, p in results if p), None)
        if problem:
            raise RuntimeError(f"Pseudo-label clustering failed {problem}")
        self.image_labels, self.text_labels, stats = results[0][0]
        for name, (_, how) in zip(("image", "text"), searched):
            if how.tried and not math.isnan(how.recall):  # approximate: its measured recall
                stats[f"{name}_knn_recall"] = how.recall
        self._apply(memory, train_set, sampler, image_f, text_f)
        stats["seconds"] = time.perf_counter() - start
        self._report(stats, self._peak_memory_per_rank(peak))

    @staticmethod
    def _peak_memory_per_rank(peak):
        """[(resident GB, CUDA GB or None) of each rank], and whether the resident numbers are
        the pass's own peaks (else the processes' lifetime peaks)."""
        own = peak.gigabytes()
        per_rank = comm.all_gather(own) if comm.get_world_size() > 1 else [own]
        return per_rank, peak.since_start

    def _neighbours(self, features, unit):
        """This modality's neighbour lists and how they were searched, every rank searching its
        share and receiving all of them; logs which search ran."""
        p, start, world = self.cfg.PSEUDO, time.perf_counter(), comm.get_world_size()
        asked = resolve_search(p.SEARCH, len(features), p.EXACT_MAX)
        lists, how = shared_neighbours(features, p.K1, asked, search_options(self.cfg),
                                       comm.get_rank(), world)
        if comm.is_main_process():
            settings = ""
            if how.tried:
                measured = "recall not measured (PSEUDO.IVF.RECALL_ROWS 0)" \
                    if math.isnan(how.recall) else \
                    f"recall {how.recall:.3f} on {min(len(features), p.IVF.RECALL_ROWS)} " \
                    f"sampled rows"
                settings = (f" ({how.cells} cells, NPROBE {how.nprobe}: {measured})"
                            if how.search == "approximate" else
                            f" (the approximate search's recall stayed below "
                            f"PSEUDO.IVF.MIN_RECALL {p.IVF.MIN_RECALL} until exact search "
                            f"was cheaper)")
            logger.info(f"{how.search} kNN search over {len(features)} {unit}{settings} "
                        f"({search_rule(p.SEARCH, p.EXACT_MAX)}), "
                        f"{world} rank{'s' if world > 1 else ''}: "
                        f"{time.perf_counter() - start:.1f} s")
        return lists, how

    def _cluster(self, image_f, text_f, pair_image, image_valid, neighbours):
        """On rank 0, image and caption pseudo labels, OPLM, statistics, from every rank's
        neighbour lists (image ones over the decodable images); None on the other ranks, which
        share the clustering's work. Images that could not be decoded
        (DATASETS.SKIP_BAD_IMAGES) are outliers, never clustered nor mined."""
        p, world = self.cfg.PSEUDO, comm.get_world_size()
        kwargs = dict(clustering_settings(self.cfg), rank=comm.get_rank(), world_size=world,
                      all_gather=comm.all_gather if world > 1 else one_process)

        def cluster_with_progress(features, lists, unit):
            # Progress in the form of every long step (start and end: cluster() is one call).
            with Progress(f"clustering {len(features)} {unit}", len(features), unit,
                          enabled=comm.is_main_process()) as progress:
                labels = cluster(features, neighbours=lists, **kwargs)
                progress.update(len(features))
            return labels
        y_v = np.full(len(image_f), -1, dtype=np.int64)
        y_v[image_valid] = cluster_with_progress(image_f[image_valid], neighbours[0], "images")
        y_t = cluster_with_progress(text_f, neighbours[1], "captions")
        if not comm.is_main_process():
            return None
        stats = {"skipped_images": int((~image_valid).sum()),
                 "image_clusters": int(y_v.max(initial=-1) + 1), "image_outliers": int((y_v < 0).sum()),
                 "text_clusters": int(y_t.max(initial=-1) + 1), "text_outliers": int((y_t < 0).sum()),
                 "image_recovered": 0, "text_recovered": 0}
        self._before_oplm = None
        if p.OPLM.ENABLED:
            self._before_oplm = (y_v.copy(), y_t.copy())  # for the monitoring only
            y_v, y_t, recovered = mine_outliers(y_v, y_t, pair_image, image_f, text_f,
                                                p.OPLM.THRESHOLD)
            recovered["image_recovered"] -= int((y_v[~image_valid] >= 0).sum())
            y_v[~image_valid] = -1
            stats.update(recovered)
        return y_v, y_t, stats

    def _apply(self, memory, train_set, sampler, image_f, text_f):
        """Memory, training set and sampler take the current labels (identically on every rank)."""
        y_v, y_t = self.image_labels, self.text_labels
        memory.rebuild(*memory_contents(image_f, text_f, y_v, y_t, train_set.pair_image,
                                        comm.get_rank(), comm.get_world_size()))
        pair_a = y_v[train_set.pair_image]
        train_set.set_pseudo_labels(pair_a, y_t)
        sampler.set_labels(pair_a if self.cfg.PSEUDO.PK_BATCHES else None)

    def after_epoch(self):
        memory = unwrap(self.trainer.model).memory
        if memory.ready:  # after the epoch's momentum updates; equal on every rank
            logger.debug(f"Memory digest after epoch {self.trainer.epoch} (rank {comm.get_rank()}): "
                         f"{_memory_digest(memory)}")

    # -- reporting ------------------------------------------------------------------------------
    def _monitoring_identities(self):
        """MONITORING ONLY: monitoring_identities(cfg), read once."""
        if self._true_ids is None:
            self._true_ids = monitoring_identities(self.cfg)
        return self._true_ids

    def _report(self, stats, peak_memory):
        epoch = self.trainer.epoch
        logger.debug(f"Pseudo-label digest (rank {comm.get_rank()}, epoch {epoch}): "
                     f"{_digest(self.image_labels, self.text_labels)} memory "
                     f"{_memory_digest(unwrap(self.trainer.model).memory)}")
        if not comm.is_main_process():
            return
        line = (f"Epoch {epoch} pseudo labels ({stats['seconds']:.1f} s): images "
                f"{stats['image_clusters']} clusters, {stats['image_outliers']} outliers; captions "
                f"{stats['text_clusters']} clusters, {stats['text_outliers']} outliers; OPLM "
                f"recovered {stats['image_recovered']} images, {stats['text_recovered']} captions")
        if stats["skipped_images"]:
            line += (f"; {stats['skipped_images']} undecodable images left out as outliers "
                     f"(DATASETS.SKIP_BAD_IMAGES)")
        scalars = {f"pseudo/{k}": float(v) for k, v in stats.items()}
        per_rank, since_start = peak_memory
        line += (f"; peak memory per rank: {', '.join(f'{r:.2f}' for r, _ in per_rank)} GB"
                 + ("" if since_start else " (process peak)"))
        if per_rank[0][1] is not None:
            line += f", CUDA {', '.join(f'{c:.2f}' for _, c in per_rank)} GB"
        for rank, (resident, cuda) in enumerate(per_rank):
            scalars[f"pseudo/peak_memory_gb_rank{rank}"] = resident
            if cuda is not None:
                scalars[f"pseudo/peak_cuda_memory_gb_rank{rank}"] = cuda
        image_ids, caption_ids = self._monitoring_identities()
        history = dict(stats, epoch=epoch)
        before = self._before_oplm or (None, None)
        for name, pred, true, pre in (("image", self.image_labels, image_ids, before[0]),
                                      ("text", self.text_labels, caption_ids, before[1])):
            q = history[name] = pseudo_label_quality(pred, true)
            line += (f"\n  [monitoring, identity labels] {name} labels: pairwise precision "
                     f"{100 * q['precision']:.1f}%, recall {100 * q['recall']:.1f}%, "
                     f"ARI {q['ari']:.3f}, {q['clusters_per_identity']:.2f} clusters per "
                     f"identity, {100 * q['outlier_share']:.0f}% outliers")
            if pre is not None:
                q0 = history[f"{name}_before_oplm"] = pseudo_label_quality(pre, true)
                line += (f" (before OPLM: {100 * q0['precision']:.1f}% / "
                         f"{100 * q0['recall']:.1f}% / {q0['ari']:.3f})")
            scalars.update({f"pseudo_quality/{name}_{k}": float(v) for k, v in q.items()})
        if stats["image_clusters"] == 0 and stats["text_clusters"] == 0:
            line += "\n  Every sample is an outlier: this epoch trains the instance loss only."
        elif stats["image_clusters"] == 0 or stats["text_clusters"] == 0:
            line += "\n  One modality has no cluster: its prototype losses contribute nothing."
        elif stats["image_clusters"] == 1 and stats["text_clusters"] == 1:
            line += "\n  Everything fell into one cluster: the prototype losses carry no signal."
        logger.info(line)
        self.quality_history.append(history)
        self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)

    # -- checkpointing (FastReID's Checkpointer calls these) ---------------------------------------
    def state_dict(self):
        state = {"memory": unwrap(self.trainer.model).memory.export_state()} \
            if hasattr(self, "trainer") else {}
        if self.image_labels is not None:  # tensors, so that torch.load(weights_only) reads them
            state.update(image_labels=torch.from_numpy(self.image_labels),
                         text_labels=torch.from_numpy(self.text_labels))
        return state

    def load_state_dict(self, state):
        """Restores the labels and memory of the checkpointed epoch; the next epoch's pass
        recomputes them from the restored model, as the uninterrupted run did."""
        if "image_labels" in state:
            self.image_labels = state["image_labels"].numpy()
            self.text_labels = state["text_labels"].numpy()
        if "memory" in state:
            unwrap(self.trainer.model).memory.import_state(state["memory"])
