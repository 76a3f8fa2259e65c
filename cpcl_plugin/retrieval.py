"""Text-to-image search over a gallery: encode the images once, keep them in a faiss index that can
be saved and reloaded, answer typed queries. Used by tools/retrieve.py; usable from Python:

    index = GalleryIndex.build(cfg, model, image_paths)
    index.save("gallery.npz")
    index = GalleryIndex.load("gallery.npz", model)
    scores, rows = index.search(encode_queries(cfg, model, ["a man in a blue coat"]), k=10)
"""
import json
import logging
import os
import zipfile
from contextlib import nullcontext

import faiss
import numpy as np

from .data.datasets import load_image
from .data.tokenizer import build_tokenizer
from .errors import ConfigError, DatasetError
from .evaluation.features import encode_captions_and_images
from .utils.checkpoint import parameter_digest, write_atomically
from .utils.progress import quiet_logger

__all__ = ["GalleryIndex", "encode_queries", "check_queries", "list_images", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(folder):
    """Every image file under `folder` (recursively, sorted), or one DatasetError."""
    if not os.path.isdir(folder):
        raise DatasetError(f"Gallery folder {folder} does not exist.")
    paths, seen = [], {os.path.realpath(folder)}
    # Linked folders are followed as linked files are; each real folder is read once (a link
    # to a folder above would loop, two links to one folder would list it twice).
    for root, dirs, names in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if real not in seen:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        paths += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    paths.sort()
    if not paths:
        raise DatasetError(f"Gallery folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                           f"point --gallery-dir at the folder that holds them.")
    return paths


def check_queries(queries):
    """One ConfigError for the first empty query (before any model is loaded)."""
    for i, q in enumerate(queries):
        if not q.strip():
            raise ConfigError(f"Query {i + 1} is empty: type what the person looks like, e.g. "
                              f"\"a woman in a red coat carrying a black backpack\".")


def warn_long_queries(queries, tokenizer):
    """One warning per query longer than the text encoder's context, naming it and how much of it
    is read (the tokenizer truncates silently)."""
    context = tokenizer.context_length
    for i, query in enumerate(queries):
        n = tokenizer.num_tokens(query)
        if n > context:
            shown = query if len(query) <= 60 else query[:60].rstrip() + "…"
            logger.warning(f"Query {i + 1} (\"{shown}\") is {n - 2} tokens long; the text "
                           f"encoder reads only its first {context - 2} "
                           f"(MODEL.CLIP.CONTEXT_LENGTH {context}) and ignores the rest.")


def encode_queries(cfg, model, queries):
    """(len(queries), d) float32 features of free-text queries; an empty one is an error."""
    check_queries(queries)
    warn_long_queries(queries, build_tokenizer(cfg))
    plural = "y" if len(queries) == 1 else "ies"
    text_f, _, _ = encode_captions_and_images(cfg, model, queries, [],
                                              step=f"encoding {len(queries)} quer{plural}")
    return text_f


def _why_unreadable(path):
    """Why load_image refuses `path` (the reason in its message), for the list of skipped
    files."""
    try:
        load_image(path)
    except DatasetError as err:
        return getattr(err, "reason", str(err))
    return "could not be decoded"


class GalleryIndex:
    """Gallery features in a faiss inner-product index (features are L2-normalised, so scores
    are cosine similarities), with each row's image path and identity (-1 when unknown).

    Saved as one .npz: the features (a flat index is exactly its vectors), the paths, the
    identities and a digest of the model that computed them, checked on load."""

    def __init__(self, features, image_paths, pids=None, model_digest=""):
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.image_paths = list(image_paths)
        self.pids = np.full(len(self.image_paths), -1, dtype=np.int64) if pids is None \
            else np.asarray(pids, dtype=np.int64)
        self.model_digest = model_digest
        self.skipped = []  # (path, reason) of images left out by `build`
        self._index = faiss.IndexFlatIP(self.features.shape[1])
        self._index.add(self.features)

    @classmethod
    def build(cls, cfg, model, image_paths, pids=None, skip_bad_images=None):
        """Encode `image_paths` with `model`. Undecodable images stop it with one DatasetError, or
        with `skip_bad_images` (default: DATASETS.SKIP_BAD_IMAGES) are left out, without a
        warning per file: the index's `skipped` [(path, reason)] lists them for the caller to
        report at once."""
        skip = cfg.DATASETS.SKIP_BAD_IMAGES if skip_bad_images is None else skip_bad_images
        with quiet_logger("cpcl_plugin.data.build", logging.ERROR) if skip else nullcontext():
            _, image_f, valid = encode_captions_and_images(
                cfg, model, [], image_paths, skip_bad_images=skip,
                step=f"building the gallery index: encoding {len(image_paths)} images")
        keep = np.flatnonzero(valid)
        skipped = [(image_paths[i], _why_unreadable(image_paths[i]))
                   for i in np.flatnonzero(~np.asarray(valid, dtype=bool))]
        if len(keep) == 0:
            raise DatasetError(f"None of the {len(image_paths)} gallery images could be decoded "
                               f"(e.g. {skipped[0][0]}: {skipped[0][1]}).")
        index = cls(image_f[keep], [os.path.abspath(image_paths[i]) for i in keep],
                    None if pids is None else np.asarray(pids)[keep], parameter_digest(model))
        index.skipped = skipped
        return index

    def __len__(self):
        return len(self.image_paths)

    def search(self, query_features, k):
        """(scores, rows), each (num_queries, min(k, len(self))), best first."""
        k = min(int(k), len(self))
        return self._index.search(np.ascontiguousarray(query_features, dtype=np.float32), k)

    def save(self, path):
        """Write the index to `path` (.npz), atomically."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = json.dumps({"image_paths": self.image_paths, "model_digest": self.model_digest})
        write_atomically(path, lambda tmp: np.savez(tmp, features=self.features, pids=self.pids,
                                                    meta=np.array(meta)), suffix=".tmp.npz")

    @classmethod
    def load(cls, path, model=None):
        """Read an index saved by `save`; with `model`, check that it computed the features."""
        if not os.path.isfile(path):
            raise ConfigError(f"Gallery index {path} does not exist; create it with --save-index.")
        try:
            data = np.load(path)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with data:
                meta = json.loads(str(data["meta"]))
                index = cls(data["features"], meta["image_paths"], data["pids"],
                            meta["model_digest"])
        except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as err:
            raise ConfigError(f"{path} is not a gallery index saved by tools/retrieve.py "
                              f"--save-index ({err}).") from None
        if model is not None:
            index.check_model(model, path)
        return index

    def check_model(self, model, path):
        """One ConfigError unless `model` computed these features (`path` names the index)."""
        if parameter_digest(model) != self.model_digest:
            raise ConfigError(f"Gallery index {path} was built with other weights than "
                              f"MODEL.WEIGHTS; rebuild it with --save-index.")
