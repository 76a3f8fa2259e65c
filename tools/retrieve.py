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
prints the top-k image paths with their cosine scores and draws a picture into --output-dir
(query_001.png, query_002.png, ...: a new number for every query, never overwriting one), listed
with its query in index.html and index.csv there. Borders are green / red when the identities
are known: the gallery is a dataset split and the query is one of its captions (or --query-id
is given); grey otherwise. With the identity, the picture and the printout add the query's AP,
the rank of its first true match and its ground-truth images. Files of a --gallery-dir that
cannot be read are skipped and listed in one warning (--strict: an error instead). Progress goes
to stderr, results to stdout. Runs on CPU (MODEL.DEVICE cpu) or GPU. Exit status 2 with one
sentence on bad input.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpcl_plugin import ConfigError, DatasetError, load_config  # noqa: E402
from cpcl_plugin.data import build_dataset, parse_test_name  # noqa: E402
from cpcl_plugin.modeling import load_trained_model  # noqa: E402
from cpcl_plugin.retrieval import (IMAGE_EXTENSIONS, GalleryIndex, check_queries,  # noqa: E402
                                   encode_queries, list_images)
from cpcl_plugin.utils.progress import console_logging, track  # noqa: E402
from cpcl_plugin.evaluation.visualization import (draw_query, new_picture_path,  # noqa: E402
                                       write_picture_index)

logger = logging.getLogger("cpcl_plugin.retrieve")

LISTED = 20  # unreadable files named in the warning; the rest go to a file beside the pictures


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True,
                   help="The config the model was trained with (required).")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="One description, in quotes (this or --queries-file).")
    q.add_argument("--queries-file",
                   help="A text file with one description per line (this or --query).")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--gallery-dir", help="Search a folder of images: its %s files, subfolders "
                                         "included (one of the three galleries)."
                   % ", ".join(IMAGE_EXTENSIONS))
    g.add_argument("--split", choices=("val", "test"),
                   help="Search this split of --dataset (one of the three galleries).")
    g.add_argument("--index", help="Search a gallery index saved earlier with --save-index (one "
                                   "of the three galleries).")
    p.add_argument("--dataset", help="The dataset of --split (default: the first DATASETS.TESTS "
                                     "entry).")
    p.add_argument("--query-id", type=int,
                   help="The identity of every query, for the frames, AP and ground truth, when "
                        "the gallery's identities are known (default: none given; a query that "
                        "is one of the --split's captions has that caption's identity).")
    p.add_argument("--save-index", help="Also save the gallery index to this .npz file, to reuse "
                                        "with --index (default: not saved).")
    p.add_argument("--topk", type=int, default=10,
                   help="How many gallery images to print and draw per query "
                        "(default: %(default)s).")
    p.add_argument("--strict", action="store_true",
                   help="With --gallery-dir, stop with an error that lists the files that cannot "
                        "be read, instead of skipping them with one warning "
                        "(default: %(default)s).")
    p.add_argument("--output-dir", default="",
                   help="Folder of the pictures, index.html and index.csv "
                        "(default: OUTPUT_DIR/retrieval).")
    p.add_argument("opts", nargs="*",
                   help="Config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth "
                        "(default: none).")
    return p.parse_intermixed_args(argv)


def read_queries(args):
    if args.query is not None:
        queries = [args.query]
    else:
        if not os.path.isfile(args.queries_file):
            raise ConfigError(f"Queries file {args.queries_file} does not exist.")
        with open(args.queries_file, encoding="utf-8-sig") as f:  # a BOM is not part of a query
            queries = [line.strip() for line in f if line.strip()]
        if not queries:
            raise ConfigError(f"Queries file {args.queries_file} has no queries: write one "
                              f"description per line.")
    check_queries(queries)
    return queries


def _file_list(skipped):
    return ", ".join(f"{path} ({' '.join(reason.split())})" for path, reason in skipped)


def report_unreadable(args, skipped, num_files, output_dir):
    """Gallery files that could not be read: with --strict one DatasetError, else one warning
    naming them (beyond LISTED of them, the full list goes to a file). Each names only the way
    out not already taken: a split skips them only because DATASETS.SKIP_BAD_IMAGES is True."""
    if not skipped:
        return
    where = (f"files in {args.gallery_dir}" if args.gallery_dir else
             f"images of the {args.split} split (DATASETS.SKIP_BAD_IMAGES)")
    if args.strict:
        raise DatasetError(f"{len(skipped)} of {num_files} {where} cannot be read as images: "
                           f"{_file_list(skipped)}; replace or remove them, or run without "
                           f"--strict to skip them.")
    listed = _file_list(skipped[:LISTED])
    if len(skipped) > LISTED:
        full = os.path.join(output_dir, "unreadable_files.txt")
        with open(full, "w", encoding="utf-8") as f:
            f.writelines(f"{path}\t{' '.join(reason.split())}\n" for path, reason in skipped)
        listed += f" and {len(skipped) - LISTED} more, all listed in {full}"
    advice = " Add --strict to stop on such files instead." if args.gallery_dir else ""
    logger.warning(f"Skipped {len(skipped)} of {num_files} {where} that cannot be read as "
                   f"images: {listed}.{advice}")


def prepare_gallery(args, cfg):
    """What is cheap to check before the model is loaded: (image paths, identities, captions'
    identities) of a folder or split, or the loaded index."""
    if args.index:
        return GalleryIndex.load(args.index), None, {}
    if args.gallery_dir:
        return list_images(args.gallery_dir), None, {}
    name = args.dataset or parse_test_name(cfg.DATASETS.TESTS[0])[0]
    records = build_dataset(cfg, name).split(args.split)
    caption_ids = {c: r.pid for r in records for c in r.captions}
    return [r.image_path for r in records], [r.pid for r in records], caption_ids


def run(args):
    cfg = load_config(args.config_file, args.opts)
    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}.")
    if args.strict and not args.gallery_dir:
        raise ConfigError("--strict applies to --gallery-dir only; a dataset split skips "
                          "unreadable images only with DATASETS.SKIP_BAD_IMAGES True.")
    queries = read_queries(args)
    gallery, pids, caption_ids = prepare_gallery(args, cfg)
    output_dir = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "retrieval")
    try:  # before minutes of encoding, not after
        os.makedirs(output_dir, exist_ok=True)
        if args.save_index:
            os.makedirs(os.path.dirname(os.path.abspath(args.save_index)), exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Cannot write to {err.filename}: {err.strerror}.") from None
    model = load_trained_model(cfg, "tools/retrieve.py")
    logger.info(f"Loaded the model weights from {cfg.MODEL.WEIGHTS}")
    if isinstance(gallery, GalleryIndex):
        gallery.check_model(model, args.index)
    query_f = encode_queries(cfg, model, queries)
    if isinstance(gallery, GalleryIndex):
        index = gallery
    else:  # a folder skips what it cannot read unless --strict; a split follows the config
        index = GalleryIndex.build(cfg, model, gallery, pids,
                                   skip_bad_images=True if args.gallery_dir else None)
        report_unreadable(args, index.skipped, len(gallery), output_dir)
    if args.save_index:
        index.save(args.save_index)
        print(f"Saved the gallery index ({len(index)} images) to {args.save_index}")

    identities_known = bool((index.pids >= 0).any())
    rows = []
    what = "1 query" if len(queries) == 1 else f"{len(queries)} queries"
    for i in track(range(len(queries)), f"searching and drawing {what}", unit="queries"):
        query = queries[i]
        query_id = args.query_id if args.query_id is not None else caption_ids.get(query)
        # The ground truth's ranks and the AP need the whole ranking; the top-k needs only k.
        full = query_id is not None and identities_known
        scores, order = index.search(query_f[i:i + 1], len(index) if full else args.topk)
        scores, order = scores[0], order[0]
        row = draw_query(query, order, scores, index.image_paths, new_picture_path(output_dir),
                         args.topk, gallery_ids=index.pids, query_id=query_id)
        rows.append(row)
        print(f"Query {i + 1}: {query}")
        for rank, (r, score) in enumerate(zip(order[:args.topk], scores), start=1):
            same = None if query_id is None or index.pids[r] < 0 else index.pids[r] == query_id
            mark = {True: "  [same identity]", False: "  [other identity]", None: ""}[same]
            print(f"  {rank:3d}. {score:.4f}  {index.image_paths[r]}{mark}")
        print(f"  {row['summary']}")
        print(f"  picture: {row['picture']}")
    page = write_picture_index(output_dir, rows, append=True)
    print(f"All pictures of {output_dir}, with their queries: {page}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    with console_logging():
        try:
            return run(args)
        except (ConfigError, DatasetError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
