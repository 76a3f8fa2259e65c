"""k nearest neighbours for the pseudo-label pass: exact or approximate, over every row or over
one rank's share of the rows. Arrays in, arrays out; no trainer state, no process group.

- Exact: blocked matrix products in torch (on CUDA when present), a running top-k per row. The k
  neighbours of a row are the first k under one total order (larger score first, then smaller
  index), so that ties (duplicate captions are common) resolve the same way however the rows are
  shared out, and a share of the rows gets exactly the lists the whole computation gives them.
- Approximate: an inverted file (IVF): faiss's k-means cuts the rows into `nlist` cells; the
  rows of a cell are scored against the rows of the `nprobe` cells whose centres are nearest to
  that cell's centre, one blocked matrix product per cell. Scanning cell by cell (instead of
  faiss's IndexIVFFlat, query by query) keeps the work in BLAS: on this project's 2-core
  machine, whose faiss-cpu wheel loads without AVX2, IndexIVFFlat had not finished 200k rows
  after 8 minutes (cores shared with other work); the cell-by-cell scan takes 38 s on free ones.
  The far end of long lists (k1 = 30 where identities have ~6 members) comes from the scanned
  cells rather than from every row, which changes some labels: docs/benchmarks.md measures how
  many.
- The approximate search measures its own recall: for a random sample of rows (`recall_rows`, one
  matrix product against every row), the (k - 1)-th best exact score among the other rows, and how
  many of the other rows in the approximate lists score at least that (ties count as found). Below
  `min_recall` it scans twice the cells (at most `max_nprobe`) and measures again, until the target
  is met, or doubling would multiply more pairs than the exact search (which then runs, whatever
  the cap: it costs less than the next step would), or `max_nprobe` is reached (one warning says
  so, and what to set).

With several processes, each computes a share (`knn_share`): whole blocks of rows for the exact
search, whole cells for the approximate one, and each share multiplies exactly the blocks one
process multiplies, in the same order, so the lists come out bit-identical. The approximate
search's ranks meet through `all_gather` (ranks.py): rank 0 alone trains the k-means and the
others receive its centres (the same cells by construction), each rank assigns its block-aligned
share of the rows to cells, and the sampled recall is summed over the ranks, so that every rank
widens alike. Every row's own index comes first in its list (duplicates would otherwise
tie with it).
"""
import logging
import math
import time
from typing import NamedTuple

import faiss
import numpy as np
import torch

from .ranks import gathered, one_process

__all__ = ["SEARCHES", "knn", "knn_share", "resolve_search", "row_share", "ivf_lists",
           "search_rule", "sampled_recall", "SearchShare", "BLOCK"]

logger = logging.getLogger(__name__)

SEARCHES = ("auto", "exact", "approximate")
BLOCK = 2048  # rows per matrix product; shares of rows start on multiples of it (see row_share)


def resolve_search(search, n, exact_max):
    """"exact" or "approximate" for `search` over `n` rows: "auto" is exact up to `exact_max`."""
    if search not in SEARCHES:
        raise ValueError(f"search {search!r} is not one of {', '.join(SEARCHES)}")
    if search == "auto":
        return "exact" if n <= exact_max else "approximate"
    return search


def search_rule(search, exact_max):
    """How `search` was chosen, for a log line: PSEUDO.SEARCH's value, with the row limit only
    where "auto" applies it."""
    return f"PSEUDO.SEARCH 'auto': exact up to PSEUDO.EXACT_MAX {exact_max} rows" \
        if search == "auto" else \
        f"PSEUDO.SEARCH {search!r}"


def row_share(n, rank, world_size, block=BLOCK):
    """The rows (a slice) whose neighbours `rank` of `world_size` computes: whole blocks of
    `block` rows, spread as evenly as whole blocks allow. Block-aligned shares make every matrix
    product the same shape as in a single process, hence bit-identical scores."""
    blocks = math.ceil(n / block)
    lo, hi = (blocks * rank) // world_size, (blocks * (rank + 1)) // world_size
    return slice(min(n, lo * block), min(n, hi * block))


def ivf_lists(n, nlist=0):
    """The number of IVF cells for `n` rows: `nlist` if set, else about 2 sqrt(n) (500 rows per
    cell at a million), never more than n / 39 (faiss wants 39 training rows a cell)."""
    if nlist > 0:
        return max(1, min(nlist, n))
    return max(1, min(int(round(2 * math.sqrt(n))), n // 39))


def knn(features, k, search="exact", **options):
    """Indices (N, k), int64, of the k nearest neighbours by L2 distance (cosine for unit
    vectors) of every row of `features` (N, d) among all N, each row's own index first.
    `search` is "exact" or "approximate" (resolve "auto" with `resolve_search`); `options` as
    for `knn_share`."""
    return knn_share(features, k, search, 0, 1, **options).lists


class SearchShare(NamedTuple):
    """One rank's share of a neighbour search: `rows` (m,) int64 ascending, their `lists` (m, k),
    and how the search went (the same on every rank): `search` ("exact", or "approximate";
    an approximate request that found exact search cheaper says "exact"), `recall` (the
    approximate lists' measured recall@k, 1.0 for exact ones), `nprobe` (cells scanned per cell),
    `cells`, and `tried`: [(nprobe, recall)] of every approximate scan."""
    rows: np.ndarray
    lists: np.ndarray
    search: str
    recall: float
    nprobe: int = 0
    cells: int = 0
    tried: tuple = ()


def knn_share(features, k, search, rank, world_size, nlist=0, nprobe=8, train_per_list=64,
              min_recall=0.95, max_nprobe=64, recall_rows=1000, all_gather=one_process,
              device=None, block=BLOCK):
    """The neighbour lists of the share of rows that `rank` of `world_size` computes, as a
    `SearchShare`. Concatenated over the ranks and put in row order, the shares' lists give
    exactly `knn(features, k, search)`.

    Args:
        features: (N, d) float32 or float16 (used in float32 block by block).
        k: neighbours per row, at most N.
        search: "exact" or "approximate".
        nlist, nprobe, train_per_list: the approximate search's cells (0 = `ivf_lists(N)`),
            cells scanned per cell at first, and k-means training rows per cell.
        min_recall, max_nprobe, recall_rows: the approximate search's target recall (the
            share of each sampled row's k - 1 nearest other rows that its list holds), the most
            cells per cell it scans to reach it, and the rows it measures recall on (0 = none;
            the target is then not checked).
        all_gather: with `world_size` > 1, for the approximate search, the collective of
            ranks.py (the list of every rank's object).
        device: torch device of the matrix products (default CUDA when available, else CPU).
        block: rows per matrix product.
    """
    n = len(features)
    k = min(k, n)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if search == "exact":
        share = row_share(n, rank, world_size, block)
        return SearchShare(np.arange(share.start, share.stop),
                           _exact(_Rows(features, device), k, share, block), "exact", 1.0)
    if search == "approximate":
        if world_size > 1 and all_gather is one_process:
            raise ValueError("an approximate search shared by several ranks needs their "
                             "all_gather (they share the k-means and the recall)")
        return _approximate(features, device, k, rank, world_size, nlist, nprobe,
                            train_per_list, block, min_recall, max_nprobe, recall_rows,
                            all_gather)
    raise ValueError(f"search {search!r} must be 'exact' or 'approximate' here")


class _Rows:
    """The features, handed out as float32 blocks on the search's device; `score` turns dot
    products into a ranking score: argmin ||a - b||^2 = argmax (a . b - |b|^2 / 2), and for
    unit vectors (CLIP features) the second term is a constant and is skipped."""

    def __init__(self, features, device):
        self.x, self.device, self.n = torch.from_numpy(np.ascontiguousarray(features)), device, \
            len(features)
        self.unit = _is_unit(features)
        self.half_sq = None if self.unit else \
            0.5 * (self.x.float() ** 2).sum(dim=1).to(device)

    def take(self, rows):
        """Rows (a slice or an index tensor) as float32 on the device."""
        return self.x[rows].to(self.device).float()

    def score(self, dots, columns):
        return dots if self.unit else dots - self.half_sq[None, columns]


def _is_unit(x):
    """True when every row has norm 1 (CLIP features): then dot products rank like distances."""
    for lo in range(0, len(x), 65536):  # in chunks: no float32 copy of float16 features
        chunk = np.asarray(x[lo:lo + 65536], dtype=np.float32)
        if not np.allclose(np.einsum("ij,ij->i", chunk, chunk), 1.0, atol=2e-3):
            return False
    return True


def _in_total_order(scores, indices):
    """Each row's candidates sorted by (score descending, index ascending)."""
    by_index = indices.argsort(dim=1)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), indices.gather(1, by_score)


def _first_k(scores, k, indices=None, offset=0):
    """Per row, the k best candidates under (score descending, index ascending), in no particular
    order, as (scores, indices); the candidates' indices are `indices`, or offset + column.
    topk's choice among values tied at the k-th place is arbitrary: the rows where the (k+1)-th
    best equals the k-th are redone in the total order."""
    kk = min(k, scores.shape[1])
    top = scores.topk(min(kk + 1, scores.shape[1]), dim=1)
    values, chosen = top.values[:, :kk], top.indices[:, :kk]
    chosen = indices.gather(1, chosen) if indices is not None else chosen + offset
    if top.values.shape[1] > kk:
        crossing = top.values[:, kk] == top.values[:, kk - 1]
        if bool(crossing.any()):
            redo = crossing.nonzero().squeeze(1)
            ids = indices[redo] if indices is not None else \
                offset + torch.arange(scores.shape[1]).expand(len(redo), -1)
            s, i = _in_total_order(scores[redo], ids.to(scores.device))
            values[redo], chosen[redo] = s[:, :kk], i[:, :kk]
    return values, chosen


def _exact(x, k, rows, block):
    """The lists of the rows in the slice `rows` (block-aligned), under the total order."""
    n, device = x.n, x.device
    lo, hi = rows.start, rows.stop
    best_score = torch.full((hi - lo, k), -float("inf"), device=device)
    best_index = torch.full((hi - lo, k), -1, dtype=torch.int64, device=device)

    def merge(a, scores, b):
        """Rows a.. keep their k best of the running lists and these scores (columns b..)."""
        r = slice(a - lo, a - lo + scores.shape[0])
        values, indices = _first_k(scores, k, offset=b)
        best_score[r], best_index[r] = _first_k(torch.cat([best_score[r], values], dim=1), k,
                                                torch.cat([best_index[r], indices], dim=1))

    for a in range(lo, hi, block):
        xa = x.take(slice(a, a + block))
        for b in range(0, n, block):
            if lo <= b < a:
                continue  # done when a and b were swapped (both rows of this share)
            if b < a:  # one process multiplies these blocks as (b, a): the same product here
                merge(a, x.score((x.take(slice(b, b + block)) @ xa.T).T.contiguous(),
                                 slice(b, b + block)), b)
                continue
            dots = xa @ x.take(slice(b, b + block)).T
            s = x.score(dots.clone() if b == a else dots, slice(b, b + block))
            if b == a:
                _own_first(s)
            merge(a, s, b)
            if b > a and b < hi:  # the same products, read by column, serve the rows of block b
                merge(b, x.score(dots.T.contiguous(), slice(a, a + block)), a)
    return _in_total_order(best_score, best_index)[1].cpu().numpy()


def _own_first(scores, columns=None):
    """Each query row's own column scores +inf (exact duplicates would tie with it): the
    diagonal, or where `columns` (per row) points."""
    i = torch.arange(scores.shape[0], device=scores.device)
    scores[i, i if columns is None else columns] = float("inf")
    return scores


def sampled_recall(features, rows, lists, sample, block=BLOCK, device=None):
    """(found, asked): over the rows of `sample` that are among `rows` (ascending, with their
    neighbour `lists` (m, k), each row's own index among them), how many of the listed other rows
    score at least the row's (k - 1)-th best score among all other rows of `features` (ties count
    as found), and k - 1 per such row. found / asked is the recall; summed over the ranks'
    shares, that of the whole search."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return _sampled_hits(_Rows(features, device), rows, lists, sample, block)


def _sampled_hits(x, rows, lists, sample, block, cache=None, chunk=256):
    """`sampled_recall` on `_Rows`; `cache` (a dict) keeps the exact scores between calls over
    the same sampled rows (the search widens without changing which rows a rank owns)."""
    at = np.searchsorted(rows, sample)
    mine = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == sample) if len(rows) else \
        np.zeros(len(sample), dtype=bool)
    queries, listed = sample[mine], lists[at[mine]]
    k = lists.shape[1]
    if len(queries) == 0 or k < 2:
        return 0.0, 0.0
    cache = {} if cache is None else cache
    if not np.array_equal(cache.get("queries"), queries):
        cache["queries"], cache["kth"] = queries, torch.cat(
            [_kth_scores(x, torch.from_numpy(queries[c:c + chunk]), k, block)
             for c in range(0, len(queries), chunk)])
    found = 0
    for c in range(0, len(queries), chunk):  # in chunks: queries x k x d floats at a time
        q = torch.from_numpy(queries[c:c + chunk])
        neighbours = torch.from_numpy(listed[c:c + chunk]).to(x.device)
        scores = torch.einsum("qd,qkd->qk", x.take(q), x.take(neighbours.reshape(-1)).reshape(
            len(q), k, -1))
        if not x.unit:
            scores = scores - x.half_sq[neighbours]
        scores[neighbours == q.to(x.device)[:, None]] = -float("inf")  # itself is no neighbour
        kth = cache["kth"][c:c + chunk, None]
        # The two products sum in different orders: a hair of slack for rounding.
        found += int((scores >= kth - 1e-5 * (1 + kth.abs())).sum())
    return float(found), float(len(queries) * (k - 1))


def _kth_scores(x, queries, k, block):
    """Per query row, its k-th best score among all rows, its own row first (+inf): the
    (k - 1)-th best among the others."""
    xq = x.take(queries)
    best = torch.full((len(queries), k), -float("inf"), device=x.device)
    for b in range(0, x.n, block):
        s = x.score(xq @ x.take(slice(b, b + block)).T, slice(b, b + block))
        own = ((queries >= b) & (queries < b + block)).nonzero().squeeze(1)
        s[own.to(x.device), (queries[own] - b).to(x.device)] = float("inf")
        best = torch.cat([best, s], dim=1).topk(k, dim=1).values
    return best[:, -1]


def _approximate(features, device, k, rank, world_size, nlist, nprobe, train_per_list, block,
                 min_recall, max_nprobe, recall_rows, all_gather):
    """IVF: the rows of each cell of this rank's share of cells, against the rows of the nprobe
    cells nearest to the cell's centre; nprobe doubles, up to max_nprobe, while the measured
    recall is below `min_recall` (see the module's docstring). Everything a rank computes
    between two exchanges runs inside `gathered`, so that a failure reaches every rank."""
    start = time.perf_counter()
    n = len(features)
    cells = ivf_lists(n, nlist)
    sample = np.sort(np.random.default_rng(1234).choice(n, min(n, cells * train_per_list),
                                                        replace=False))
    recall_sample = np.sort(np.random.default_rng(4321).choice(n, min(n, recall_rows),
                                                               replace=False))
    assigned = row_share(n, rank, world_size, block)  # the rows this rank puts in cells
    state = {}

    def train():  # every rank: its rows; rank 0: the k-means centres
        state["x"] = x = _Rows(features, device)
        if rank != 0:
            return None
        # On the CPU: faiss's gpu=True would spread the k-means over every visible GPU.
        # min_points_per_centroid 1: with few rows (a small set, or an explicit PSEUDO.IVF.NLIST)
        # faiss would print a raw "please provide at least 39 training points" to the console;
        # the cells are only a search index, and ivf_lists already keeps 39 rows a cell.
        kmeans = faiss.Kmeans(x.x.shape[1], cells, niter=10, seed=1234, spherical=x.unit,
                              max_points_per_centroid=train_per_list, min_points_per_centroid=1)
        kmeans.train(np.ascontiguousarray(x.take(torch.from_numpy(sample)).cpu().numpy()))
        return kmeans.centroids
    centres = gathered(all_gather, train)[0]
    x = state["x"]

    def assign():  # this rank's rows' cells, in the blocks one process would multiply
        state["centres"] = c = torch.from_numpy(centres).to(device)
        shift = 0 if x.unit else 0.5 * (c ** 2).sum(1)
        return torch.cat([(x.take(slice(a, min(a + block, assigned.stop))) @ c.T - shift)
                          .argmax(dim=1).cpu() for a in range(assigned.start, assigned.stop,
                                                              block)] or
                         [torch.zeros(0, dtype=torch.int64)])
    cell_parts = gathered(all_gather, assign)  # the shares ascend with the rank

    def index():  # every rank alike: the rows of each cell, each cell's nearest cells
        cell_of = torch.cat(cell_parts)
        order = torch.argsort(cell_of, stable=True)  # rows grouped by cell, ascending within
        bounds = torch.searchsorted(cell_of[order], torch.arange(cells + 1))
        c = state["centres"]
        centre_scores = c @ c.T  # nearest cells: by L2, as the rows' cells
        if not x.unit:
            centre_scores -= 0.5 * (c ** 2).sum(1)[None, :]
        _own_first(centre_scores)
        state.update(order=order, bounds=bounds, centre_scores=centre_scores,
                     sizes=(bounds[1:] - bounds[:-1]).double())

    def scanned_pairs(probes):  # rows x candidates over every cell
        near = state["centre_scores"].topk(probes, dim=1).indices.cpu()
        return float((state["sizes"] * state["sizes"][near].sum(dim=1)).sum()), near

    mine = row_share(cells, rank, world_size, block=1)
    exact_pairs = n * (n + 1) / 2  # the exact search multiplies each pair of blocks once
    probes, tried, stop = min(nprobe, cells), [], None

    def scan_and_measure():
        if "order" not in state:
            index()
        state["rows"], state["lists"] = _scan_cells(x, k, state["order"], state["bounds"],
                                                    scanned_pairs(probes)[1], mine, block)
        return _sampled_hits(x, state["rows"], state["lists"], recall_sample, block, state) \
            if len(recall_sample) else (0.0, 0.0)
    while True:
        found, asked = np.sum(gathered(all_gather, scan_and_measure), axis=0)
        recall = found / asked if asked else float("nan")
        tried.append((probes, recall))
        if not asked or recall >= min_recall or probes >= cells:
            break
        doubled = min(cells, 2 * probes)
        if scanned_pairs(doubled)[0] >= exact_pairs:  # whatever the cap: exact costs less
            logger.info(f"approximate kNN: {_tried(tried)} of {cells} cells, below the target "
                        f"recall {min_recall}, and NPROBE {doubled} would multiply more pairs "
                        f"than exact search: exact search instead")
            return SearchShare(np.arange(assigned.start, assigned.stop),
                               _exact(x, k, assigned, block), "exact", 1.0, 0, cells,
                               tuple(tried))
        wider = min(doubled, max_nprobe)
        if wider <= probes:
            stop = "cap"
            break
        probes = wider
    if stop == "cap" and rank == 0:
        logger.warning(
            f"The approximate neighbour search found {100 * recall:.1f}% of the {k - 1} nearest "
            f"neighbours of {len(recall_sample)} sampled rows, below PSEUDO.IVF.MIN_RECALL "
            f"{min_recall} ({_tried(tried)} of {cells} cells), and PSEUDO.IVF.MAX_NPROBE "
            f"{max_nprobe} stops it there: its pseudo labels may differ much from exact "
            f"search's. Raise PSEUDO.IVF.MAX_NPROBE (each doubling about doubles the search's "
            f"time), or set PSEUDO.SEARCH exact.")
    rows, lists = state["rows"], state["lists"]
    mine_rows = "" if world_size == 1 else f" (this rank's share: {len(rows)})"
    logger.info(f"approximate kNN: IVF, {cells} cells (faiss k-means on {len(sample)} rows), "
                f"each scanning its {probes} nearest; {n} rows{mine_rows} x {k} neighbours in "
                f"{time.perf_counter() - start:.1f} s; recall on {len(recall_sample)} sampled "
                f"rows: {_tried(tried)}")
    return SearchShare(rows, lists, "approximate", recall, probes, cells, tuple(tried))


def _tried(tried):
    """"recall 0.812 at NPROBE 8, 0.930 at 16" for a log line."""
    return "recall " + ", ".join(f"{recall:.3f} at {'NPROBE ' if i == 0 else ''}{probes}"
                                 for i, (probes, recall) in enumerate(tried))


def _scan_cells(x, k, order, bounds, near_cells, mine, block):
    """(rows ascending, their lists): each cell of the slice `mine`, its rows against the rows of
    its `near_cells`."""
    n, device = x.n, x.device
    rows_out, lists_out = [], []
    for c in range(mine.start, mine.stop):
        queries = order[bounds[c]:bounds[c + 1]]
        if len(queries) == 0:
            continue
        candidates = torch.sort(torch.cat([order[bounds[p]:bounds[p + 1]]
                                           for p in near_cells[c].tolist()])).values
        if len(candidates) < k:  # too few rows nearby: this cell searches every row
            candidates = torch.arange(n)
        where = torch.searchsorted(candidates, queries)  # each query is among its candidates
        xc = x.take(candidates)
        for q in range(0, len(queries), block):
            s = x.score(x.take(queries[q:q + block]) @ xc.T, candidates.to(device))
            _own_first(s, where[q:q + block].to(device))
            lists_out.append(_in_total_order(*_first_k(
                s, k, candidates.to(device).expand(s.shape[0], -1)))[1].cpu())
        rows_out.append(queries)
    rows = torch.cat(rows_out) if rows_out else torch.zeros(0, dtype=torch.int64)
    lists = torch.cat(lists_out) if lists_out else torch.zeros((0, k), dtype=torch.int64)
    ordered = torch.argsort(rows)
    return rows[ordered].numpy(), lists[ordered].numpy()
