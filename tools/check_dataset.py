#!/usr/bin/env python
"""Validate a downloaded dataset and print its statistics, before training on it.

    python tools/check_dataset.py CUHKPEDES --root datasets
    python tools/check_dataset.py RSTPReid --root /data --decode
    python tools/check_dataset.py SyntheticPedes --config-file configs/CPCL/synthetic.yml --stats
    python tools/check_dataset.py TextImageJSON --root /data \
        DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE mine.json DATASETS.TEXT_IMAGE_JSON.IMAGE_KEY img

It runs the checks training runs first (annotation file, JSON, keys, splits, captions, that every
image exists and belongs to one split); `--decode` also reads every image as training does (8-bit
RGB, `load_image`), which finds corrupt files and images that cannot be converted but takes
minutes on a full dataset. `--stats` prints what its captions and views look like beside the real
datasets' published figures (cpcl_plugin/data/statistics.py). Exit status 0 when the dataset is
fine, 2 with one sentence when it is not.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpcl_plugin import ConfigError, DatasetError, load_config  # noqa: E402
from cpcl_plugin.data import build_dataset, load_image  # noqa: E402
from cpcl_plugin.data.statistics import dataset_statistics, statistics_table  # noqa: E402


def undecodable_images(paths, workers):
    """(path, message) of each image in `paths` that training could not read (`load_image`)."""
    def check(path):
        try:
            load_image(path)
            return None
        except DatasetError as err:
            return path, str(err)
    with ThreadPoolExecutor(workers) as pool:
        return [bad for bad in pool.map(check, paths) if bad is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="Registered dataset name, e.g. CUHKPEDES, ICFGPEDES, "
                                        "RSTPReid, TextImageJSON or SyntheticPedes (no default).")
    parser.add_argument("--root", default="",
                        help="Folder that holds the dataset's folder (default: DATASETS.ROOT, else "
                             "$FASTREID_DATASETS, else datasets).")
    parser.add_argument("--config-file", default="",
                        help="YAML config whose DATASETS keys describe the dataset (default: none, "
                             "the project's defaults).")
    parser.add_argument("--decode", action="store_true",
                        help="Also decode every image to 8-bit RGB as training does, which finds "
                             "corrupt files and images that cannot be converted; minutes on a "
                             "full dataset (default: %(default)s, only check that images exist).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Threads that decode images with --decode (default: %(default)s, the "
                             "number of CPU cores).")
    parser.add_argument("--stats", action="store_true",
                        help="Also print the captions' and views' statistics (words, vocabulary, "
                             "captions per image, images per identity, attribute agreement, "
                             "lookalikes, the caption ceiling of synthetic sets) beside CUHK-PEDES, "
                             "ICFG-PEDES and RSTPReid (default: %(default)s).")
    parser.add_argument("opts", nargs="*",
                        help="Config overrides as KEY VALUE pairs, e.g. "
                             "DATASETS.TEXT_IMAGE_JSON.IMAGE_KEY img (default: none).")
    args = parser.parse_intermixed_args(argv)
    opts = list(args.opts) + (["DATASETS.ROOT", args.root] if args.root else [])
    try:
        cfg = load_config(args.config_file, opts, check=False)
        start = time.perf_counter()
        data = build_dataset(cfg, args.dataset)
        records = [r for split in data.records.values() for r in split]
        print(f"{args.dataset}: {data.annotation_path} is valid; its {len(records)} images exist "
              f"(checked in {time.perf_counter() - start:.1f} s).")
        if data.skipped_missing:
            print(f"  {data.skipped_missing} entries whose image does not exist were skipped "
                  f"(DATASETS.SKIP_BAD_IMAGES).")
        print(data.statistics_table())
        if args.stats:
            stats = dataset_statistics(data, cfg.TEST.IDS_PER_GALLERY)
            print(statistics_table(args.dataset, stats))
        if args.decode:
            start = time.perf_counter()
            bad = undecodable_images([r.image_path for r in records], args.workers)
            print(f"Decoded {len(records)} images in {time.perf_counter() - start:.1f} s: "
                  f"{len(bad)} cannot be read.")
            for _, message in bad[:20]:
                print(f"  {message}")
            if bad:
                raise DatasetError(f"{len(bad)} images of {args.dataset} cannot be read, e.g. "
                                   f"{bad[0][0]}; replace them or set DATASETS.SKIP_BAD_IMAGES "
                                   f"True.")
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
