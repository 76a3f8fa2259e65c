"""Test and benchmark features: unit vectors with identity structure, and harder variants of them
shaped like what real caption and image features do to a clustering (benchmarks/clustering.py).

Every generator takes n, then d and seed by keyword, and returns (n, d) float32 unit rows.
"""
import numpy as np

__all__ = ["clustered_features", "FEATURE_DISTRIBUTIONS"]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_features(n, d=512, per_identity=6, seed=0, with_identities=False):
    """n unit vectors (d-dim) around n / per_identity identity centres, each with its own noise
    level (the noisiest end up as outliers). The favourable case: well spread identities.
    With `with_identities`, (features, identity of each row) for benchmarks' monitoring."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // per_identity), d))
    labels = rng.integers(0, len(centres), n)
    noise = rng.normal(size=(n, d)) * rng.uniform(0.2, 1.2, (n, 1))
    x = _unit(centres[labels] / np.sqrt(d) * 4 + noise / np.sqrt(d))
    return (x, labels) if with_identities else x


def dense_blob(n, d=512, seed=0, fraction=0.05):
    """The identities, with `fraction` of the rows moved into one tight region (cosine about
    0.998 to its centre): a crowd of near-identical samples."""
    x = clustered_features(n, d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    m = int(fraction * n)
    centre = rng.normal(size=d)
    x[:m] = _unit(centre / np.linalg.norm(centre) + 0.05 * rng.normal(size=(m, d)) / np.sqrt(d))
    return x


def near_duplicates(n, d=512, seed=0, fraction=0.2, templates=200):
    """The identities, with `fraction` of the rows replaced by copies of `templates` template rows,
    half of them exact and half with a hair of noise: repeated captions ("a man in a black jacket
    and jeans") in many tight groups of 10-40 rows."""
    x = clustered_features(n, d, seed=seed)
    rng = np.random.default_rng(seed + 2)
    rows = rng.choice(n, int(fraction * n), replace=False)
    source = x[rng.choice(np.setdiff1d(np.arange(n), rows), templates, replace=False)]
    copies = source[rng.integers(0, templates, len(rows))]
    jitter = rng.normal(size=copies.shape) * 0.01 / np.sqrt(d) * (rng.random((len(rows), 1)) < 0.5)
    x[rows] = _unit(copies + jitter)
    return x


def narrow_cone(n, d=512, seed=0, axis_weight=1.2):
    """The identities inside a narrow cone around one shared direction, as CLIP's text features
    crowd together (mean cosine between unrelated rows about 0.55)."""
    x = clustered_features(n, d, seed=seed)
    axis = np.random.default_rng(seed + 3).normal(size=d)
    return _unit(x + axis_weight * axis / np.linalg.norm(axis))


def hubs(n, d=512, seed=0, fraction=0.01):
    """The narrow cone, with `fraction` of the rows placed on its axis: hubs, rows that are among
    the nearest neighbours of a great many others."""
    x = narrow_cone(n, d, seed=seed)
    rng = np.random.default_rng(seed + 4)
    m = int(fraction * n)
    centre = _unit(x.mean(axis=0, keepdims=True))
    x[n - m:] = _unit(centre + 0.1 * rng.normal(size=(m, d)) / np.sqrt(d))
    return x


def uneven_sizes(n, d=512, seed=0, exponent=1.6):
    """Identities whose sizes follow a power law: a few with hundreds of rows, most with one to
    three (web-scale corpora, where some people are photographed far more than others)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(exponent, size=n), n // 20)
    labels = np.repeat(np.arange(n), sizes)[:n]
    if len(labels) < n:
        labels = np.concatenate([labels, np.arange(n, 2 * n)[:n - len(labels)]])
    centres = rng.normal(size=(labels.max() + 1, d))
    noise = rng.normal(size=(n, d)) * rng.uniform(0.2, 1.2, (n, 1))
    return _unit(centres[labels] / np.sqrt(d) * 4 + noise / np.sqrt(d))


# name -> generator(n, d=..., seed=...); the first is the favourable reference.
FEATURE_DISTRIBUTIONS = {
    "identities": clustered_features,
    "dense blob": dense_blob,
    "near-duplicates": near_duplicates,
    "narrow cone": narrow_cone,
    "hubs": hubs,
    "uneven sizes": uneven_sizes,
}
