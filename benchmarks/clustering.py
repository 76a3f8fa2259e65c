"""Clustering benchmark: the project's sparse Jaccard + DBSCAN against FastReID's dense path, over
N and over feature distributions that are hard for a sparse method.

    python benchmarks/clustering.py                 # N = 5k to 68k (dense up to 20k), then the
                                                    # distributions at N = 20k
    python benchmarks/clustering.py --sizes 5000 --distributions "dense blob" hubs --plot c.png

Scale: 512-d unit vectors around N / 6 identity centres (about six samples per identity, as
CUHK-PEDES has captions per identity), with per-sample noise so that some are outliers: the
favourable case. Distributions (benchmarks/feature_distributions.py, plus caption
features of a trained model, benchmarks/trained_features.py): a dense blob (5% of the rows in one
tight region), near-duplicates (20% copies of 200 rows), a narrow cone (CLIP-like), hubs on its
axis, power-law identity sizes. Each (path, N, distribution) runs in its own process, so that its
peak resident memory is its own; both paths run in this one script, side by side, on the same
features; the sparse path uses the exact kNN search (search="exact"). Labels are compared with the
adjusted Rand index. Prints Markdown tables.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from feature_distributions import FEATURE_DISTRIBUTIONS  # beside this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAVOURABLE = "identities"
TRAINED = "trained model captions"


def features(distribution, n):
    """The benchmark's features: a generated distribution, or a trained model's captions."""
    if distribution == TRAINED:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from trained_features import caption_features
        return caption_features(n)
    return FEATURE_DISTRIBUTIONS[distribution](n, d=512, seed=0)


def run_one(path, n, distribution, out):
    """In a child process: cluster N features with one path, save labels, print a JSON line."""
    sys.path.insert(0, REPO)
    import numpy as np
    import cpcl_plugin  # noqa: F401  (FastReID compat)
    x = features(distribution, n)
    start = time.perf_counter()
    if path == "sparse":
        from cpcl_plugin.clustering import cluster
        labels = cluster(x, eps=0.6, min_samples=4, k1=30, k2=6, search="exact")
    else:
        import torch
        from fastreid.utils.compute_dist import compute_jaccard_distance
        from sklearn.cluster import DBSCAN
        dist = compute_jaccard_distance(torch.from_numpy(x), k1=30, k2=6, search_option=3)
        labels = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit_predict(dist)
    seconds = time.perf_counter() - start
    np.save(out, labels)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps({"seconds": seconds, "peak_gb": peak_gb,
                      "clusters": int(labels.max() + 1), "outliers": int((labels < 0).sum())}))


def compare(n, distribution, dense_max, tmp):
    """Both paths on the same features, each in its own process: (dense or None, sparse, ARI)."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score
    result = {}
    for path in ("dense", "sparse"):
        if path == "dense" and n > dense_max:
            continue
        out = os.path.join(tmp, f"{path}-{n}.npy")
        proc = subprocess.run([sys.executable, __file__, "--child", path, str(n), distribution,
                               out], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{path} path on {distribution!r}, N = {n} failed:\n"
                             f"{proc.stderr[-3000:]}")
        result[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        result[path]["labels"] = np.load(out)
    d, s = result.get("dense"), result["sparse"]
    return d, s, adjusted_rand_score(d["labels"], s["labels"]) if d else None


def parse_args():
    sys.path.insert(0, REPO)
    names = list(FEATURE_DISTRIBUTIONS) + [TRAINED]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*",
                        default=[5000, 10000, 20000, 34000, 68000],
                        help="N of the scale table, favourable features (default: %(default)s)")
    parser.add_argument("--dense-max", type=int, default=20000,
                        help="largest N for the dense path (it needs ~14 N^2 bytes; default: "
                             "%(default)s)")
    parser.add_argument("--distributions", nargs="*", default=names, choices=names,
                        metavar="NAME", help=f"feature distributions of the second table, of "
                                             f"{', '.join(names)} (default: all)")
    parser.add_argument("--distribution-size", type=int, default=20000,
                        help="N of the distribution table (default: %(default)s)")
    parser.add_argument("--plot", help="write time and peak memory against N to this PNG file")
    parser.add_argument("--child", nargs=4, metavar=("PATH", "N", "DISTRIBUTION", "OUT"),
                        help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    import tempfile
    args = parse_args()
    if args.child:
        return run_one(args.child[0], int(args.child[1]), args.child[2], args.child[3])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(n, *compare(n, FAVOURABLE, args.dense_max, tmp)) for n in args.sizes]
        if rows:
            print_scale(rows)
        if args.distributions:
            n = args.distribution_size
            print_distributions(n, [(name, *compare(n, name, args.dense_max, tmp))
                                    for name in args.distributions])
    if args.plot and rows:
        plot(rows, args.plot)


def _compared(d, s, ari):
    """The cells both tables share: dense seconds and peak GB, speed-up, ARI ("–" without the
    dense run)."""
    if d is None:
        return "–", "–", "–", "–"
    return (f"{d['seconds']:.1f}", f"{d['peak_gb']:.2f}", f"{d['seconds'] / s['seconds']:.1f}x",
            f"{ari:.4f}")


def print_scale(rows):
    print("| N | dense s | dense peak GB | sparse s | sparse peak GB | speed-up | ARI | clusters "
          "| outliers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d, s, ari in rows:
        dense, dense_peak, speedup, ari_cell = _compared(d, s, ari)
        print(f"| {n:,} | {dense} | {dense_peak} | {s['seconds']:.1f} | {s['peak_gb']:.2f} | "
              f"{speedup} | {ari_cell} | {s['clusters']} | {s['outliers']} |")


def print_distributions(n, rows):
    """One row per distribution; "x favourable" divides the sparse time by that of the
    favourable distribution measured in this table (when it is in it)."""
    base = next((s["seconds"] for name, _, s, _ in rows if name == FAVOURABLE), None)
    print()
    print(f"Feature distributions at N = {n:,} (exact kNN on both paths):")
    print()
    print("| features | dense s | sparse s | speed-up | x favourable | sparse peak GB | ARI | "
          "clusters | outliers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, d, s, ari in rows:
        dense, _, speedup, ari_cell = _compared(d, s, ari)
        ratio = f"{s['seconds'] / base:.2f}x" if base else "–"
        print(f"| {name} | {dense} | {s['seconds']:.1f} | {speedup} | {ratio} | "
              f"{s['peak_gb']:.2f} | {ari_cell} | {s['clusters']} | {s['outliers']} |")


def plot(rows, path):
    """Two panels, time and peak memory against N, dense beside sparse."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "seconds", "seconds"), (axes[1], "peak_gb", "peak memory (GB)")):
        for name, idx, style in (("FastReID dense", 1, "o--"), ("project sparse", 2, "s-")):
            pts = [(row[0], row[idx][key]) for row in rows if row[idx] is not None]
            ax.plot(*zip(*pts), style, label=name)
        ax.set_xlabel("N (features)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Jaccard distance + DBSCAN, 512-d features, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
