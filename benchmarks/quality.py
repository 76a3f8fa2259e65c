"""Quality benchmark: the CPCL ablation on the synthetic dataset, mean and spread over seeds.

    python benchmarks/quality.py                        # every row, seeds 0 1 2 (under an hour)
    python benchmarks/quality.py --rows itc full --seeds 0

Same model (CPCL-Tiny, random init), data and schedule (benchmarks/configs/ablation.yml) for every
row; only the losses and the source of the labels change:

- untrained: the randomly initialised model, evaluated;
- itc: instance-level image-text contrastive loss only, the weakly supervised baseline;
- pmm: + the prototype memory's intra-modal losses (image-image, text-text) on pseudo labels;
- hcm: + the cross-modal prototype losses through the co-occurrence of labels;
- full: + OPLM outlier mining: full CPCL;
- true_cpcl: full CPCL's losses with the true identity labels in place of the clustering: what the
  prototype losses give when the labels are perfect;
- oracle: the supervised upper bound: ITC + SDM (IRRA's similarity distribution matching) on the
  true identities, the fully supervised objective of the field, without prototype losses.
The last two rows READ IDENTITY LABELS FOR TRAINING, on purpose, and only here: they replace the
pseudo-label hook's clustering inside this script.

Each (row, seed) trains in its own process; two run at a time, one thread each. The seed is the
training seed (initialisation, sampling, augmentation); the dataset is the same for all. The
pseudo-label quality of the last epoch (pairwise precision / recall and ARI of the image labels
against the identities) is monitoring, computed after training. Prints a Markdown table and
writes a bar plot with --plot.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "benchmarks", "configs", "ablation.yml")

ROWS = {
    "untrained": ("untrained model", None),
    "itc": ("ITC only (instance level, baseline)",
            ["PSEUDO.ENABLED", "False"]),
    "pmm": ("+ PMM intra-modal prototype losses",
            ["MODEL.CPCL.CROSS_WEIGHT", "0.0", "PSEUDO.OPLM.ENABLED", "False"]),
    "hcm": ("+ HCM cross-modal prototype losses",
            ["PSEUDO.OPLM.ENABLED", "False"]),
    "full": ("+ OPLM (full CPCL)", []),
    "true_cpcl": ("full CPCL losses on true identities", []),
    "oracle": ("ITC + SDM on true identities (supervised upper bound)",
               ["MODEL.CPCL.SDM_WEIGHT", "1.0", "MODEL.CPCL.INTRA_WEIGHT", "0.0",
                "MODEL.CPCL.CROSS_WEIGHT", "0.0"]),
}
TRUE_LABEL_ROWS = ("true_cpcl", "oracle")
METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")


def true_identity_clustering(hook):
    """Replace the hook's clustering by the true identities (the true-label rows only)."""
    def true_identities(image_f, text_f, pair_image, image_valid):
        image_ids, caption_ids = hook._monitoring_identities()
        _, image_labels = np.unique(image_ids, return_inverse=True)
        _, text_labels = np.unique(caption_ids, return_inverse=True)
        n = int(image_labels.max()) + 1
        stats = {"skipped_images": 0, "image_clusters": n, "image_outliers": 0,
                 "text_clusters": n, "text_outliers": 0, "image_recovered": 0,
                 "text_recovered": 0}
        return image_labels, text_labels, stats
    hook._cluster = true_identities


def run_one(row, seed, data_root, output_dir, extra_opts):
    """In a child process: train (or only evaluate) one row with one seed; print a JSON line."""
    import torch
    torch.set_num_threads(1)
    from fastreid.utils.env import seed_all_rng
    from fastreid.utils.logger import setup_logger

    from cpcl_plugin import CPCLTrainer, load_config
    from cpcl_plugin.clustering import pseudo_label_quality
    setup_logger(output_dir, name="cpcl_plugin")
    setup_logger(output_dir, name="fastreid")
    opts = ["DATASETS.ROOT", data_root, "OUTPUT_DIR", output_dir, "SEED", str(seed)]
    cfg = load_config(CONFIG, opts + list(ROWS[row][1] or []) + list(extra_opts))
    seed_all_rng(seed)
    start = time.perf_counter()
    if row == "untrained":
        results = CPCLTrainer.test(cfg, CPCLTrainer.build_model(cfg))
        quality = None
    else:
        trainer = CPCLTrainer(cfg)
        if row in TRUE_LABEL_ROWS:
            true_identity_clustering(trainer.pseudo_label_hook)
        trainer.resume_or_load(resume=False)
        results = trainer.train()
        hook = trainer.pseudo_label_hook
        quality = None
        if hook.image_labels is not None:
            image_ids, _ = hook._monitoring_identities()  # MONITORING: after training
            quality = pseudo_label_quality(hook.image_labels, image_ids)
    out = {k: float(results[k]) for k in METRICS}
    out.update(seconds=time.perf_counter() - start, quality=quality)
    print("RESULT " + json.dumps(out), flush=True)


def launch(row, seed, data_root, work, extra_opts):
    output_dir = os.path.join(work, f"{row}-{seed}")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", row, str(seed), data_root,
                           output_dir, json.dumps(extra_opts)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{row} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def prepare_data(data_root, extra_opts):
    """Generate the synthetic dataset once, before the parallel runs."""
    from cpcl_plugin import load_config
    from cpcl_plugin.data import build_dataset
    cfg = load_config(CONFIG, ["DATASETS.ROOT", data_root] + list(extra_opts))
    data = build_dataset(cfg, cfg.DATASETS.NAMES[0])
    return data.statistics_table()


def table(results, rows, seeds):
    lines = ["| row | R1 | R5 | R10 | mAP | mINP | image pseudo labels: precision / recall / ARI "
             "| minutes per run |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = [results[(row, s)] for s in seeds]
        cells = []
        for k in METRICS:
            v = np.array([r[k] for r in runs])
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}")
        qs = [r["quality"] for r in runs if r["quality"]]
        q = ("–" if not qs else
             f"{100 * np.mean([x['precision'] for x in qs]):.1f}% / "
             f"{100 * np.mean([x['recall'] for x in qs]):.1f}% / "
             f"{np.mean([x['ari'] for x in qs]):.3f}")
        minutes = np.mean([r["seconds"] for r in runs]) / 60
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | {q} | {minutes:.1f} |")
    return "\n".join(lines)


def plot(results, rows, seeds, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(rows))
    for i, (k, label) in enumerate((("Rank-1", "R1"), ("mAP", "mAP"))):
        vals = np.array([[results[(r, s)][k] for s in seeds] for r in rows])
        spread = vals.std(1, ddof=1) if len(seeds) > 1 else np.zeros(len(rows))  # as the table
        ax.bar(x + (i - 0.5) * 0.38, vals.mean(1), 0.38, yerr=spread, capsize=3, label=label)
    ax.set_xticks(x, [r for r in rows])
    ax.set_ylabel("%")
    ax.set_title(f"Synthetic ablation, mean and std over {len(seeds)} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--data-root", default=os.path.join(REPO, "datasets"))
    parser.add_argument("--plot", help="write a bar plot of R1 and mAP to this PNG file")
    parser.add_argument("opts", nargs="*", help="config overrides for every row, KEY VALUE pairs")
    args = parser.parse_args()
    if args.child:
        row, seed, data_root, output_dir, extra = args.child
        return run_one(row, int(seed), data_root, output_dir, json.loads(extra))
    start = time.perf_counter()
    stats = prepare_data(args.data_root, args.opts)
    jobs = [(row, seed) for row in args.rows for seed in args.seeds]
    # Longest first (the untrained rows only evaluate), so the two slots finish together.
    jobs.sort(key=lambda j: j[0] == "untrained")
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.jobs) as pool:
        futures = {job: pool.submit(launch, *job, args.data_root, work, args.opts) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    print(f"Synthetic dataset (benchmarks/configs/ablation.yml):\n\n{stats}\n")
    print(table(results, args.rows, args.seeds))
    print(f"\nSeeds {', '.join(map(str, args.seeds))}; mean ± standard deviation; {args.jobs} runs "
          f"at a time, one thread each; whole benchmark {(time.perf_counter() - start) / 60:.1f} "
          f"minutes.")
    if args.plot:
        plot(results, args.rows, args.seeds, args.plot)


if __name__ == "__main__":
    main()
