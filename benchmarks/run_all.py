"""Run every benchmark and write docs/benchmarks.md with what each printed (`make bench`).

    python benchmarks/run_all.py                    # all but diagnosis and scale (Makefile: time)
    python benchmarks/run_all.py --only evaluation throughput
    python benchmarks/run_all.py --only diagnosis   # one suspect at a time (`make bench-diagnosis`)
    python benchmarks/run_all.py --only scale       # 68k and 1M rows (`make bench-scale`)

Each benchmark runs as its own process, one after the other (the speed measurements first, while
nothing else runs); its standard output goes into the document verbatim under the command that
produced it, and its plot, if it makes one, into docs/img/. Nothing in those sections is typed by
hand: a benchmark left out with --only keeps the section of the previous document. The last
section, `<!-- benchmark: analysis -->`, is the exception: written by hand, kept as it is.
"""
import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

import torch
from quality import FULL_ROWS, MAIN_ROWS  # benchmarks/quality.py, beside this script

# The headline rows (the quality section, in `make bench`) and the rows that check the world
# (validity criteria d and c', in the ablation section).
QUESTION_ROWS = ["zeroshot", "itc", "full", "full_tuned"]
CHECK_ROWS = ["itc_id", "itc_pk", "oracle_pk"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "benchmarks.md")
IMG = os.path.join(REPO, "docs", "img")

# (name, title, script arguments, plot file or None, what it shows)
BENCHMARKS = [
    ("evaluation", "Evaluation speed", ["benchmarks/evaluation.py"], None,
     "Text-to-image metrics (R1/5/10, mAP, mINP) at the CUHK-PEDES and ICFG-PEDES test shapes, "
     "against FastReID's `evaluate_rank` and a vectorised argsort reference."),
    ("clustering", "Clustering scale",
     ["benchmarks/clustering.py", "--plot", "docs/img/clustering.png"], "clustering.png",
     "The per-epoch k-reciprocal Jaccard distance + DBSCAN, the project's sparse path beside "
     "FastReID's dense `compute_jaccard_distance` while the dense one fits in memory: over N, "
     "then over feature distributions that are hard for a sparse method (dense regions, "
     "duplicates, a narrow cone, hubs, power-law identity sizes, a trained model's captions)."),
    ("scale", "Pseudo labels at pretraining scale",
     ["benchmarks/scale.py", "--plot", "docs/img/scale.png"], "scale.png",
     "One modality's pseudo-label pass at CUHK-PEDES size with the exact and the approximate "
     "kNN search side by side, and at a million rows (LUPerson-T and MALS have 1.3M and 1.5M "
     "pairs), on this machine, one process. "
     "Not part of `make bench`: `make bench-scale` (about 10 minutes)."),
    ("throughput", "Training throughput", ["benchmarks/throughput.py"], None,
     "Steps per second of `CPCLTrainer` against a plain PyTorch loop over the same model, "
     "optimiser, batches and loss, and the pseudo-label pass's share of an epoch."),
    ("dataset_validation", "Dataset validation", ["benchmarks/dataset_validation.py"], None,
     "Loading and validating a CUHK-PEDES-sized annotation file, image existence included."),
    ("quality", "Quality: does CPCL beat ITC on the synthetic dataset?",
     ["benchmarks/quality.py", "--rows", *QUESTION_ROWS, "--plot", "docs/img/quality.png",
      "--ari-plot", "docs/img/pseudo_label_ari.png", "--results", "RUNS"],
     ["quality.png", "pseudo_label_ari.png"],
     "The question in brief: full CPCL as the paper builds it (P x K batches over its pseudo "
     "labels) and its departure `full_tuned` (shuffled batches, the clustering chosen on data "
     "seeds 0 and 1, labels from epoch 4) against ITC "
     "alone, three training seeds each, on the world shaped like CUHK-PEDES (the cuhk preset, "
     "data seed 0). Every row starts from the same tiny CLIP pretrained on the synthetic web "
     "(configs/CPCL/synthetic-web.yml). The world's validity criteria, every ablation row and the "
     "held-out data seeds: the next section."),
    ("ablation", "Ablation and validity on the synthetic dataset",
     ["benchmarks/quality.py", "--rows", *MAIN_ROWS, *CHECK_ROWS, "--plot",
      "docs/img/ablation.png", "--held-out", "2", "3", "--held-out-rows", "zeroshot", "itc",
      *FULL_ROWS, "true_cpcl", "oracle", *CHECK_ROWS,
      "--held-out-seeds", "0", "1", "2", "--results", "RUNS"], "ablation.png",
     "Does each part of CPCL help, and how far is it from training on the true identities? The "
     "validity criteria come first: a world that fails one cannot answer the question. The "
     "target settings were chosen on data seeds 0 and 1; data seeds 2 and 3 are held out. The "
     "true-identity rows read the identity labels for training, in this benchmark only. Not "
     "part of `make bench` (87 training runs, about 12 hours on two cores): `make "
     "bench-ablation`, which reuses the previous section's runs of the same commit."),
    ("diagnosis", "Diagnosis: why CPCL does not beat ITC here",
     ["benchmarks/quality.py", "--rows", "full", "true_cpcl_no_t2t", "full_no_t2t", "full_m09",
      "full_tau", "full_sdm", "full_k8", "full_late", "--seeds", "0", "1"], None,
     "Full CPCL with one suspect changed at a time, on the quality benchmark's target (data seed "
     "0), training seeds 0 and 1 (ITC and the true-identity rows: the quality section above, "
     "same target and schedule). Not part of `make bench` (16 runs, about 1.5-2 hours): "
     "`make bench-diagnosis`."),
]
# Run only when named with --only (too long for `make bench`); their sections are kept otherwise.
ON_REQUEST = ("clustering", "scale", "ablation", "diagnosis")
# The name of the document's last section, written by hand from the numbers above it.
ANALYSIS = "analysis"


def previous_sections():
    """{name: section text} of the existing document, to keep sections not re-run."""
    if not os.path.isfile(DOC):
        return {}
    text = open(DOC, encoding="utf-8").read()
    parts = re.split(r"(?m)^<!-- benchmark: (\w+) -->\n", text)
    return {parts[i]: parts[i + 1].rstrip() + "\n" for i in range(1, len(parts) - 1, 2)}


def with_runs_file(args):
    """Replace the placeholder RUNS of `--results RUNS` by this commit's file of finished quality
    runs, which the quality and the ablation sections share (the ablation reuses the quality
    section's runs); a checkout with uncommitted changes keeps none, its runs may differ."""
    if "RUNS" not in args:
        return args
    i, commit = args.index("RUNS"), _commit()
    if commit == "unknown" or commit.endswith("+changes"):
        return args[:i - 1] + args[i + 1:]
    return args[:i] + [f"logs/bench/quality-runs-{commit}.json"] + args[i + 1:]


def run(name, title, args, image, what):
    args = with_runs_file(args)
    if "--results" in args:
        os.makedirs(os.path.dirname(os.path.join(REPO, args[args.index("--results") + 1])),
                    exist_ok=True)
    command = "python " + " ".join(args)
    print(f"== {command}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode:
        raise SystemExit(f"{command} failed:\n{proc.stderr[-4000:]}")
    lines = [f"## {title}", "", what, "",
             f"Command: `{command}` ({minutes:.1f} minutes; run {datetime.date.today()} at "
             f"commit {_commit()})", "", proc.stdout.strip(), ""]
    for picture in ([image] if isinstance(image, str) else image or []):
        lines += [f"![{title}](img/{picture})", ""]
    print(proc.stdout, flush=True)
    return "\n".join(lines)


def _commit():
    """The checkout's short commit, marked "+changes" when files other than this script's own
    outputs (docs/) differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs").strip()
    return (git("rev-parse", "--short", "HEAD").strip() or "unknown") + ("+changes" if dirty else "")


def previous_notes():
    """The notes ("> " lines) above the first section of the existing document, kept: they say
    which sections predate a change."""
    if not os.path.isfile(DOC):
        return []
    head = open(DOC, encoding="utf-8").read().split("<!-- benchmark:", 1)[0]
    return [line for line in head.splitlines() if line.startswith("> ")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS])
    args = parser.parse_args()
    os.makedirs(IMG, exist_ok=True)
    sections = previous_sections()
    for name, title, script_args, image, what in BENCHMARKS:
        if (args.only is None and name not in ON_REQUEST) or (args.only and name in args.only):
            sections[name] = run(name, title, script_args, image, what)
    header = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python benchmarks/run_all.py`): every number below is what the "
        "command above it printed, except in the last section, the analysis, which is written by "
        "hand from those numbers and kept as it is. Speeds are ratios measured side by side in one "
        "script on one machine.",
        "",
        f"Last run: {datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, no GPU" if not torch.cuda.is_available() else
        f"Last run: {datetime.date.today().isoformat()}, GPU {torch.cuda.get_device_name(0)}",
        "",
    ] + [note for line in previous_notes() for note in (line, "")]
    # The analysis is the one section written by hand (from the runs above it); kept as it is.
    body = [f"<!-- benchmark: {name} -->\n{sections[name]}"
            for name in [b[0] for b in BENCHMARKS] + [ANALYSIS] if name in sections]
    with open(DOC + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n" + "\n".join(body))
    os.replace(DOC + ".tmp", DOC)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
