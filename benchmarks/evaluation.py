"""Evaluation speed: text-to-image metrics against FastReID's evaluate_rank and an argsort reference.

    python benchmarks/evaluation.py                     # CUHK-PEDES test shape, then ICFG-PEDES
    python benchmarks/evaluation.py --skip-icfg

Similarities come from generated 512-d features: identity centres plus noise, so that positives
rank high but not always first, in float32 as the evaluator computes them. At the CUHK-PEDES test
shape (6,156 captions x 3,074 images, 1,000 identities) three implementations run side by side in
this process on the same matrix:
- the project's `t2i_metrics` (ranks of the positives only, by comparison counting);
- a vectorised argsort reference, written the way IRRA's `rank()` computes the metrics (sort every
  row, gather the matches, cumulative sums), with a stable sort so ties agree;
- FastReID's `evaluate_rank`, pure-Python path (its Cython path compiles at run time), with
  distance = -similarity, queries at camid 0 and gallery at camid 1.
At the ICFG-PEDES test shape (19,848 x 19,848) the project's function and the argsort reference
each run in a child process, so that each peak resident memory (similarity matrix included) is
its own. Prints Markdown tables.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CUHK = (6156, 3074, 1000)
ICFG = (19848, 19848, 1000)


def similarity_case(num_query, num_gallery, num_ids, seed=0, dim=512, noise=2.6):
    """(similarity float32, query ids, gallery ids): every identity has gallery images."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim)).astype(np.float32)
    gallery_ids = np.concatenate([np.arange(num_ids),
                                  rng.integers(0, num_ids, num_gallery - num_ids)])
    query_ids = rng.choice(gallery_ids, num_query)

    def features(ids):
        x = centres[ids] + noise * rng.standard_normal((len(ids), dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return features(query_ids) @ features(gallery_ids).T, query_ids, gallery_ids


def argsort_reference(similarity, query_ids, gallery_ids, max_rank=10):
    """R1/5/10, mAP, mINP by sorting every row (the vectorised way, as IRRA's rank())."""
    import torch
    sim = torch.as_tensor(similarity)
    order = torch.argsort(sim, dim=1, descending=True, stable=True)
    matches = torch.as_tensor(gallery_ids)[order] == torch.as_tensor(query_ids)[:, None]
    keep = matches.any(dim=1)
    matches = matches[keep]
    cmc = (matches[:, :max_rank].cumsum(1) > 0).float().mean(0)
    hits = matches.cumsum(1)
    num_rel = matches.sum(1)
    positions = torch.arange(1, matches.shape[1] + 1)
    ap = ((hits / positions) * matches).sum(1) / num_rel
    last = matches.shape[1] - torch.argmax(matches.flip(1).int(), dim=1)
    inp = num_rel / last
    return {"R1": 100 * cmc[0].item(), "R5": 100 * cmc[4].item(), "R10": 100 * cmc[9].item(),
            "mAP": 100 * ap.double().mean().item(), "mINP": 100 * inp.double().mean().item()}


def fastreid_reference(similarity, query_ids, gallery_ids):
    from fastreid.evaluation.rank import evaluate_rank
    cmc, ap, inp = evaluate_rank(-similarity, query_ids, gallery_ids,
                                 np.zeros(len(query_ids), int), np.ones(len(gallery_ids), int),
                                 max_rank=10, use_cython=False)
    return {"R1": 100 * cmc[0], "R5": 100 * cmc[4], "R10": 100 * cmc[9],
            "mAP": 100 * float(np.mean(ap)), "mINP": 100 * float(np.mean(inp))}


def project(similarity, query_ids, gallery_ids):
    from cpcl_plugin.evaluation import t2i_metrics
    return dict(t2i_metrics(similarity, query_ids, gallery_ids))


def timed(fn, *args, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def child(method, shape):
    """In a child process: one method at one shape; prints a JSON line with time and peak RSS."""
    import cpcl_plugin  # noqa: F401  (FastReID compat)
    sim, qp, gp = similarity_case(*shape)
    fn = {"project": project, "argsort": argsort_reference}[method]
    seconds, metrics = timed(fn, sim, qp, gp)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({"seconds": seconds, "peak_gb": peak_gb, "metrics": metrics}))


def run_child(method, shape):
    out = subprocess.run([sys.executable, __file__, "--child", method, json.dumps(shape)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(m):
    return " / ".join(f"{m[k]:.4f}" for k in ("R1", "R5", "R10", "mAP", "mINP"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--skip-icfg", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the fast methods")
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], json.loads(args.child[1]))
    import cpcl_plugin  # noqa: F401
    import torch

    sim, qp, gp = similarity_case(*CUHK)
    rows = []
    t_project, m_project = timed(project, sim, qp, gp, repeat=args.repeat)
    t_argsort, m_argsort = timed(argsort_reference, sim, qp, gp, repeat=args.repeat)
    t_fastreid, m_fastreid = timed(fastreid_reference, sim, qp, gp)
    rows.append(("project `t2i_metrics`", t_project, m_project))
    rows.append(("vectorised argsort reference (IRRA-style)", t_argsort, m_argsort))
    rows.append(("FastReID `evaluate_rank` (Python)", t_fastreid, m_fastreid))
    print(f"Text-to-image metrics on a {CUHK[0]:,} x {CUHK[1]:,} similarity matrix (CUHK-PEDES "
          f"test shape), {torch.get_num_threads()} threads, best of {args.repeat} for the first "
          f"two:\n")
    print("| implementation | seconds | speed-up of the project | R1 / R5 / R10 / mAP / mINP |")
    print("|---|---|---|---|")
    for name, seconds, metrics in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / t_project:.1f}x | {fmt(metrics)} |")
    worst = max(abs(m_project[k] - m[k]) for _, _, m in rows for k in m_project)
    print(f"\nLargest difference between the three in any metric: {worst:.2e} percentage points "
          f"(FastReID accumulates its CMC in float32).")

    if args.skip_icfg:
        return
    print(f"\nAt the ICFG-PEDES test shape ({ICFG[0]:,} x {ICFG[1]:,}), each in its own process "
          f"(peak resident memory includes the 1.6 GB similarity matrix and the features):\n")
    print("| implementation | seconds | peak memory (GB) | R1 / R5 / R10 / mAP / mINP |")
    print("|---|---|---|---|")
    for name, method in (("project `t2i_metrics`", "project"),
                         ("vectorised argsort reference (IRRA-style)", "argsort")):
        r = run_child(method, ICFG)
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_gb']:.2f} | {fmt(r['metrics'])} |")


if __name__ == "__main__":
    main()
