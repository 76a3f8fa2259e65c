"""The sparse Jaccard distance and clustering against FastReID's dense implementation."""
import numpy as np
import pytest
import torch
from fastreid.utils.compute_dist import compute_jaccard_distance
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from cpcl_plugin.clustering import cluster, jaccard_distance, knn, relabel_in_order
from cpcl_plugin.clustering import clustered_features as make_features


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
