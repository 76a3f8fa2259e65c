"""Text-to-image retrieval metrics: pure functions of a similarity matrix and identities (as
FastReID keeps `evaluation/rank.py` apart from its evaluators).

The protocol (docs/design.md, section 2): every caption of the split is a query, every image
is in the gallery, similarity is cosine, every gallery image of the query's identity is a
positive, nothing is filtered. Ties are broken by gallery order (a stable sort), so the numbers
are deterministic. They equal FastReID's ``evaluate_rank`` given distance = -similarity with
queries at camid 0 and gallery at camid 1 (the tests check this).
"""
import logging
from collections import OrderedDict

import numpy as np
import torch

from ..utils.galleries import identity_groups
from ..utils.progress import track

__all__ = ["t2i_metrics", "positive_ranks", "average_precision", "within_groups"]

logger = logging.getLogger(__name__)


def _count_at_least(sorted_values, similarity, strictly):
    """(q, P): for each sorted positive value s_j, how many gallery items have similarity > s_j
    (`strictly`) or >= s_j. Each item is placed among the P sorted values by binary search, then
    a histogram of those places is summed from the top: O(G log P) per query, not O(G P)."""
    q, p = sorted_values.shape
    place = torch.searchsorted(sorted_values, similarity, right=not strictly)  # values below
    hist = torch.zeros(q, p + 1, dtype=torch.int64)
    hist.scatter_add_(1, place, torch.ones(1, dtype=torch.int64).expand_as(place))
    return hist.flip(1).cumsum(1).flip(1)[:, 1:]


def _positive_ranks(similarity, pos_index, num_pos):
    """1-based ranks, ascending, of each query's positives; padded entries are left at 0.

    similarity: (q, G) tensor; pos_index: (q, P) gallery indices of the positives (any padding);
    num_pos: (q,). The rank of a positive is one plus the number of gallery items a stable
    descending sort puts before it: higher similarity, or equal similarity and a lower index.
    Counting those needs no sort of the (q, G) matrix, only of the (q, P) positive values.
    """
    q, p = pos_index.shape
    pad = torch.arange(p)[None, :] >= num_pos[:, None]
    pos_sim = similarity.gather(1, pos_index).masked_fill(pad, float("inf"))  # padding sorts last
    pos_sim, perm = pos_sim.sort(dim=1)
    pos_index, pad = pos_index.gather(1, perm), pad.gather(1, perm)
    above = _count_at_least(pos_sim, similarity, strictly=True)
    level = _count_at_least(pos_sim, similarity, strictly=False)
    tied = torch.nonzero((level - above > 1) & ~pad)  # another item has exactly this value: rare
    for i, j in tied.tolist():
        above[i, j] += int((similarity[i, :pos_index[i, j]] == pos_sim[i, j]).sum())
    ranks = (above + 1).masked_fill(pad, torch.iinfo(torch.int64).max)
    ranks = ranks.sort(dim=1).values
    return ranks.masked_fill(ranks == torch.iinfo(torch.int64).max, 0)


def t2i_metrics(similarity, query_pids, gallery_pids, ks=(1, 5, 10), chunk_elements=1 << 24):
    """R@k for k in `ks`, mAP and mINP, in percent, of a (num_query, num_gallery) similarity.

    Queries whose identity has no gallery image are left out (and logged), as FastReID does.
    Only the ranks of the positives are computed (`_positive_ranks`), for chunks of about
    `chunk_elements` similarities, so memory stays small beside the similarity matrix itself.
    """
    sim = torch.as_tensor(np.asarray(similarity))
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    if sim.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"similarity has shape {tuple(sim.shape)}, but there are "
                         f"{len(query_pids)} query and {len(gallery_pids)} gallery ids.")
    # Gallery indices grouped by identity, ascending within each identity.
    ids, gallery_code = np.unique(gallery_pids, return_inverse=True)
    counts = np.bincount(gallery_code, minlength=len(ids))
    grouped = np.argsort(gallery_code, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    code = np.clip(np.searchsorted(ids, query_pids), 0, max(len(ids) - 1, 0))
    num_pos = np.where((len(ids) > 0) & (ids[code] == query_pids), counts[code], 0) \
        if len(ids) else np.zeros(len(query_pids), dtype=np.int64)
    queries = np.flatnonzero(num_pos > 0)
    num_skipped = len(query_pids) - len(queries)
    if len(queries) == 0:
        raise ValueError("No query has a positive in the gallery: query and gallery identities "
                         "are disjoint.")
    queries = queries[np.argsort(num_pos[queries], kind="stable")]  # little padding per chunk
    max_rank = min(max(ks), sim.shape[1])
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    rows = max(1, chunk_elements // sim.shape[1])
    chunks = [queries[lo:lo + rows] for lo in range(0, len(queries), rows)]
    for chunk in track(chunks, f"ranking {len(queries)} queries against {sim.shape[1]} images",
                       len(queries), "queries", count=len):
        n = num_pos[chunk]
        p = int(n.max())
        offsets = np.minimum(np.arange(p)[None, :], n[:, None] - 1)
        pos_index = torch.as_tensor(grouped[starts[code[chunk]][:, None] + offsets])
        ranks = _positive_ranks(sim[torch.as_tensor(chunk)], pos_index, torch.as_tensor(n))
        ranks = ranks.numpy()
        first, last = ranks[:, 0], ranks.max(axis=1)
        cmc_sum += (first[:, None] <= np.arange(1, max_rank + 1)[None, :]).sum(axis=0)
        ap_sum += _average_precisions(ranks, n).sum()
        inp_sum += (n / last).sum()
    if num_skipped:
        logger.warning(f"{num_skipped} queries have no positive in the gallery and are left out.")
    num_valid = len(queries)
    out = OrderedDict()
    for k in ks:
        out[f"R{k}"] = 100.0 * cmc_sum[min(k, max_rank) - 1] / num_valid
    out["mAP"] = 100.0 * ap_sum / num_valid
    out["mINP"] = 100.0 * inp_sum / num_valid
    return out


def within_groups(similarity, query_pids, gallery_pids, ids_per_group):
    """A copy of the (num_query, num_gallery) `similarity` with -inf wherever query and gallery item
    are in different identity groups, so that `t2i_metrics` of it ranks each query within its own
    group's gallery and pools all queries: an item outside the query's group ranks below every
    positive and changes none of the metrics. The groups are `identity_groups` of the queries'
    identities (then any gallery-only ones), so images left out of the gallery
    (DATASETS.SKIP_BAD_IMAGES) do not move the groups' bounds."""
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    group = identity_groups(np.concatenate([query_pids, gallery_pids]), ids_per_group)
    gallery_group = np.asarray([group[p] for p in gallery_pids.tolist()])
    query_group = np.asarray([group[p] for p in query_pids.tolist()])
    similarity = np.asarray(similarity)
    out = similarity.astype(np.result_type(similarity.dtype, np.float32), copy=True)
    out[query_group[:, None] != gallery_group[None, :]] = -np.inf
    return out


def positive_ranks(order, gallery_pids, query_pid):
    """1-based ranks, ascending, of the gallery items of identity `query_pid` in `order` (gallery
    indices, best first; the whole gallery, or ranks past its end go unseen)."""
    return np.flatnonzero(np.asarray(gallery_pids)[np.asarray(order)] == query_pid) + 1


def _average_precisions(ranks, num_pos):
    """Each row's AP (a fraction) from its ascending 1-based positive ranks, (Q, P), 0 where a
    row has fewer than P positives; `num_pos` (Q,) counts them: the mean precision at each."""
    precision = np.where(ranks > 0, np.arange(1, ranks.shape[1] + 1)[None, :] /
                         np.maximum(ranks, 1), 0.0)
    return precision.sum(axis=1) / num_pos


def average_precision(ranks):
    """One query's AP in percent from the ascending 1-based ranks of all its positives, as
    t2i_metrics averages it into mAP; None for a query without positives."""
    if len(ranks) == 0:
        return None
    ranks = np.asarray(ranks, dtype=np.int64)[None, :]
    return 100.0 * float(_average_precisions(ranks, np.array([ranks.shape[1]]))[0])
