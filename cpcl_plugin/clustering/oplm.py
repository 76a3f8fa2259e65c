"""Outlier Pseudo Label Mining (OPLM): recover clustering outliers through their paired sample in
the other modality. Arrays in, arrays out."""
import numpy as np

__all__ = ["cooccurrence", "prototypes", "mine_outliers", "pseudo_label_quality"]


def cooccurrence(pair_image_labels, pair_text_labels, num_image_labels, num_text_labels):
    """A[a, b] = number of pairs whose image label is a and text label is b (outliers ignored)."""
    a, b = np.asarray(pair_image_labels), np.asarray(pair_text_labels)
    ok = (a >= 0) & (b >= 0)
    A = np.zeros((num_image_labels, num_text_labels), dtype=np.int64)
    np.add.at(A, (a[ok], b[ok]), 1)
    return A


def prototypes(features, labels, num_labels):
    """(num_labels, d): the L2-normalised mean feature of each label (rows of empty labels are 0)."""
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    ok = labels >= 0
    sums = np.zeros((num_labels, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels[ok], features[ok])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def _recover(outlier_features, candidate_sets, protos, threshold):
    """For each outlier: the candidate prototype of highest cosine, if at least `threshold`."""
    out = np.full(len(outlier_features), -1, dtype=np.int64)
    for n, (f, cands) in enumerate(zip(outlier_features, candidate_sets)):
        if len(cands):
            sims = protos[cands] @ f
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                out[n] = cands[best]
    return out


def mine_outliers(image_labels, text_labels, pair_image, image_features, text_features,
                  threshold=0.5):
    """OPLM as design.md specifies it.

    Args:
        image_labels: (N_img,) cluster label per unique image, -1 = outlier.
        text_labels: (N_cap,) cluster label per caption, -1 = outlier.
        pair_image: (N_cap,) index of the image each caption belongs to.
        image_features, text_features: L2-normalised features, (N_img, d) and (N_cap, d).
        threshold: minimum cosine between an outlier and the prototype it joins.

    An image outlier whose captions have text labels B gets a* = argmax over image prototypes a
    with A[a, b] > 0 for some b in B of cos(f_v, P_v[a]); text outliers symmetrically through their
    image's label. Co-occurrence and prototypes come from the labels before mining; pairs that are
    outliers in both modalities stay -1.

    Returns (new_image_labels, new_text_labels, stats) with stats = {"image_recovered": int,
    "text_recovered": int}.
    """
    image_labels = np.asarray(image_labels, dtype=np.int64)
    text_labels = np.asarray(text_labels, dtype=np.int64)
    pair_image = np.asarray(pair_image, dtype=np.int64)
    kv, kt = int(image_labels.max(initial=-1)) + 1, int(text_labels.max(initial=-1)) + 1
    pair_a = image_labels[pair_image]
    A = cooccurrence(pair_a, text_labels, kv, kt)
    new_image, new_text = image_labels.copy(), text_labels.copy()

    # Image outliers: candidate image labels through the text labels of their captions.
    image_outliers = np.flatnonzero(image_labels < 0)
    if len(image_outliers) and kv and kt:
        pv = prototypes(image_features, image_labels, kv)
        caption_labels = [[] for _ in range(len(image_labels))]
        for c in np.flatnonzero(text_labels >= 0):
            caption_labels[pair_image[c]].append(text_labels[c])
        cands = [np.flatnonzero(A[:, caption_labels[i]].sum(axis=1) > 0) if caption_labels[i]
                 else np.zeros(0, dtype=np.int64) for i in image_outliers]
        new_image[image_outliers] = _recover(np.asarray(image_features)[image_outliers], cands,
                                             pv, threshold)

    # Text outliers: candidate text labels through their image's label.
    text_outliers = np.flatnonzero(text_labels < 0)
    if len(text_outliers) and kv and kt:
        pt = prototypes(text_features, text_labels, kt)
        cands = [np.flatnonzero(A[pair_a[c]] > 0) if pair_a[c] >= 0 else np.zeros(0, dtype=np.int64)
                 for c in text_outliers]
        new_text[text_outliers] = _recover(np.asarray(text_features)[text_outliers], cands, pt,
                                           threshold)

    stats = {"image_recovered": int((new_image[image_outliers] >= 0).sum()),
             "text_recovered": int((new_text[text_outliers] >= 0).sum())}
    return new_image, new_text, stats


def pseudo_label_quality(pseudo_labels, true_labels):
    """MONITORING ONLY (needs identity labels; training never calls it): pairwise precision and
    recall of `pseudo_labels` against `true_labels` (outliers pair with nothing), and the adjusted
    Rand index with each outlier as its own cluster. Values in [0, 1] (ARI can be negative)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import contingency_matrix

    pred = np.asarray(pseudo_labels)
    true = np.asarray(true_labels)
    ok = pred >= 0
    pairs = lambda counts: float((counts * (counts - 1) // 2).sum())  # noqa: E731
    both = pairs(contingency_matrix(true[ok], pred[ok], sparse=True).data) if ok.any() else 0.0
    same_pred = pairs(np.bincount(pred[ok])) if ok.any() else 0.0
    same_true = pairs(np.unique(true, return_counts=True)[1])
    singletons = np.where(ok, pred, pred.max(initial=0) + 1 + np.arange(len(pred)))
    return {"precision": both / same_pred if same_pred else 0.0,
            "recall": both / same_true if same_true else 0.0,
            "ari": float(adjusted_rand_score(true, singletons))}
