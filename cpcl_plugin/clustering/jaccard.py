"""Sparse k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) and DBSCAN on it.

The definitions follow FastReID's dense ``fastreid.utils.compute_dist.compute_jaccard_distance``
(the cluster-contrast formulation) step by step, but every step is a sparse-matrix operation over
the N x k neighbour lists instead of a Python loop over an N x N array:

1. ``R``: k-reciprocal neighbours, j in kNN_k1(i) and i in kNN_k1(j); ``H`` the same with
   round(k1 / 2).
2. Expansion: R(i) grows by H(c) for every c in R(i) with |H(c) & R(i)| > 2/3 |H(c)|.
3. ``V[i, j] = softmax_j(-||f_i - f_j||^2)`` over the expanded set of i.
4. Query expansion: row i of V becomes the mean of the rows of its k2 nearest neighbours.
5. ``d(i, k) = 1 - m / (2 - m)`` with ``m = sum_j min(V[i, j], V[k, j])``.

Memory is O(N x nnz-per-row) instead of O(N^2): only pairs that share a column of V (distance
below 1) are stored. Arrays in, arrays out; no trainer state. The neighbour lists come from
`neighbours.knn` (exact, or approximate for large N), or are passed in (one rank's share each).
"""
import logging
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

from .neighbours import knn, resolve_search, search_rule
from .ranks import gathered, one_process

__all__ = ["jaccard_distance", "cluster", "relabel_in_order", "outliers_as_singletons",
           "EXACT_SEARCH_MAX"]

logger = logging.getLogger(__name__)

# search="auto": exact kNN up to this many rows (CUHK-PEDES' 68k captions stay exact), faiss IVF
# above it.
EXACT_SEARCH_MAX = 200_000

def _neighbour_matrix(neighbours, k):
    """Boolean CSR matrix with row i marking neighbours[i, :k]."""
    n = neighbours.shape[0]
    cols = neighbours[:, :k].ravel()
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix((np.ones(len(cols), dtype=bool), (rows, cols)), shape=(n, n))


def _reciprocal(forward):
    """j is kept in row i iff j lists i among its neighbours too."""
    return forward.multiply(forward.T).tocsr().astype(bool)


def _sampled_dots(f, pattern):
    """f_i . f_j for every stored (i, j) of the CSR `pattern`, in its order (torch's SDDMM, which
    avoids gathering two feature rows per entry)."""
    t = torch.from_numpy(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls sparse CSR "beta"; the kernel is exact
        mask = torch.sparse_csr_tensor(torch.from_numpy(pattern.indptr.astype(np.int64)),
                                       torch.from_numpy(pattern.indices.astype(np.int64)),
                                       torch.zeros(pattern.nnz), size=pattern.shape)
        return torch.sparse.sampled_addmm(mask, t, t.T, beta=0.0).values().numpy()


def _row_softmax_of_negative_sq_distance(features, pattern):
    """CSR with the pattern of `pattern`, row i holding softmax over its columns j of
    -||f_i - f_j||^2 (squared Euclidean, as FastReID computes it)."""
    pattern = pattern.tocsr()
    pattern.sort_indices()
    rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    cols = pattern.indices
    f = np.ascontiguousarray(features, dtype=np.float32)
    sq = (f * f).sum(axis=1)
    dist = sq[rows] + sq[cols] - 2 * _sampled_dots(f, pattern)
    logits = -dist
    starts = pattern.indptr[:-1]
    nonempty = np.diff(pattern.indptr) > 0
    row_max = np.full(pattern.shape[0], -np.inf, dtype=np.float32)
    row_max[nonempty] = np.maximum.reduceat(logits, starts[nonempty])
    weights = np.exp(logits - row_max[rows])
    row_sum = np.zeros(pattern.shape[0], dtype=np.float32)
    row_sum[nonempty] = np.add.reduceat(weights, starts[nonempty])
    weights /= row_sum[rows]
    return sp.csr_matrix((weights.astype(np.float32), cols.copy(), pattern.indptr.copy()),
                         shape=pattern.shape)


def _row_terms(V):
    """Per row of V, the terms of its row of V V^T: the sum of its columns' counts (a row meets
    every row sharing one of its columns)."""
    column_counts = np.bincount(V.indices, minlength=V.shape[1]).astype(np.float64)
    terms = np.zeros(V.shape[0])
    nonempty = np.diff(V.indptr) > 0
    terms[nonempty] = np.add.reduceat(column_counts[V.indices], V.indptr[:-1][nonempty])
    return terms


def _row_blocks(terms, rows, max_rows, max_terms=1 << 25):
    """(lo, hi) blocks of the rows in the slice `rows` whose product with V^T stays below about
    `max_terms` terms, at most `max_rows` rows each: at a million rows a hub's column would
    otherwise make a block's product nearly dense."""
    cumulative = np.cumsum(terms)
    blocks, lo = [], rows.start
    while lo < rows.stop:
        reached = cumulative[lo - 1] if lo else 0.0
        hi = int(np.searchsorted(cumulative, reached + max_terms, side="right"))
        hi = min(max(hi, lo + 1), lo + max_rows, rows.stop)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def _work_share(terms, rank, world_size):
    """The rows (a slice) whose candidate pairs `rank` of `world_size` finds: consecutive rows of
    about equal work (terms), so that a dense region does not leave one rank all of it."""
    cumulative = np.cumsum(terms)
    total = cumulative[-1] if len(terms) else 0.0
    cut = lambda r: 0 if r == 0 else len(terms) if r == world_size else \
        int(np.searchsorted(cumulative, total * r / world_size, side="right"))
    return slice(cut(rank), cut(rank + 1))


def _candidate_pairs(V, min_mass, max_rows=2048, rows=None, terms=None):
    """(i, k, bound) for every pair k > i, i among `rows` (a slice; default all), whose upper
    bound on m[i, k] = sum_j min(V[i, j], V[k, j]) reaches min_mass (every pair sharing a column
    when min_mass <= 0).

    min(a, b) <= sqrt(a b), so the bound is the sparse product sqrt(V) sqrt(V)^T: compiled, a
    few nanoseconds per term, and tight where the two rows agree, so that nearly every pair that
    cannot reach min_mass is ruled out however many rows share a column (dense regions, hubs).
    """
    rows = rows or slice(0, V.shape[0])
    root = V.copy()
    root.data = np.sqrt(root.data)
    root_t = root.T.tocsr()
    found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    for lo, hi in _row_blocks(_row_terms(V) if terms is None else terms, rows, max_rows):
        bound = (root[lo:hi] @ root_t).tocoo()
        i, k = bound.row.astype(np.int64) + lo, bound.col.astype(np.int64)
        # Slack for float rounding in the bound: it must never drop a pair that qualifies.
        keep = (k > i) & (bound.data >= min_mass - 1e-5)
        found.append((i[keep], k[keep], bound.data[keep]))
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _exact_mass(V, i, k, chunk=1 << 18):
    """m[i_p, k_p] = sum_j min(V[i_p, j], V[k_p, j]) for each pair p: the elementwise minimum of
    the two sparse rows (compiled), in chunks of pairs so that the gathered rows stay small."""
    out = [np.asarray(V[i[c:c + chunk]].minimum(V[k[c:c + chunk]]).sum(axis=1)).ravel()
           for c in range(0, len(i), chunk)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _symmetric(n, i, k, values, diagonal):
    """CSR (n, n) with values at (i, k) and (k, i), and `diagonal` on the diagonal (stored even
    where 0)."""
    rows = np.concatenate([np.arange(n), i, k])
    cols = np.concatenate([np.arange(n), k, i])
    vals = np.concatenate([diagonal, values, values]).astype(np.float32)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def _shared_mass(V, min_mass=0.0):
    """Sparse symmetric m[i, k] = sum_j min(V[i, j], V[k, j]) for every pair with m >= min_mass
    (every pair sharing a column when min_mass <= 0), the diagonal included: the candidates of
    `_candidate_pairs`, summed exactly."""
    V = _sorted_csr(V)
    i, k, _ = _candidate_pairs(V, min_mass)
    mass = _exact_mass(V, i, k)
    ok = mass >= min_mass if min_mass > 0 else mass > 0
    return _symmetric(V.shape[0], i[ok], k[ok], mass[ok], np.asarray(V.sum(axis=1)).ravel())


def _dbscan_pairs(V, eps, min_samples, rank=0, world_size=1, all_gather=one_process):
    """[(i, k, mass) of each rank] of the pairs of a sparse symmetric graph on which
    DBSCAN(min_samples), with the diagonal added, gives exactly the labels it gives on every pair
    with m >= min_mass; masses are lower bounds where not summed. It leaves out pairs that cannot
    change those labels, without summing them. With several ranks (every one holding all of V),
    each finds and sums the pairs of its share of the rows.

    DBSCAN's labels depend only on which points are core (at least min_samples neighbours,
    itself included), on the connected components of the cores, and on the neighbours of the
    other points. So once some pairs are known to qualify, a pair of two points that are core
    on known pairs alone and already connected through known pairs needs no sum. Pairs become
    known in two ways: rows of V are probability vectors, so sum_j min = 1 - total variation
    >= 1 - sqrt(1 - b^2) for the bound b of `_candidate_pairs` (Le Cam), and those above need no
    sum; then each point's `min_samples + 2` candidates of highest bound are summed first. Every
    other candidate is summed unless it can be skipped. In dense regions, where most pairs
    qualify, this skips most of the summing. A skipped pair changes no core, no component of
    the cores and no link between a core and a border point, which is all that sklearn's labels
    read (it starts a cluster at each unlabelled core in index order, and each cluster claims its
    unlabelled border points).
    """
    n = V.shape[0]
    min_mass = _min_mass(eps)
    mine = {}

    def known_pairs():
        mine["V"] = V_ = _sorted_csr(V)
        terms = _row_terms(V_)
        i, k, bound = _candidate_pairs(V_, min_mass, rows=_work_share(terms, rank, world_size),
                                       terms=terms)
        mass = 1.0 - np.sqrt(np.clip(1.0 - bound.astype(np.float64) ** 2, 0.0, None))
        sure = mass >= min_mass + 1e-4  # slack: rows sum to 1 only to float precision
        first = ~sure & _best_of_each_row(i, bound, min_samples + 2)
        mass[first] = _exact_mass(V_, i[first], k[first])
        known = sure | (first & _within(mass, eps))
        mine.update(i=i, k=k, mass=mass, sure=sure, first=first, known=known)
        return np.bincount(i[known], minlength=n) + np.bincount(k[known], minlength=n)
    degree = 1 + np.sum(gathered(all_gather, known_pairs), axis=0)
    core = degree >= min_samples

    def linked_pairs():
        i, k, known = mine["i"], mine["k"], mine["known"]
        linked = known & core[i] & core[k]
        return i[linked], k[linked]
    linked = gathered(all_gather, linked_pairs)

    def kept_pairs():
        i, k, mass = mine["i"], mine["k"], mine["mass"]
        li, lk = (np.concatenate(parts) for parts in zip(*linked))
        _, component = connected_components(
            sp.csr_matrix((np.ones(len(li), np.int8), (li, lk)), shape=(n, n)), directed=False)
        rest = ~mine["sure"] & ~mine["first"] & ~(core[i] & core[k] &
                                                  (component[i] == component[k]))
        mass[rest] = _exact_mass(mine["V"], i[rest], k[rest])
        keep = mine["known"] | (rest & _within(mass, eps))
        return i[keep], k[keep], mass[keep]
    return gathered(all_gather, kept_pairs)


def _within(mass, eps):
    """Whether pairs of these masses are DBSCAN neighbours: their distance as stored (float32)
    and as sklearn compares it, so that no pair counts here that sklearn would not count."""
    return _distance(mass).astype(np.float64) <= eps


def _best_of_each_row(i, bound, m):
    """Mask of the pairs that are among the m of highest bound of their row i (the pairs come
    grouped by i, as `_candidate_pairs` gives them)."""
    # By row, then highest bound first: bounds lie in [0, 1 + rounding], so one float64 key
    # (row + 0.5 - bound / 4) orders both (an argsort several times faster than a lexsort).
    # Stable: equal bounds keep the product's order, so the choice does not depend on the shares.
    order = np.argsort(i + (0.5 - bound.astype(np.float64) / 4), kind="stable")
    starts = np.searchsorted(i, i)  # the first pair of each pair's row
    chosen = np.zeros(len(i), dtype=bool)
    chosen[order[np.arange(len(i)) - starts < m]] = True
    return chosen


def _sorted_csr(V):
    V = V.tocsr().astype(np.float32)
    V.sort_indices()
    return V


def _distance(mass):
    """d = 1 - m / (2 - m), float32."""
    return np.clip(1.0 - mass / (2.0 - mass), 0.0, 1.0).astype(np.float32)


def _mass_to_distance(shared):
    """`_distance` in place on a CSR of masses."""
    shared.data = _distance(shared.data)
    # Explicit zeros (the diagonal) stay stored: they mean "distance 0", not "absent".
    return shared


def _min_mass(max_distance):
    """d = 1 - m / (2 - m) <= max_distance  <=>  m >= 2 (1 - max_distance) / (2 - max_distance);
    a hair of slack keeps pairs that float rounding puts exactly on the boundary."""
    return 0.0 if max_distance >= 1 else \
        max(0.0, 2 * (1 - max_distance) / (2 - max_distance) - 1e-6)


def jaccard_distance(features, k1=30, k2=6, max_distance=1.0, neighbours=None):
    """Sparse k-reciprocal Jaccard distance between the rows of `features` (N, d), float32 or
    float16.

    Returns a CSR matrix holding every pair at distance <= `max_distance` (the diagonal, at 0,
    included); with the default 1.0, every pair below 1, absent pairs being at distance 1.
    DBSCAN needs only pairs within eps: passing max_distance=eps keeps far fewer pairs and skips
    most of the work. `neighbours` may pass precomputed `knn(features, k1)` (exact by default).
    """
    features = np.asarray(features)
    if features.shape[0] == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    V = _expanded_weights(features, k1, k2, neighbours)
    return _mass_to_distance(_shared_mass(V, _min_mass(max_distance)))


def _expanded_weights(features, k1, k2, neighbours=None):
    """Steps 1-4 of the module docstring: the sparse rows V, each a probability vector."""
    n = features.shape[0]
    k1 = min(k1, n)
    if neighbours is None:
        neighbours = knn(features, k1)
    # FastReID searches k1 neighbours and slices [:k1 + 1] (so k1 columns), and [:k1/2 + 1].
    k_half = min(int(np.around(k1 / 2)) + 1, k1)
    R = _reciprocal(_neighbour_matrix(neighbours, k1))
    H = _reciprocal(_neighbour_matrix(neighbours, k_half))

    H_size = np.asarray(H.sum(axis=1)).ravel()
    overlap = (R.astype(np.float32) @ H.T.astype(np.float32)).multiply(R).tocsr()
    overlap.eliminate_zeros()
    rows = np.repeat(np.arange(n), np.diff(overlap.indptr))
    keep = overlap.data > (2.0 / 3.0) * H_size[overlap.indices]
    S = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32),
                       (rows[keep], overlap.indices[keep])), shape=(n, n))
    expanded = (R.astype(np.float32) + S @ H.astype(np.float32)).astype(bool)
    V = _row_softmax_of_negative_sq_distance(features, expanded)

    if k2 != 1:
        k2 = min(k2, neighbours.shape[1])  # FastReID averages over the columns that exist
        Q = _neighbour_matrix(neighbours, k2).astype(np.float32) / k2
        V = (Q @ V).tocsr()
    return V


def cluster(features, eps=0.6, min_samples=4, k1=30, k2=6, search="auto", neighbours=None,
            exact_max=EXACT_SEARCH_MAX, rank=0, world_size=1, all_gather=one_process,
            **approximate):
    """Pseudo labels of `features` (N, d): DBSCAN on the sparse Jaccard distance; -1 = outlier.

    Args:
        search: how the k1 nearest neighbours are found: "exact", "approximate" (faiss IVF; its
            `nlist`, `nprobe`, `train_per_list` go in **approximate, see `neighbours.knn`), or
            "auto": exact up to `exact_max` rows, approximate above. Logged.
        neighbours: the (N, k1) lists already found (e.g. gathered from every rank's share);
            `search` is then not run.
        rank, world_size, all_gather: to cluster with several ranks (ranks.py), each holding all
            the features and `neighbours`: each finds and sums the DBSCAN graph's pairs of its
            share of the rows, rank 0 runs DBSCAN, and every rank returns its labels, the labels
            of one process. A failure on any rank is raised on every rank.

    Labels are numbered 0..K-1 in order of first appearance, so the same partition always gets
    the same labels.
    """
    n = len(features)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if neighbours is None:
        if world_size > 1:
            raise ValueError("clustering with several ranks takes every rank's neighbour lists "
                             "(engine/pseudo_labels.py: shared_neighbours)")
        start = time.perf_counter()
        how = resolve_search(search, n, exact_max)
        neighbours = knn(features, k1, how, **approximate)
        logger.info(f"kNN of {n} rows: {how} search ({search_rule(search, exact_max)}), "
                    f"{time.perf_counter() - start:.1f} s")
    # Every step between two collectives runs inside gathered(), so that a failure on one rank
    # reaches the others before they wait in the next collective.
    weights = {}

    def expand():  # every rank: each needs the whole of V (its pairs reach every row)
        weights["V"] = _expanded_weights(features, k1, k2, neighbours)
    gathered(all_gather, expand)
    pairs = _dbscan_pairs(weights["V"], eps, min_samples, rank, world_size, all_gather)

    def labels_of_rank0():
        if rank != 0:
            return None
        i, k, mass = (np.concatenate(parts) for parts in zip(*pairs))
        graph = _mass_to_distance(_symmetric(n, i, k, mass, np.ones(n)))
        # sklearn treats stored entries as the neighbourhood graph: absent pairs are never
        # neighbours (pairs left out by _dbscan_pairs cannot change the labels; the others are
        # beyond eps).
        return relabel_in_order(DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
                                .fit_predict(graph))
    return gathered(all_gather, labels_of_rank0)[0]


def relabel_in_order(labels):
    """Renumber non-negative labels 0..K-1 by first appearance; -1 stays -1."""
    labels = np.asarray(labels)
    out = np.full(len(labels), -1, dtype=np.int64)
    mask = labels >= 0
    _, first, inverse = np.unique(labels[mask], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    out[mask] = rank[inverse]
    return out


def outliers_as_singletons(labels):
    """Labels with each outlier (-1) given a cluster of its own: how partitions with DBSCAN's
    noise are compared (lumping the noise into one cluster would let it dominate an index)."""
    labels = np.asarray(labels)
    return np.where(labels >= 0, labels, labels.max(initial=0) + 1 + np.arange(len(labels)))
