"""Clustering benchmark: the project's sparse Jaccard + DBSCAN against FastReID's dense path.

    python benchmarks/clustering.py                 # N = 5k to 68k; dense up to 20k
    python benchmarks/clustering.py --sizes 5000 20000 --dense-max 20000 --plot clustering.png

Features: 512-d unit vectors drawn around N / 6 identity centres (about six samples per identity,
as CUHK-PEDES has captions per identity), with per-sample noise so that some are outliers. Each
(path, N) runs in its own process, so that its peak resident memory is its own; both paths run in
this one script, side by side, on the same features. Labels are compared with the adjusted Rand
index. Prints a Markdown table.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(path, n, out):
    """In a child process: cluster N features with one path, save labels, print a JSON line."""
    sys.path.insert(0, REPO)
    import numpy as np
    import cpcl_plugin  # noqa: F401  (FastReID compat)
    from cpcl_plugin.clustering import clustered_features
    x = clustered_features(n, d=512, per_identity=6)
    start = time.perf_counter()
    if path == "sparse":
        from cpcl_plugin.clustering import cluster
        labels = cluster(x, eps=0.6, min_samples=4, k1=30, k2=6)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[5000, 10000, 20000, 34000, 68000])
    parser.add_argument("--dense-max", type=int, default=20000,
                        help="largest N for the dense path (it needs ~14 N^2 bytes)")
    parser.add_argument("--plot", help="write time and peak memory against N to this PNG file")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "N", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_one(args.child[0], int(args.child[1]), args.child[2])

    import tempfile
    import numpy as np
    from sklearn.metrics import adjusted_rand_score
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            result = {}
            for path in ("dense", "sparse"):
                if path == "dense" and n > args.dense_max:
                    continue
                out = os.path.join(tmp, f"{path}-{n}.npy")
                proc = subprocess.run([sys.executable, __file__, "--child", path, str(n), out],
                                      capture_output=True, text=True, check=True)
                result[path] = json.loads(proc.stdout.strip().splitlines()[-1])
                result[path]["labels"] = np.load(out)
            s, d = result["sparse"], result.get("dense")
            ari = adjusted_rand_score(d["labels"], s["labels"]) if d else None
            rows.append((n, d, s, ari))
    print("| N | dense s | dense peak GB | sparse s | sparse peak GB | speed-up | ARI | clusters | outliers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d, s, ari in rows:
        dense_cells = f"{d['seconds']:.1f} | {d['peak_gb']:.2f}" if d else "– | –"
        speedup = f"{d['seconds'] / s['seconds']:.1f}x" if d else "–"
        ari_cell = f"{ari:.4f}" if d else "–"
        print(f"| {n:,} | {dense_cells} | {s['seconds']:.1f} | {s['peak_gb']:.2f} | {speedup} | "
              f"{ari_cell} | {s['clusters']} | {s['outliers']} |")
    if args.plot:
        plot(rows, args.plot)


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
