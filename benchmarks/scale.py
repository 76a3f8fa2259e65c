"""Pseudo labels at pretraining scale: one modality's pass (kNN search, Jaccard distance, DBSCAN)
at CUHK-PEDES size with the exact and the approximate search side by side, and at a million rows.

    python benchmarks/scale.py                      # 68k exact vs approximate, then 1M (`make bench-scale`)
    python benchmarks/scale.py --sizes 200000 --compare-at 20000 --plot scale.png

Features: 512-d unit vectors around N / 6 identity centres (feature_distributions.py's
clustered_features, the clustering benchmark's), stored in float16 as the pseudo-label pass
stores them. Each run is its own process; its peak resident memory is measured from the features
on (the process with its imports and the float16 features, not the generator's temporaries).
One process: the ranks of a shared pass meet through collectives (a rank's share cannot be timed
alone), so several ranks are measured as real processes, not projected. Prints Markdown tables.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from feature_distributions import clustered_features  # beside this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(n, search, out):
    """In a child process: one modality's pass over n features; labels saved, a JSON line."""
    sys.path.insert(0, REPO)
    import numpy as np
    import cpcl_plugin  # noqa: F401  (FastReID compat)
    from cpcl_plugin.clustering import cluster, knn_share, pseudo_label_quality
    from cpcl_plugin.utils.memory import PeakMemory
    x, identities = clustered_features(n, with_identities=True)
    x = x.astype(np.float16)
    peak = PeakMemory()  # from here: the generator's float64 temporaries are not the pass's
    start = time.perf_counter()
    found = knn_share(x, 30, search, 0, 1)  # the whole search, with its measured recall
    neighbours = found.lists
    knn_seconds = time.perf_counter() - start
    labels = cluster(x, eps=0.6, min_samples=4, k1=30, k2=6, neighbours=neighbours)
    cluster_seconds = time.perf_counter() - start - knn_seconds
    result = {"knn_s": knn_seconds, "cluster_s": cluster_seconds,
              "peak_gb": peak.gigabytes()[0], "recall": found.recall, "nprobe": found.nprobe,
              "search": found.search,
              "clusters": int(labels.max() + 1), "outliers": int((labels < 0).sum()),
              # MONITORING: the generator's identities, to see what a disagreement costs.
              "identity_ari": pseudo_label_quality(labels, identities)["ari"]}
    np.save(out, labels)
    print(json.dumps(result))


def measure(n, search, tmp):
    out = os.path.join(tmp, f"{search}-{n}.npy")
    proc = subprocess.run([sys.executable, __file__, "--child", str(n), search, out],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{search} search at N = {n} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["labels"] = out
    return result


def agreement(labels_a, labels_b):
    """Adjusted Rand index of two labelings, each outlier its own cluster."""
    from cpcl_plugin.clustering import outliers_as_singletons
    from sklearn.metrics import adjusted_rand_score
    return adjusted_rand_score(outliers_as_singletons(labels_a), outliers_as_singletons(labels_b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare-at", type=int, nargs="*", default=[68000],
                        help="N at which exact and approximate run side by side (default: "
                             "%(default)s, CUHK-PEDES' captions)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000000],
                        help="N of the approximate-only rows (default: %(default)s)")
    parser.add_argument("--plot", help="write time and peak memory against N to this PNG file")
    parser.add_argument("--child", nargs=3, metavar=("N", "SEARCH", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_one(int(args.child[0]), args.child[1], args.child[2])

    import tempfile
    import numpy as np
    sys.path.insert(0, REPO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.compare_at:
            exact, approx = measure(n, "exact", tmp), measure(n, "approximate", tmp)
            ari = agreement(np.load(exact["labels"]), np.load(approx["labels"]))
            rows += [(n, "exact", exact, None), (n, "approximate", approx, ari)]
        for n in args.sizes:
            rows.append((n, "approximate", measure(n, "approximate", tmp), None))
    print(f"One modality's pass, {os.cpu_count()} CPU cores, one process (kNN k = 30, Jaccard "
          f"k1 = 30, k2 = 6, DBSCAN eps = 0.6, min_samples = 4):")
    print()
    print("| N | search | recall (NPROBE) | kNN s | Jaccard + DBSCAN s | total s | peak GB | "
          "ARI vs exact | ARI vs identities | clusters | outliers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, search, r, ari in rows:
        ari_cell = f"{ari:.4f}" if ari is not None else "–"
        how = "1 (exact)" if r["search"] == "exact" else f"{r['recall']:.3f} ({r['nprobe']})"
        print(f"| {n:,} | {search} | {how} | {r['knn_s']:.1f} | {r['cluster_s']:.1f} | "
              f"{r['knn_s'] + r['cluster_s']:.1f} | {r['peak_gb']:.2f} | {ari_cell} | "
              f"{r['identity_ari']:.4f} | {r['clusters']:,} | {r['outliers']:,} |")
    print()
    print("ARI: adjusted Rand index, each outlier its own cluster; against the identities the "
          "features were drawn around (monitoring, not used by the clustering). Recall: the share of "
          "each row's 29 nearest other rows in its list, measured by the search itself on 1,000 "
          "sampled rows, at the NPROBE it settled on (PSEUDO.IVF.MIN_RECALL 0.95, MAX_NPROBE 64).")
    if args.plot:
        plot(rows, args.plot)


def plot(rows, path):
    """Time (kNN and the rest stacked) and peak memory of each run, by N and search."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{n // 1000}k\n{search}" for n, search, _, _ in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    knn_s = [r["knn_s"] for _, _, r, _ in rows]
    axes[0].bar(labels, knn_s, label="kNN search")
    axes[0].bar(labels, [r["cluster_s"] for _, _, r, _ in rows], bottom=knn_s,
                label="Jaccard + DBSCAN")
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    axes[1].bar(labels, [r["peak_gb"] for _, _, r, _ in rows], color="tab:gray")
    axes[1].set_ylabel("peak memory (GB)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"One modality's pseudo-label pass, {os.cpu_count()} CPU cores, one process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
