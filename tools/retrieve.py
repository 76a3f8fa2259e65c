#!/usr/bin/env python
"""Type a description, get the matching people: the top-k gallery images, printed and drawn.

    python tools/retrieve.py --config-file configs/CPCL/synthetic.yml \
        --query "a woman in a red coat" --split test \
        MODEL.WEIGHTS logs/cpcl/synthetic/model_final.pth
    python tools/retrieve.py --config-file CFG --queries-file queries.txt --gallery-dir photos/ \
        --save-index gallery.npz MODEL.WEIGHTS model.pth      # encode the gallery once ...
    python tools/retrieve.py --config-file CFG --query "..." --index gallery.npz \
        MODEL.WEIGHTS model.pth                               # ... and query it again

The gallery is a folder of images (--gallery-dir), a dataset split (--split val|test of the
first DATASETS.TESTS dataset, or --dataset NAME), or a saved index (--index). For each query it
prints the top-k image paths with their cosine scores and writes a picture (the query above the
images) to --output-dir. Borders are green / red when the identities are known: the gallery is a
dataset split and the query is one of its captions (or --query-id is given); grey otherwise.
Runs on CPU (MODEL.DEVICE cpu) or GPU. Exit status 2 with one sentence on bad input.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpcl_plugin import ConfigError, DatasetError, load_config  # noqa: E402
from cpcl_plugin.data import build_dataset, parse_test_name  # noqa: E402
from cpcl_plugin.engine.checkpoint import load_trained_model  # noqa: E402
from cpcl_plugin.retrieval import GalleryIndex, encode_queries, list_images  # noqa: E402
from cpcl_plugin.visualization import draw_ranked_list  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True, help="the config the model was trained with")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="one description, in quotes")
    q.add_argument("--queries-file", help="a text file, one description per line")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--gallery-dir", help="a folder of images (searched recursively)")
    g.add_argument("--split", choices=("val", "test"), help="a split of --dataset")
    g.add_argument("--index", help="a gallery index saved earlier with --save-index")
    p.add_argument("--dataset", help="dataset of --split (default: the first DATASETS.TESTS)")
    p.add_argument("--query-id", type=int, help="identity of the query, for the borders")
    p.add_argument("--save-index", help="save the gallery index to this .npz file")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--output-dir", default="", help="where pictures go (default: "
                                                    "OUTPUT_DIR/retrieval)")
    p.add_argument("opts", nargs="*", help="config overrides, KEY VALUE pairs, e.g. "
                                           "MODEL.WEIGHTS model.pth")
    return p.parse_intermixed_args(argv)


def read_queries(args):
    if args.query is not None:
        return [args.query]
    if not os.path.isfile(args.queries_file):
        raise ConfigError(f"Queries file {args.queries_file} does not exist.")
    with open(args.queries_file, encoding="utf-8") as f:
        queries = [line.strip() for line in f if line.strip()]
    if not queries:
        raise ConfigError(f"Queries file {args.queries_file} has no queries: write one "
                          f"description per line.")
    return queries


def gallery_and_caption_ids(args, cfg, model):
    """(GalleryIndex, {caption: identity} of the split, empty for folders and indexes)."""
    if args.index:
        return GalleryIndex.load(args.index, model), {}
    if args.gallery_dir:
        return GalleryIndex.build(cfg, model, list_images(args.gallery_dir)), {}
    name = args.dataset or parse_test_name(cfg.DATASETS.TESTS[0])[0]
    records = build_dataset(cfg, name).split(args.split)
    caption_ids = {c: r.pid for r in records for c in r.captions}
    return GalleryIndex.build(cfg, model, [r.image_path for r in records],
                              [r.pid for r in records]), caption_ids


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        if args.topk < 1:
            raise ConfigError(f"--topk must be at least 1, got {args.topk}.")
        queries = read_queries(args)
        output_dir = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "retrieval")
        try:  # before minutes of encoding, not after
            os.makedirs(output_dir, exist_ok=True)
            if args.save_index:
                os.makedirs(os.path.dirname(os.path.abspath(args.save_index)), exist_ok=True)
        except OSError as err:
            raise ConfigError(f"Cannot write to {err.filename}: {err.strerror}.") from None
        model = load_trained_model(cfg, "tools/retrieve.py")
        query_f = encode_queries(cfg, model, queries)
        index, caption_ids = gallery_and_caption_ids(args, cfg, model)
        if args.save_index:
            index.save(args.save_index)
            print(f"Saved the gallery index ({len(index)} images) to {args.save_index}")
        scores, rows = index.search(query_f, args.topk)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for i, query in enumerate(queries):
        query_id = args.query_id if args.query_id is not None else caption_ids.get(query)
        paths = [index.image_paths[r] for r in rows[i]]
        correct = [None if query_id is None or index.pids[r] < 0 else bool(index.pids[r] == query_id)
                   for r in rows[i]]
        print(f"Query {i + 1}: {query}")
        for rank, (path, score, ok) in enumerate(zip(paths, scores[i], correct), start=1):
            mark = {True: "  [same identity]", False: "  [other identity]", None: ""}[ok]
            print(f"  {rank:3d}. {score:.4f}  {path}{mark}")
        picture = draw_ranked_list(query, paths, scores[i], correct,
                                   os.path.join(output_dir, f"query_{i + 1:03d}.png"))
        print(f"  picture: {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
