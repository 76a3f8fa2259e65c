"""Which clustering settings give pseudo labels close to the identities? (issue 20)

    python benchmarks/pseudo_label_settings.py --data-seeds 0 1
    python benchmarks/pseudo_label_settings.py --data-seeds 0 1 --weights A.pth B.pth

Encodes the quality benchmark's target (benchmarks/configs/ablation.yml) training images and
captions once per data seed and per model (the pretrained weights the rows start from, and any
trained `--weights`), then clusters each modality with every setting of the grid as the
pseudo-label pass does (k-reciprocal Jaccard distance, DBSCAN, then OPLM) and prints each
setting's pairwise precision, recall, ARI and clusters per identity against the identities. Per
encoding it also prints how many of each row's 5 nearest rows show the same person: what bounds
any clustering of those features. Features are kept in float32 (the pass keeps float16 copies,
which can move a tie).

MONITORING ONLY: identity labels score the settings here, on the data seeds that choose them
(0 and 1); the held-out data seeds (2 and 3) are never read by this script's defaults.
"""
import argparse
import itertools
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, REPO)

from cpcl_plugin.clustering.neighbours import knn  # noqa: E402  (the path above)


def encoded_training_set(data_root, data_seed, weights, opts):
    """(image features, caption features, pair_image, image identities, caption identities) of
    the target's training split, encoded with `weights` (None: the pretrained weights)."""
    import torch
    from quality import row_config

    from cpcl_plugin import CPCLTrainer
    from cpcl_plugin.data.build import build_feature_loader, build_text_image_train_loader
    from cpcl_plugin.engine.pseudo_labels import monitoring_identities
    from cpcl_plugin.evaluation.features import extract_features
    from cpcl_plugin.modeling.build import load_trained_model
    cfg = row_config("full", 0, data_root, "", data_seed,
                     list(opts) + (["MODEL.WEIGHTS", weights] if weights else []))
    model = load_trained_model(cfg, "this benchmark") if weights else \
        CPCLTrainer.build_model(cfg).eval()
    train_set = build_text_image_train_loader(cfg).dataset
    with torch.no_grad():
        text_f, image_f, _ = extract_features(model, *build_feature_loader(cfg, train_set))
    return (np.asarray(image_f), np.asarray(text_f), np.asarray(train_set.pair_image),
            *monitoring_identities(cfg))


def neighbour_agreement(features, identities, k=5):
    """Share of each row's k nearest other rows (cosine, same modality) that show the same
    person, averaged over rows: how far any clustering of these features can be right."""
    others = knn(np.ascontiguousarray(features, dtype=np.float32), k + 1, "exact")[:, 1:]
    return float((identities[others] == identities[:, None]).mean())  # knn: own index first


def best_agreement(identities, k=5):
    """neighbour_agreement of perfect features: a person's other rows, at most k of them."""
    _, inverse, counts = np.unique(identities, return_inverse=True, return_counts=True)
    return float(np.minimum(counts[inverse] - 1, k).mean() / k)


def settings_quality(encoded, neighbours, eps, min_samples, k2, oplm_threshold):
    """Quality of the image and caption labels (after OPLM) of one clustering setting, from the
    (image, caption) neighbour lists of its k1."""
    from cpcl_plugin.clustering import cluster, mine_outliers, pseudo_label_quality
    image_f, text_f, pair_image, image_ids, caption_ids = encoded
    kwargs = dict(eps=eps, min_samples=min_samples, k1=neighbours[0].shape[1], k2=k2)
    y_v = cluster(image_f, neighbours=neighbours[0], **kwargs)
    y_t = cluster(text_f, neighbours=neighbours[1], **kwargs)
    if oplm_threshold is not None:
        y_v, y_t, _ = mine_outliers(y_v, y_t, pair_image, image_f, text_f, oplm_threshold)
    return {"image": pseudo_label_quality(y_v, image_ids),
            "text": pseudo_label_quality(y_t, caption_ids)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--weights", nargs="*", default=[],
                        help="trained checkpoints to encode with, besides the pretrained weights "
                             "(each used with every data seed; name them per seed with SEED=PATH)")
    # The grid that chose the row full_tuned's clustering (docs/benchmarks.md).
    parser.add_argument("--eps", nargs="+", type=float, default=[0.3, 0.4, 0.5])
    parser.add_argument("--min-samples", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--k1", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--k2", nargs="+", type=int, default=[2, 3, 6])
    parser.add_argument("--oplm-threshold", type=float, default=0.5,
                        help="PSEUDO.OPLM.THRESHOLD; a negative value leaves OPLM out")
    parser.add_argument("--data-root", default=os.path.join(REPO, "datasets"))
    parser.add_argument("--json", help="write every setting's quality here")
    parser.add_argument("--config", help="the target config (default: the quality benchmark's)")
    parser.add_argument("opts", nargs="*", help="config overrides, KEY VALUE pairs")
    args = parser.parse_args()
    threshold = None if args.oplm_threshold < 0 else args.oplm_threshold
    if args.config:  # as benchmarks/quality.py's row_config reads it
        args.opts = ["--config", os.path.abspath(args.config)] + list(args.opts)
    for w in args.weights:
        seed, _, path = w.rpartition("=")
        if seed and not seed.isdigit():
            parser.error(f"--weights {w}: write SEED=PATH with an integer data seed, or PATH alone.")
        if not os.path.isfile(path):
            parser.error(f"--weights {w}: no file {path}; name a checkpoint (model_final.pth).")
    rows = []
    for data_seed in args.data_seeds:
        models = [("pretrained", None)]
        for w in args.weights:
            seed, _, path = w.rpartition("=")
            if not seed or int(seed) == data_seed:
                models.append((os.path.basename(os.path.dirname(path)) + "/" +
                               os.path.basename(path), path))
        for name, weights in models:
            encoded = encoded_training_set(args.data_root, data_seed, weights, args.opts)
            image_f, text_f, _, image_ids, caption_ids = encoded
            agreement = {m: neighbour_agreement(f, ids) for m, f, ids in
                         (("image", image_f, image_ids), ("text", text_f, caption_ids))}
            print(f"data seed {data_seed} {name:<28} nearest 5 rows of the same person: "
                  f"images {100 * agreement['image']:.1f}% (perfect features: "
                  f"{100 * best_agreement(image_ids):.1f}%), captions "
                  f"{100 * agreement['text']:.1f}% ({100 * best_agreement(caption_ids):.1f}%)",
                  flush=True)
            # One search per k1 and modality, shared by every setting with that k1.
            lists = {k1: (knn(image_f, k1, "exact"), knn(text_f, k1, "exact")) for k1 in args.k1}
            for eps, ms, k1, k2 in itertools.product(args.eps, args.min_samples, args.k1, args.k2):
                q = settings_quality(encoded, lists[k1], eps, ms, k2, threshold)
                rows.append(dict(data_seed=data_seed, model=name, eps=eps, min_samples=ms,
                                 k1=k1, k2=k2, neighbour_agreement=agreement, **q))
                print(f"data seed {data_seed} {name:<28} eps {eps:.2f} min_samples {ms} k1 {k1:>2} "
                      f"k2 {k2}: " + "; ".join(
                          f"{m} P {100 * q[m]['precision']:5.1f}% R {100 * q[m]['recall']:5.1f}% "
                          f"ARI {q[m]['ari']:.3f} ({q[m]['clusters_per_identity']:.2f}/id, "
                          f"{100 * q[m]['outlier_share']:.0f}% out)" for m in ("image", "text")),
                      flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
