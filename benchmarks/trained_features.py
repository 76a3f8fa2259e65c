"""Caption features from a trained model, for the clustering benchmark.

    python benchmarks/trained_features.py --n 20000       # prints dim, cosines, duplicate rates

`caption_features(n, seed)`: the text features (float32, unit rows) of n street captions of the
synthetic dataset's plain world (its street wording: 2-4 of a person's 7 attributes per
caption), 6 per person (3 images x 2 captions, as CUHK-PEDES has), encoded by the tiny CLIP
pretrained on the synthetic web (configs/CPCL/synthetic-web.yml, made once and cached) through the
project's own feature path (cpcl_plugin.evaluation.encode_captions_and_images, no images).

Why not random vectors around centres: a trained text encoder's features are what the
pseudo-label pass clusters. Real caption features crowd into a narrow cone and short captions
repeat word for word, so many rows are exact duplicates (ties, large reciprocal neighbourhoods,
dense DBSCAN cores), which isotropic blobs never show. Measured here (n = 20,000): 7% of the
captions repeat another word for word, and those rows are bitwise-identical; but this tiny 128-d
model spreads its features widely (mean cosine of random pairs about 0.08), so it shows the
duplicates but not the cone; a benchmark needs another source to test the cone.
Captions are drawn with the generator's own functions, without rendering any image. Results are
cached as .npy under <dataset root>/benchmark-features, keyed by n, seed, the weights and the
generator version; written atomically, so a second call only loads the file.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "CPCL", "synthetic.yml")
RECIPE = os.path.join(REPO, "configs", "CPCL", "synthetic-web.yml")
IMAGES_PER_ID, CAPTIONS_PER_IMAGE = 3, 2
ATTRIBUTES_PER_CAPTION = (2, 4)  # named per caption, of 7


def _log(message):
    print(f"[trained_features] {message}", file=sys.stderr, flush=True)


def _config():
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from cpcl_plugin import load_config
    root = os.path.abspath(os.getenv("FASTREID_DATASETS") or os.path.join(REPO, "datasets"))
    # The recipe by absolute path: configs name it relative to the repository.
    return load_config(CONFIG, ["DATASETS.ROOT", root, "MODEL.CLIP.PRETRAINED", RECIPE])


def synthetic_captions(n, seed=0):
    """(captions, identities) of n street captions, 6 per identity, drawn as the generator draws
    them (its sample_identity and describe_identity) without rendering any image."""
    from cpcl_plugin.data.synthetic import describe_identity, sample_identity
    lo, hi = ATTRIBUTES_PER_CAPTION
    rng, per = np.random.default_rng(seed), IMAGES_PER_ID * CAPTIONS_PER_IMAGE
    captions, ids = [], []
    for pid in range(-(-n // per)):
        ident = sample_identity(rng)
        captions += [describe_identity(ident, rng, int(rng.integers(lo, hi + 1)), "street")
                     for _ in range(per)]
        ids += [pid] * per
    return captions[:n], np.asarray(ids[:n])


def caption_features(n, seed=0, cache_dir=None):
    """(n, d) float32 unit rows: the pretrained tiny CLIP's features of synthetic_captions(n,
    seed). Cached in `cache_dir` (default <dataset root>/benchmark-features)."""
    cfg = _config()
    from cpcl_plugin.data.synthetic import GENERATOR_VERSION
    from cpcl_plugin.engine.pretraining import ensure_pretrained_weights
    from cpcl_plugin.modeling.pretrained import pretrained_weights_path
    from cpcl_plugin.utils.progress import console_logging
    weights = pretrained_weights_path(cfg)
    cache_dir = cache_dir or os.path.join(cfg.DATASETS.ROOT, "benchmark-features")
    stem = os.path.splitext(os.path.basename(weights))[0]
    path = os.path.join(cache_dir, f"captions-{stem}-g{GENERATOR_VERSION}-n{n}-s{seed}.npy")
    if os.path.isfile(path):
        return np.load(path)
    with console_logging():  # the project's progress lines, on stderr
        if not os.path.isfile(weights):
            _log(f"pretraining {RECIPE} once (about 4 minutes on two free cores)")
        ensure_pretrained_weights(cfg)
        from cpcl_plugin import CPCLTrainer
        from cpcl_plugin.evaluation import encode_captions_and_images
        captions, _ = synthetic_captions(n, seed)
        model = CPCLTrainer.build_model(cfg)
        feats, _, _ = encode_captions_and_images(cfg, model, captions, [], batch_size=1024)
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".captions-", suffix=".npy", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, feats)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _log(f"cached {feats.shape} in {path}")
    return feats


def _duplicate_fraction(keys):
    """Fraction of items equal to at least one other item."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True, axis=0)
    return float((counts[inverse.ravel()] > 1).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    start = time.perf_counter()
    x = caption_features(args.n, args.seed, args.cache_dir)
    seconds = time.perf_counter() - start
    captions, ids = synthetic_captions(args.n, args.seed)
    rng = np.random.default_rng(0)
    i, j = rng.integers(args.n, size=(2, 2000))
    keep = i != j
    cos = (x[i[keep]] * x[j[keep]]).sum(1)
    print(f"n {args.n}, identities {len(np.unique(ids))}, dim {x.shape[1]}, {seconds:.1f} s")
    print(f"mean pairwise cosine (2000 random pairs) {cos.mean():.3f} (std {cos.std():.3f})")
    print(f"captions duplicating another caption {_duplicate_fraction(np.asarray(captions)):.3f}")
    print(f"rows bitwise-identical to another row "
          f"{_duplicate_fraction(x.view(np.uint32)):.3f}")


if __name__ == "__main__":
    main()
