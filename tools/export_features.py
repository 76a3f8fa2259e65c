#!/usr/bin/env python
"""Export the image and caption features of a dataset split, with their paths, ids and captions.

    python tools/export_features.py --config-file configs/CPCL/synthetic.yml --split test \
        --output features/test.npz MODEL.WEIGHTS logs/cpcl/synthetic/model_final.pth
    python tools/export_features.py --config-file CFG --split train --format npy \
        --output features/train/ MODEL.WEIGHTS model.pth

One .npz (default) or a folder of .npy files, with these arrays:
  image_features (N, d) float32, L2-normalised     image_paths (N,)   image_ids (N,)
  text_features  (M, d) float32, L2-normalised     captions (M,)      caption_ids (M,)
  caption_image  (M,) index of each caption's image in the image arrays
Cosine similarity is a dot product: text_features @ image_features.T. Identities are the
dataset's (for evaluation); undecodable images (DATASETS.SKIP_BAD_IMAGES) are left out, with
their captions. Progress goes to stderr, the summary line to stdout.
"""
import argparse
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpcl_plugin import ConfigError, DatasetError, load_config  # noqa: E402
from cpcl_plugin.data import build_dataset, parse_test_name  # noqa: E402
from cpcl_plugin.data.build import flatten_pairs  # noqa: E402
from cpcl_plugin.modeling import load_trained_model  # noqa: E402
from cpcl_plugin.utils.checkpoint import write_atomically  # noqa: E402
from cpcl_plugin.evaluation import encode_captions_and_images  # noqa: E402
from cpcl_plugin.utils.progress import console_logging  # noqa: E402

logger = logging.getLogger("cpcl_plugin.export_features")


def export(cfg, model, records, what="the split"):
    """The arrays described in the module docstring, for `records` (`what` names them in the
    progress lines)."""
    pairs = flatten_pairs(records)
    text_f, image_f, valid = encode_captions_and_images(
        cfg, model, [c for _, c in pairs], [r.image_path for r in records],
        step=f"exporting {what}: encoding {len(pairs)} captions and {len(records)} images")
    keep_images = np.flatnonzero(valid)
    new_index = np.full(len(records), -1)
    new_index[keep_images] = np.arange(len(keep_images))
    keep_captions = np.array([i for i, (image, _) in enumerate(pairs) if valid[image]], dtype=int)
    return {
        "image_features": image_f[keep_images],
        "image_paths": np.array([records[i].image_path for i in keep_images]),
        "image_ids": np.array([records[i].pid for i in keep_images], dtype=np.int64),
        "text_features": text_f[keep_captions],
        "captions": np.array([pairs[i][1] for i in keep_captions]),
        "caption_ids": np.array([records[pairs[i][0]].pid for i in keep_captions], dtype=np.int64),
        "caption_image": new_index[[pairs[i][0] for i in keep_captions]].astype(np.int64),
    }


def save(arrays, output, fmt):
    if fmt == "npz":
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        write_atomically(output, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")
        return [output]
    os.makedirs(output, exist_ok=True)
    written = []
    for name, array in arrays.items():
        path = os.path.join(output, f"{name}.npy")
        write_atomically(path, lambda tmp: np.save(tmp, array), suffix=".tmp.npy")
        written.append(path)
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True,
                   help="The config the model was trained with (required).")
    p.add_argument("--split", required=True, choices=("train", "val", "test"),
                   help="The split of --dataset whose captions and images are encoded "
                        "(required).")
    p.add_argument("--dataset", help="The dataset to export (default: the first DATASETS.TESTS "
                                     "entry).")
    p.add_argument("--output", required=True,
                   help="The .npz file to write, or with --format npy the folder of .npy files "
                        "(required).")
    p.add_argument("--format", choices=("npz", "npy"), default="npz",
                   help="One .npz archive, or one .npy file per array (default: %(default)s).")
    p.add_argument("opts", nargs="*",
                   help="Config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth "
                        "(default: none).")
    return p.parse_intermixed_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with console_logging():
        try:
            cfg = load_config(args.config_file, args.opts)
            name = args.dataset or parse_test_name(cfg.DATASETS.TESTS[0])[0]
            records = build_dataset(cfg, name).split(args.split)
            try:  # before minutes of encoding, not after
                os.makedirs(args.output if args.format == "npy" else
                            os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            except OSError as err:
                raise ConfigError(f"Cannot write to {err.filename}: {err.strerror}.") from None
            model = load_trained_model(cfg, "tools/export_features.py")
            logger.info(f"Loaded the model weights from {cfg.MODEL.WEIGHTS}")
            arrays = export(cfg, model, records, f"{name} {args.split}")
        except (ConfigError, DatasetError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    written = save(arrays, args.output, args.format)
    print(f"{name} {args.split}: {len(arrays['image_paths'])} images, {len(arrays['captions'])} "
          f"captions, {arrays['image_features'].shape[1]}-d features -> {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
