"""The sparse Jaccard distance and clustering against FastReID's dense implementation."""
import threading

import numpy as np
import pytest
import torch
from fastreid.utils.compute_dist import compute_jaccard_distance
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from cpcl_plugin.clustering import (cluster, jaccard_distance, knn, knn_share,
                                    outliers_as_singletons, relabel_in_order, resolve_search,
                                    sampled_recall)
from cpcl_plugin.clustering.neighbours import ivf_lists
from cpcl_plugin.clustering.ranks import FailedElsewhere, gathered
from feature_distributions import FEATURE_DISTRIBUTIONS  # benchmarks/, on the path by conftest
from feature_distributions import clustered_features as make_features


def clustered_features(n, seed=0):
    return make_features(n, d=64, per_identity=6, seed=seed)


def dense_reference(x, k1=30, k2=6):
    return compute_jaccard_distance(torch.from_numpy(x), k1=k1, k2=k2, search_option=3)


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_distance_equals_fastreid_dense(seed):
    x = clustered_features(500, seed=seed)
    dense = dense_reference(x)
    sparse = jaccard_distance(x).tocoo()
    assert np.abs(dense[sparse.row, sparse.col] - sparse.data).max() < 1e-5
    stored = np.zeros(dense.shape, dtype=bool)
    stored[sparse.row, sparse.col] = True
    assert np.all(dense[~stored] >= 1 - 1e-6)  # every absent pair is at distance 1
    assert np.all(np.diag(stored))  # the diagonal (distance 0) is stored, not dropped


def test_max_distance_keeps_exactly_the_pairs_within_it():
    x = clustered_features(400, seed=2)
    dense = dense_reference(x)
    near = jaccard_distance(x, max_distance=0.6).tocoo()
    expected = set(zip(*np.nonzero(dense <= 0.6)))
    assert set(zip(near.row.tolist(), near.col.tolist())) == expected
    assert np.all(near.data <= 0.6 + 1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_cluster_labels_equal_dense_dbscan(seed):
    x = clustered_features(600, seed=seed)
    expected = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dense_reference(x))
    labels = cluster(x, eps=0.6, min_samples=4)
    assert adjusted_rand_score(expected, labels) == 1.0
    assert set(np.unique(labels[labels >= 0])) == set(range(labels.max() + 1))
    assert (labels == -1).sum() == (expected == -1).sum()


@pytest.mark.parametrize("scaled", [False, True])
def test_knn_is_exact(scaled):
    x = clustered_features(300, seed=4)
    if scaled:  # not unit vectors: the |b|^2 term matters
        x = x * np.random.default_rng(0).uniform(0.5, 2.0, (300, 1)).astype(np.float32)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    got = knn(x, 10, block=64)  # several blocks, both halves of the symmetric product
    assert np.array_equal(got[:, 0], np.arange(300))  # itself first
    want = np.sort(d, axis=1)[:, :10]
    assert np.allclose(np.take_along_axis(d, got, axis=1), want, atol=1e-4)


def test_small_and_empty_inputs():
    assert cluster(np.zeros((0, 8), np.float32)).shape == (0,)
    labels = cluster(clustered_features(10, seed=5), k1=30)  # fewer samples than k1
    assert labels.shape == (10,)
    # k2 larger than the k1 neighbours found: averaged over those that exist, as FastReID does.
    x = clustered_features(60, seed=6)
    dense = dense_reference(x, k1=4, k2=6)
    sparse = jaccard_distance(x, k1=4, k2=6).tocoo()
    assert np.abs(dense[sparse.row, sparse.col] - sparse.data).max() < 1e-5


def test_relabel_in_order():
    assert relabel_in_order(np.array([5, -1, 5, 2, 9, 2])).tolist() == [0, -1, 0, 1, 2, 1]


def _dbscan_on_every_pair(x, **kwargs):
    dist = jaccard_distance(x, max_distance=0.6, **kwargs)
    return relabel_in_order(DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dist))


@pytest.mark.parametrize("name", list(FEATURE_DISTRIBUTIONS))
def test_labels_on_hard_distributions_equal_dbscan_on_every_pair(name):
    """cluster() sums only the pairs that can change DBSCAN's labels; the labels must be those of
    DBSCAN on every pair within eps, on dense blobs, duplicates, cones, hubs and uneven sizes."""
    x = FEATURE_DISTRIBUTIONS[name](1500, d=64, seed=1)
    neighbours = knn(x, 30)
    labels = cluster(x, neighbours=neighbours)
    assert np.array_equal(labels, _dbscan_on_every_pair(x, neighbours=neighbours))
    assert labels.max() >= 1  # the case clusters at all: the comparison says something


def test_dense_blob_labels_equal_fastreid_dense():
    x = FEATURE_DISTRIBUTIONS["dense blob"](800, d=64, seed=2)
    expected = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dense_reference(x))
    assert adjusted_rand_score(expected, cluster(x, search="exact")) == 1.0


def on_thread_ranks(world_size, work):
    """[work(rank, all_gather) for each rank], the ranks run as threads whose all_gather meet as
    the collective does (every rank gets every rank's object, in rank order); an exception of a
    rank is its result."""
    parts, results = [None] * world_size, [None] * world_size
    barrier = threading.Barrier(world_size, timeout=120)

    def gather_of(rank):
        def all_gather(obj):
            parts[rank] = obj
            barrier.wait()
            out = list(parts)
            barrier.wait()  # nobody writes the next parts before everyone has read these
            return out
        return all_gather

    def run(rank):
        try:
            results[rank] = work(rank, gather_of(rank))
        except Exception as err:
            results[rank] = err
    threads = [threading.Thread(target=run, args=(rank,), name=f"rank{rank}")
               for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("search, options", [
    ("exact", {"block": 64}),
    ("approximate", {"nprobe": 3, "min_recall": 0}),  # as configured
    ("approximate", {"nprobe": 2, "min_recall": 0.8}),  # widened alike by the summed recall
    ("approximate", {"nprobe": 2, "min_recall": 0.999})])  # turned exact alike
def test_shares_of_the_rows_give_exactly_the_whole_search(search, options):
    x = clustered_features(700, seed=5)
    x[10:80] = x[9]  # ties, which every share must resolve alike
    whole = knn_share(x, 20, search, 0, 1, **options)
    for world_size in (2, 3):
        shares = on_thread_ranks(world_size, lambda rank, all_gather: knn_share(
            x, 20, search, rank, world_size, all_gather=all_gather, **options))
        lists = np.full_like(whole.lists, -1)
        for share in shares:
            assert share._replace(rows=None, lists=None) == whole._replace(rows=None, lists=None)
            lists[share.rows] = share.lists
        assert np.array_equal(lists, whole.lists), (search, world_size)
    assert np.array_equal(whole.lists[:, 0], np.arange(len(x)))
    assert np.array_equal(whole.lists[9, :8], [9, 10, 11, 12, 13, 14, 15, 16])  # ties by index
    if options.get("min_recall"):  # the case widens, to an approximate or an exact search
        assert len(whole.tried) == 3
        assert whole.search == ("approximate" if options["min_recall"] < 0.9 else "exact")


@pytest.mark.parametrize("name", list(FEATURE_DISTRIBUTIONS))
def test_ranks_sharing_the_dbscan_graph_give_the_labels_of_one_process(name):
    x = FEATURE_DISTRIBUTIONS[name](900, d=64, seed=4)
    lists = knn(x, 30)
    single = cluster(x, neighbours=lists)
    assert single.max() >= 1  # the case clusters at all
    for world_size in (2, 3):
        labels = on_thread_ranks(world_size, lambda rank, all_gather: cluster(
            x, neighbours=lists, rank=rank, world_size=world_size, all_gather=all_gather))
        for got in labels:
            assert np.array_equal(got, single), (name, world_size)


@pytest.mark.parametrize("where", ["_exact_mass", "_sorted_csr", "_scan_cells", "_Rows"])
def test_a_failure_inside_the_shared_pass_stops_every_rank(monkeypatch, where):
    """A rank that fails between two exchanges (here: out of memory in one step) does not leave
    the others waiting in the next: each rank ends with an error, rank 1 with its own."""
    from cpcl_plugin.clustering import jaccard, neighbours
    module = jaccard if where in ("_exact_mass", "_sorted_csr") else neighbours
    real = getattr(module, where)

    def failing_on_rank1(*args, **kwargs):
        if threading.current_thread().name == "rank1":
            raise MemoryError(f"{where} ran out")
        return real(*args, **kwargs)
    monkeypatch.setattr(module, where, failing_on_rank1)
    x = clustered_features(600, seed=2)
    lists = knn(x, 30) if module is jaccard else None

    def work(rank, all_gather):
        if lists is not None:
            return cluster(x, neighbours=lists, rank=rank, world_size=2, all_gather=all_gather)
        return knn_share(x, 30, "approximate", rank, 2, nprobe=2, all_gather=all_gather)
    first, second = on_thread_ranks(2, work)
    assert isinstance(second, MemoryError)
    assert isinstance(first, FailedElsewhere) and f"{where} ran out" in str(first)


def test_a_failure_on_one_rank_is_raised_on_every_rank():
    def work(rank, all_gather):
        def contribute():
            if rank == 1:
                raise MemoryError("rank 1 ran out")
            return rank
        return gathered(all_gather, contribute)
    assert on_thread_ranks(1, work) == [[0]]
    assert on_thread_ranks(3, lambda rank, all_gather: gathered(all_gather, lambda: rank)) == \
        [[0, 1, 2]] * 3
    first, second, third = on_thread_ranks(3, work)
    assert isinstance(second, MemoryError)
    for other in (first, third):
        assert isinstance(other, FailedElsewhere)
        assert "failed on rank 1: MemoryError: rank 1 ran out" in str(other)
    with pytest.raises(ValueError, match="needs their all_gather"):
        knn_share(clustered_features(300), 5, "approximate", 0, 2)


def test_approximate_search_agrees_with_exact_on_a_clustered_set():
    """The approximate search finds the near neighbours; the far end of the k1 = 30 lists is
    noise here (identities of 6), which it draws from the scanned cells instead of from every row.
    Its labels mostly agree with the exact ones (docs/benchmarks.md measures how far)."""
    x = make_features(3000, d=64, seed=7)
    exact = cluster(x, search="exact")
    approximate = cluster(x, search="approximate", nprobe=8, min_recall=0)  # no adaptation
    assert adjusted_rand_score(outliers_as_singletons(exact),
                               outliers_as_singletons(approximate)) >= 0.75
    near = np.mean([len(set(a[:6]) & set(b[:6])) / 6 for a, b in
                    zip(knn(x, 30, "approximate", nprobe=8, min_recall=0), knn(x, 30))])
    assert near >= 0.9  # the six nearest: the identity's own rows
    # Scanning every cell is the exact search.
    assert np.array_equal(knn(x, 30, "approximate", nprobe=ivf_lists(len(x))), knn(x, 30))


def _recall_by_brute_force(x, lists):
    """The recall of `lists` (own index first, k - 1 others) against numpy's exact L2 ranking,
    ties at the (k - 1)-th place counting as found."""
    f = x.astype(np.float64)
    scores = f @ f.T - 0.5 * (f * f).sum(axis=1)[None, :]  # ranks as -||a - b||^2
    np.fill_diagonal(scores, -np.inf)  # itself is no neighbour
    k = lists.shape[1]
    kth = -np.partition(-scores, k - 2, axis=1)[:, k - 2]
    others = lists[:, 1:]
    return (np.take_along_axis(scores, others, axis=1) >= kth[:, None] - 1e-6).mean()


@pytest.mark.parametrize("kind", ["unit", "float16", "not unit"])
def test_sampled_recall_is_the_recall_of_the_lists(kind):
    x = clustered_features(900, seed=4)
    x[50:90] = x[49]  # ties: an equally near duplicate is as good a neighbour
    if kind == "float16":
        x = x.astype(np.float16)
    if kind == "not unit":  # L2 neighbours, not cosine ones
        x = x * np.random.default_rng(0).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)
    exact = knn(x, 20)
    assert sampled_recall(x, np.arange(900), exact, np.arange(900)) == (900 * 19, 900 * 19)
    rough = knn(x, 20, "approximate", nprobe=2, min_recall=0)
    found, asked = sampled_recall(x, np.arange(900), rough, np.arange(900))
    assert asked == 900 * 19 and 0.2 < found / asked < 0.99
    assert found / asked == pytest.approx(_recall_by_brute_force(x, rough), abs=2e-4)
    # A rank's share: only the sampled rows among its rows count.
    part = sampled_recall(x, np.arange(100, 300), rough[100:300], np.arange(0, 900, 3))
    assert part[1] == len(range(102, 300, 3)) * 19


def test_approximate_search_widens_until_its_recall_target():
    x = clustered_features(5000, seed=3)
    first = knn_share(x, 30, "approximate", 0, 1, nprobe=4, min_recall=0, recall_rows=5000)
    assert first.search == "approximate" and first.recall < 0.6  # the case needs widening
    found = knn_share(x, 30, "approximate", 0, 1, nprobe=4, min_recall=0.6, recall_rows=5000)
    probes = [p for p, _ in found.tried]
    assert probes == [4 * 2 ** i for i in range(len(probes))] and len(probes) >= 2
    recalls = [r for _, r in found.tried]
    assert recalls[-1] >= 0.6 > recalls[-2] and found.recall == recalls[-1]
    assert found.search == "approximate" and found.nprobe == probes[-1] < found.cells
    # Measured on every row: the lists' true recall (the default measures 1,000 sampled rows), up
    # to float32 rounding of near ties at the last place.
    assert found.recall == pytest.approx(_recall_by_brute_force(x, found.lists), abs=1e-3)
    sampled = knn_share(x, 30, "approximate", 0, 1, nprobe=4, min_recall=0.6)
    assert abs(sampled.recall - found.recall) < 0.03 and sampled.nprobe == found.nprobe
    # A cap that doubling does not reach is reached all the same.
    capped = knn_share(x, 30, "approximate", 0, 1, nprobe=4, min_recall=0.999, max_nprobe=12)
    assert [p for p, _ in capped.tried] == [4, 8, 12] and capped.nprobe == 12


def test_approximate_search_runs_exact_when_widening_would_cost_more(caplog):
    x = clustered_features(5000, seed=3)
    with caplog.at_level("INFO", logger="cpcl_plugin.clustering"):
        found = knn_share(x, 30, "approximate", 0, 1, nprobe=4, min_recall=0.999)
    assert found.search == "exact" and found.recall == 1.0 and len(found.tried) >= 2
    assert np.array_equal(found.lists, knn(x, 30))
    assert "would multiply more pairs than exact search: exact search instead" in caplog.text


def test_approximate_search_below_its_target_warns_once(caplog):
    x = clustered_features(5000, seed=3)
    with caplog.at_level("INFO", logger="cpcl_plugin.clustering"):
        found = knn_share(x, 30, "approximate", 0, 1, nprobe=4, min_recall=0.999, max_nprobe=8)
    assert found.search == "approximate" and found.recall < 0.999
    assert [p for p, _ in found.tried] == [4, 8] and found.nprobe == 8  # widened up to the cap
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    first, second = found.tried
    assert (f"found {100 * found.recall:.1f}% of the 29 nearest neighbours of 1000 sampled rows, "
            f"below PSEUDO.IVF.MIN_RECALL 0.999 (recall {first[1]:.3f} at NPROBE 4, "
            f"{second[1]:.3f} at 8 of {found.cells} cells)") in warnings[0]
    assert "Raise PSEUDO.IVF.MAX_NPROBE" in warnings[0] and "PSEUDO.SEARCH exact" in warnings[0]


def test_search_choice_and_its_log(caplog):
    assert resolve_search("auto", 100, 100) == "exact"
    assert resolve_search("auto", 101, 100) == "approximate"
    assert resolve_search("exact", 10 ** 7, 100) == "exact"
    with pytest.raises(ValueError, match="'fast' is not one of auto, exact, approximate"):
        resolve_search("fast", 10, 10)
    with caplog.at_level("INFO", logger="cpcl_plugin.clustering"):
        cluster(clustered_features(300), search="auto", exact_max=200)
    assert "approximate search (PSEUDO.SEARCH 'auto': exact up to PSEUDO.EXACT_MAX 200 rows)" \
        in caplog.text
    assert "approximate kNN: IVF" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="cpcl_plugin.clustering"):  # forced: no row limit said
        cluster(clustered_features(150), search="approximate", exact_max=200)
    assert "approximate search (PSEUDO.SEARCH 'approximate'), " in caplog.text
    assert "exact up to" not in caplog.text


def test_float16_features_cluster_like_float32():
    x = clustered_features(1500, seed=6)
    assert adjusted_rand_score(cluster(x), cluster(x.astype(np.float16))) >= 0.99


@pytest.mark.parametrize("n, nlist", [(30, 0), (200, 64)])
def test_approximate_search_over_few_rows_prints_no_faiss_warning(capfd, n, nlist):
    x = clustered_features(n)
    capfd.readouterr()
    found = knn(x, 5, "approximate", nlist=nlist, nprobe=nlist or 1)
    assert found.shape == (n, 5) and (found[:, 0] == np.arange(n)).all()
    out, err = capfd.readouterr()
    assert "training points" not in out + err and "WARNING" not in out + err
