"""Outlier Pseudo Label Mining (OPLM): recover clustering outliers through their paired sample in
the other modality. Arrays in, arrays out.

The co-occurrence is a scipy.sparse CSR matrix: at pretraining scale (about 150k clusters per
modality) a dense K_v x K_t matrix would not fit, while its non-zeros number at most the pairs.
Features may be float16 (the pseudo-label pass stores them so); sums are taken in float64 and
cosines in float32."""
import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix

from .jaccard import outliers_as_singletons

__all__ = ["cooccurrence", "label_sums", "normalized_rows", "prototypes", "mine_outliers",
           "pseudo_label_quality"]


def cooccurrence(pair_image_labels, pair_text_labels, num_image_labels, num_text_labels):
    """A[a, b] = number of pairs whose image label is a and text label is b (outliers ignored),
    as a (num_image_labels, num_text_labels) int64 CSR matrix with sorted column indices."""
    a, b = np.asarray(pair_image_labels), np.asarray(pair_text_labels)
    ok = (a >= 0) & (b >= 0)
    A = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.int64), (a[ok], b[ok])),
                      shape=(num_image_labels, num_text_labels))
    A.sum_duplicates()  # also sorts the indices of each row
    return A


def label_sums(features, labels, num_labels, chunk=1 << 14):
    """(num_labels, d) float64: the sum of the rows of `features` of each label (-1 ignored; rows
    of labels without a member are 0). Sums of disjoint row sets add up to the sum of their
    union, which is what lets ranks sum their own share of the rows and all-reduce."""
    features, labels = np.asarray(features), np.asarray(labels)
    sums = np.zeros((num_labels, features.shape[1]), dtype=np.float64)
    # `chunk` rows at a time, so the float64 copy stays small; each chunk's rows are added per
    # label by a sparse one-hot product (np.add.at would be several times slower).
    for lo in range(0, len(labels), chunk):
        y = labels[lo:lo + chunk]
        ok = np.flatnonzero(y >= 0)
        present, which = np.unique(y[ok], return_inverse=True)
        one_hot = sp.csr_matrix((np.ones(len(ok)), (which, np.arange(len(ok)))),
                                shape=(len(present), len(ok)))
        sums[present] += one_hot @ features[lo + ok].astype(np.float64)
    return sums


def normalized_rows(sums):
    """float32 rows of `sums` scaled to unit length (rows of 0 stay 0): the normalised mean."""
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def prototypes(features, labels, num_labels):
    """(num_labels, d): the L2-normalised mean feature of each label (rows of empty labels are 0)."""
    return normalized_rows(label_sums(features, labels, num_labels))


def _recover(outlier_features, candidates, protos, threshold, chunk=1 << 16):
    """For each outlier (row of `candidates`, a CSR matrix whose non-zeros are its candidate
    prototypes): the candidate of highest cosine, the lowest label among equals, if that cosine
    is at least `threshold`; else -1. Cosines in float32, `chunk` candidates at a time."""
    candidates = sp.csr_matrix(candidates)
    candidates.sort_indices()
    out = np.full(candidates.shape[0], -1, dtype=np.int64)
    cols = candidates.indices.astype(np.int64)
    if len(cols) == 0:
        return out
    rows = np.repeat(np.arange(candidates.shape[0]), np.diff(candidates.indptr))
    sims = np.empty(len(cols), dtype=np.float32)
    for lo in range(0, len(cols), chunk):
        r, c = rows[lo:lo + chunk], cols[lo:lo + chunk]
        sims[lo:lo + chunk] = np.einsum("ij,ij->i", outlier_features[r].astype(np.float32),
                                        protos[c])
    nonempty = np.flatnonzero(np.diff(candidates.indptr))
    best = np.full(candidates.shape[0], -np.inf, dtype=np.float32)
    best[nonempty] = np.maximum.reduceat(sims, candidates.indptr[nonempty])
    # Columns ascend within a row: the first candidate reaching the best is the lowest label.
    at_best = np.flatnonzero(sims == best[rows])
    winners, first = np.unique(rows[at_best], return_index=True)
    keep = best[winners] >= threshold
    out[winners[keep]] = cols[at_best[first]][keep]
    return out


def _indicator(rows, cols, shape):
    """A CSR matrix with 1 at each (row, col) (repeats count once as far as non-zeros go)."""
    return sp.csr_matrix((np.ones(len(rows), dtype=np.int64), (rows, cols)), shape=shape)


def mine_outliers(image_labels, text_labels, pair_image, image_features, text_features,
                  threshold=0.5):
    """OPLM as docs/design.md (section 1.3) specifies it.

    Args:
        image_labels: (N_img,) cluster label per unique image, -1 = outlier.
        text_labels: (N_cap,) cluster label per caption, -1 = outlier.
        pair_image: (N_cap,) index of the image each caption belongs to.
        image_features, text_features: L2-normalised features, (N_img, d) and (N_cap, d)
            (float32 or float16).
        threshold: minimum cosine between an outlier and the prototype it joins.

    An image outlier whose captions have text labels B gets a* = argmax over image prototypes a
    with A[a, b] > 0 for some b in B of cos(f_v, P_v[a]); text outliers symmetrically through their
    image's label. Co-occurrence and prototypes come from the labels before mining; pairs that are
    outliers in both modalities stay -1. The co-occurrence stays sparse throughout: the candidates
    of all outliers are one sparse product.

    Returns (new_image_labels, new_text_labels, stats) with stats = {"image_recovered": int,
    "text_recovered": int}.
    """
    image_labels = np.asarray(image_labels, dtype=np.int64)
    text_labels = np.asarray(text_labels, dtype=np.int64)
    pair_image = np.asarray(pair_image, dtype=np.int64)
    image_features, text_features = np.asarray(image_features), np.asarray(text_features)
    kv, kt = int(image_labels.max(initial=-1)) + 1, int(text_labels.max(initial=-1)) + 1
    pair_a = image_labels[pair_image]
    A = cooccurrence(pair_a, text_labels, kv, kt)
    new_image, new_text = image_labels.copy(), text_labels.copy()

    # Image outliers: candidate image labels through the text labels of their captions.
    image_outliers = np.flatnonzero(image_labels < 0)
    if len(image_outliers) and kv and kt:
        position = np.full(len(image_labels), -1, dtype=np.int64)
        position[image_outliers] = np.arange(len(image_outliers))
        linked = np.flatnonzero((text_labels >= 0) & (pair_a < 0))  # labelled captions of outliers
        captions_text = _indicator(position[pair_image[linked]], text_labels[linked],
                                   (len(image_outliers), kt))
        new_image[image_outliers] = _recover(image_features[image_outliers],
                                             captions_text @ A.T,
                                             prototypes(image_features, image_labels, kv),
                                             threshold)

    # Text outliers: candidate text labels through their image's label.
    text_outliers = np.flatnonzero(text_labels < 0)
    if len(text_outliers) and kv and kt:
        linked = np.flatnonzero(pair_a[text_outliers] >= 0)
        image_label = _indicator(linked, pair_a[text_outliers[linked]], (len(text_outliers), kv))
        new_text[text_outliers] = _recover(text_features[text_outliers], image_label @ A,
                                           prototypes(text_features, text_labels, kt), threshold)

    stats = {"image_recovered": int((new_image[image_outliers] >= 0).sum()),
             "text_recovered": int((new_text[text_outliers] >= 0).sum())}
    return new_image, new_text, stats


def pseudo_label_quality(pseudo_labels, true_labels):
    """MONITORING ONLY (needs identity labels; training never calls it): pairwise precision and
    recall of `pseudo_labels` against `true_labels` (outliers pair with nothing), the adjusted
    Rand index with each outlier as its own cluster (values in [0, 1]; ARI can be negative), the
    clusters per identity and the share of outliers (label -1)."""
    pred = np.asarray(pseudo_labels)
    true = np.asarray(true_labels)
    ok = pred >= 0
    pairs = lambda counts: float((counts * (counts - 1) // 2).sum())  # noqa: E731
    both = pairs(contingency_matrix(true[ok], pred[ok], sparse=True).data) if ok.any() else 0.0
    same_pred = pairs(np.bincount(pred[ok])) if ok.any() else 0.0
    same_true = pairs(np.unique(true, return_counts=True)[1])
    return {"precision": both / same_pred if same_pred else 0.0,
            "recall": both / same_true if same_true else 0.0,
            "ari": float(adjusted_rand_score(true, outliers_as_singletons(pred))),
            # how finely the clustering cuts: 1 when there are as many clusters as identities
            "clusters_per_identity": len(np.unique(pred[ok])) / max(len(np.unique(true)), 1),
            "outlier_share": float(np.mean(~ok)) if len(pred) else 0.0}
