"""Text-image datasets in FastReID's DATASET_REGISTRY.

One generic loader (`TextImageDataset`) reads every supported format: a JSON list of objects, one
per image, with an identity, a split name, a list of captions and an image path. A dataset entry
only says where its annotation file lies and what its keys are called, so adding a dataset is a
five-line subclass::

    @DATASET_REGISTRY.register()
    class MyPedes(TextImageDataset):
        dataset_dir = "MyPedes"
        annotation_files = ("annotations.json",)
        image_key = "img"

Without code, `TextImageJSON` reads such a file from the DATASETS.TEXT_IMAGE_JSON keys.

Everything is validated when the dataset is built, before any training: each failure is one
`DatasetError` sentence naming the file and the entry. Every image is checked for existence (a
CUHK-PEDES-sized file loads and validates in 0.25 s, benchmarks/dataset_validation.py), and for
being named by one split only. Whether an image decodes to 8-bit RGB is found when it is read
(`load_image`, for training, evaluation and tools/check_dataset.py --decode alike).
"""
import json
import logging
import os
import re
from collections import namedtuple

import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY
from PIL import Image, ImageOps
from tabulate import tabulate

from ..compat import registry_names
from ..errors import DatasetError
from .synthetic import SyntheticSpec, ensure_synthetic_dataset

__all__ = ["ImageRecord", "TextImageDataset", "DatasetError", "dataset_root", "build_dataset",
           "parse_test_name", "load_image", "to_rgb", "CUHKPEDES", "ICFGPEDES", "RSTPReid",
           "TextImageJSON", "SyntheticPedes"]

logger = logging.getLogger(__name__)

# One annotated image: absolute path, identity (evaluation and monitoring only) and its captions.
ImageRecord = namedtuple("ImageRecord", ["image_path", "pid", "captions"])

SPLITS = ("train", "val", "test")


def dataset_root(cfg):
    """DATASETS.ROOT, else $FASTREID_DATASETS, else "datasets" (FastReID's convention)."""
    return cfg.DATASETS.ROOT or os.getenv("FASTREID_DATASETS", "datasets")


def parse_test_name(entry):
    """(dataset name, split) of a DATASETS.TESTS entry: "CUHKPEDES" is its test split,
    "CUHKPEDES:val" its val split."""
    name, _, split = entry.partition(":")
    split = split or "test"
    if split not in ("val", "test"):
        raise DatasetError(f"DATASETS.TESTS entry {entry!r} names split {split!r}; evaluate on "
                           f"'val' or 'test' (e.g. {name}:val).")
    return name, split


_WARNED_REPEATS = set()  # annotation files whose repeated images were reported in this process


def _unreadable(path, reason, fix="replace the file"):
    err = DatasetError(f"Cannot read image {path} ({reason}); {fix}, or set "
                       f"DATASETS.SKIP_BAD_IMAGES True to skip such samples and count them.")
    err.reason = reason  # alone, for lists of skipped files
    return err


# How each PIL mode (https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes) becomes
# 8-bit RGB. Modes of 8-bit samples take PIL's conversion (CMYK by PIL's formula, without any
# embedded ICC profile). Wider samples are scaled from their nominal range, because PIL's own
# conversion clips them to 255 (a 16-bit photo turns white): 16-bit unsigned by 65535 -> 255;
# "I" (32-bit signed) holds what PIL decodes from 16-bit PGM/PPM and TIFF, so it is read as 16-bit
# and refused when its values leave 0..65535; "F" (32-bit float) has no range of its own but the
# usual 0..1, so other values are refused rather than guessed. A mode not listed is refused.
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                   "LA", "La", "PA", "RGBA", "RGBa")
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1}
_TO_8_BIT = "save it as an 8-bit RGB image"


def _wide_to_gray(image, path):
    """An "L" image (LA with a transparent gray level) from a mode of WIDE_MODES."""
    values, top = np.asarray(image), WIDE_MODES[image.mode]
    if not np.isfinite(values).all():
        raise _unreadable(path, f"PIL mode {image.mode}: NaN or infinite values", _TO_8_BIT)
    lo, hi = values.min(), values.max()
    if lo < 0 or hi > top:
        raise _unreadable(path, f"PIL mode {image.mode}: values from {lo:g} to {hi:g}, outside "
                                f"the 0..{top} that this project maps to 0..255", _TO_8_BIT)
    gray = Image.fromarray(np.rint(values * (255 / top)).astype(np.uint8))
    transparent = image.info.get("transparency")  # a 16-bit PNG's transparent gray level (tRNS)
    if isinstance(transparent, int):
        gray.putalpha(Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8)))
    return gray


def to_rgb(image, path):
    """`image` as 8-bit RGB with its values kept (see EIGHT_BIT_MODES), or one DatasetError naming
    `path` and the mode. Transparent pixels show white: what lies under them is arbitrary (often
    black), and white is how a viewer shows them, so the model sees what the user sees."""
    if image.mode in WIDE_MODES:
        image = _wide_to_gray(image, path)
    elif image.mode not in EIGHT_BIT_MODES:
        raise _unreadable(path, f"PIL mode {image.mode!r}, which has no known conversion to "
                                f"8-bit RGB", _TO_8_BIT)
    if image.has_transparency_data:
        # PIL converts premultiplied La only to LA; every other mode converts to RGBA.
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path):
    """The image at `path` as 8-bit RGB (`to_rgb`), decoded now (PIL opens lazily), or one
    DatasetError naming it."""
    try:
        with Image.open(path) as image:
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # broken EXIF data must not reject a readable image
                pass
            return to_rgb(image, path)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _unreadable(path, f"{type(err).__name__}: {err}") from None


def _missing_files(paths):
    """Indices of `paths` that do not exist, from one directory listing per folder rather than a
    stat per file (the same speed on a local disk, 0.05 s for 40k images; fewer round trips on a
    network file system). benchmarks/dataset_validation.py measures it."""
    listings, missing = {}, []
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        names = listings.get(folder)
        if names is None:
            try:
                names = listings[folder] = frozenset(os.listdir(folder))
            except OSError:
                names = listings[folder] = frozenset()
        if name not in names:
            missing.append(i)
    return missing


def _is_integer(value):
    return isinstance(value, int) or (isinstance(value, str) and
                                      re.fullmatch(r"-?[0-9]+", value) is not None)


class TextImageDataset:
    """Images with captions, split into train / val / test, read from one JSON annotation file.

    Class attributes describe a format; any of them can also be given to the constructor (that is
    how `TextImageJSON` takes its keys from the config). Identities may be integers (any start) or
    strings; they are only compared for equality, by evaluation and monitoring.
    """

    dataset_dir = ""                   # folder under the dataset root
    annotation_files = ("reid_raw.json",)  # accepted names of the annotation file, first found wins
    image_dir = "imgs"                 # image paths are relative to this folder (itself relative
    #                                    to the annotation file's folder)
    image_key = "file_path"            # key of the image path in each entry
    id_key = "id"
    split_key = "split"
    captions_key = "captions"
    splits = SPLITS                    # split names the file may use
    how_to_obtain = ""                 # one sentence on where the data come from

    def __init__(self, root="datasets", skip_bad_images=False, **format_overrides):
        for key, value in format_overrides.items():
            if not hasattr(TextImageDataset, key) or key.startswith("_"):
                raise TypeError(f"{type(self).__name__} has no format attribute {key!r}")
            setattr(self, key, value)
        self.root = os.path.join(root, self.dataset_dir) if self.dataset_dir else root
        self.annotation_path = self._find_annotation_file()
        self.skipped_missing = 0  # entries dropped because their image does not exist
        self.records = self._load(self.annotation_path, skip_bad_images)

    @classmethod
    def config_kwargs(cls, cfg):
        """Constructor arguments this dataset takes from the config (besides root)."""
        return {}

    # -- loading ------------------------------------------------------------------------------
    def _missing_message(self, what):
        names = " or ".join(self.annotation_files)
        msg = (f"{type(self).__name__}: {what}. Expected {names} and the {self.image_dir}/ folder "
               f"in {os.path.abspath(self.root)} (set DATASETS.ROOT or $FASTREID_DATASETS to the "
               f"folder that contains {self.dataset_dir or 'the dataset'}/).")
        return msg + (" " + self.how_to_obtain if self.how_to_obtain else "")

    def _find_annotation_file(self):
        for name in self.annotation_files:
            path = os.path.join(self.root, name)
            if os.path.isfile(path):
                return path
        if not os.path.isdir(self.root):
            raise DatasetError(self._missing_message(
                f"dataset folder {os.path.abspath(self.root)} does not exist"))
        raise DatasetError(self._missing_message(
            f"no annotation file {' or '.join(self.annotation_files)} in {os.path.abspath(self.root)}"))

    def _read_entries(self, path):
        try:
            with open(path, encoding="utf-8-sig") as f:  # -sig: files saved with a BOM too
                entries = json.load(f)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                               f"{err.msg}).") from None
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8 "
                               f"JSON.") from None
        if not isinstance(entries, list):
            raise DatasetError(f"{path} must hold a JSON list of image entries, found a JSON "
                               f"{type(entries).__name__}.")
        return entries

    def _check_entry(self, path, i, entry):
        """(split, identity, captions, relative image path) of entry `i`, or one DatasetError."""
        keys = (self.id_key, self.split_key, self.captions_key, self.image_key)
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}, entry {i}: expected an object with keys "
                               f"{', '.join(keys)}, found a JSON {type(entry).__name__}.")
        missing = [k for k in keys if k not in entry]
        if missing:
            raise DatasetError(f"{path}, entry {i}: missing key(s) {', '.join(missing)}.")
        split, pid = entry[self.split_key], entry[self.id_key]
        image, captions = entry[self.image_key], entry[self.captions_key]
        if split not in self.splits:
            raise DatasetError(f"{path}, entry {i}: unknown split {split!r}; expected one of "
                               f"{', '.join(self.splits)}.")
        if not isinstance(image, str) or not image:
            raise DatasetError(f"{path}, entry {i}: {self.image_key} must be a non-empty path, "
                               f"found {image!r}.")
        if isinstance(pid, bool) or not isinstance(pid, (int, str)):
            raise DatasetError(f"{path}, entry {i} ({image}): {self.id_key} must be an integer or "
                               f"a string, found {pid!r}.")
        if isinstance(captions, str):
            captions = [captions]
        if not isinstance(captions, list) or not captions or \
                not all(isinstance(c, str) and c.strip() for c in captions):
            raise DatasetError(f"{path}, entry {i} ({image}): {self.captions_key} must be a "
                               f"non-empty list of non-empty strings, found {captions!r}.")
        return split, pid, tuple(c.strip() for c in captions), image

    def _load(self, path, skip_bad_images):
        entries = self._read_entries(path)
        image_root = os.path.join(os.path.dirname(path), self.image_dir)
        checked = [self._check_entry(path, i, e) for i, e in enumerate(entries)]
        image_paths = [os.path.normpath(os.path.join(image_root, c[3])) for c in checked]
        missing = _missing_files(image_paths)
        if missing and not skip_bad_images:
            i = missing[0]
            raise DatasetError(
                f"{path}, entry {i}: image {image_paths[i]} does not exist ({len(missing)} of "
                f"{len(entries)} images are missing); check {self.image_dir}/ and the "
                f"{self.image_key} values, or set DATASETS.SKIP_BAD_IMAGES True to skip them.")
        if missing:
            logger.warning(f"{path}: skipped {len(missing)} of {len(entries)} entries whose image "
                           f"does not exist (DATASETS.SKIP_BAD_IMAGES), e.g. {image_paths[missing[0]]}.")
        self.skipped_missing = len(missing)
        skip = set(missing)
        self._check_repeated_images(path, [c[0] for c in checked], image_paths, skip)
        # Integer ids are kept as they are (CUHK-PEDES starts at 1); other ids (strings) are
        # numbered after the largest integer id, in order of appearance.
        int_ids = [int(c[1]) for c in checked if _is_integer(c[1])]
        next_id, other_ids = max(int_ids, default=-1) + 1, {}
        records = {s: [] for s in self.splits}
        for i, ((split, pid, captions, _), image_path) in enumerate(zip(checked, image_paths)):
            if i in skip:
                continue
            if _is_integer(pid):
                pid = int(pid)
            else:
                pid = other_ids.setdefault(pid, next_id + len(other_ids))
            records[split].append(ImageRecord(image_path, pid, captions))
        return records

    @staticmethod
    def _check_repeated_images(path, splits, image_paths, skip):
        """Refuses an image that entries of two splits name (a training image in a test gallery
        makes evaluation wrong) and warns about one named more than once within a split.
        `image_paths` are normalised, so "a/./b.jpg" and "a/b.jpg" are one image."""
        # image -> (split, entry) naming it first; -> (that, the first (split, entry) repeating it)
        first, across, within = {}, {}, {}
        for i, (split, image) in enumerate(zip(splits, image_paths)):
            if i in skip:
                continue
            seen = first.setdefault(image, (split, i))
            if seen[1] != i:
                (across if seen[0] != split else within).setdefault(image, (seen, (split, i)))

        def examples(repeats):
            shown = [f"{image} ({a}: entries {i} and {j})" if a == b else
                     f"{image} ({a}: entry {i}, {b}: entry {j})"
                     for image, ((a, i), (b, j)) in list(repeats.items())[:3]]
            return ", ".join(shown) + (", ..." if len(repeats) > 3 else "")
        if across:
            raise DatasetError(f"{path}: {len(across)} image(s) appear in more than one split, "
                               f"e.g. {examples(across)}; give each image one split, since a "
                               f"training image in a test or val gallery makes evaluation wrong.")
        if within and path not in _WARNED_REPEATS:  # the dataset is built many times a run
            _WARNED_REPEATS.add(path)
            logger.warning(f"{path}: {len(within)} image(s) appear more than once within a split, "
                           f"e.g. {examples(within)}; every entry is kept, so such an image counts "
                           f"once per entry in training and in a gallery.")

    # -- access -------------------------------------------------------------------------------
    def split(self, name):
        """The list of ImageRecord of split `name` ("train", "val" or "test")."""
        if name not in self.records or not self.records[name]:
            present = [s for s in self.records if self.records[s]]
            skipped = (f" ({self.skipped_missing} entries were skipped for missing images)"
                       if self.skipped_missing else "")
            raise DatasetError(f"{type(self).__name__} ({self.annotation_path}) has no {name!r} "
                               f"entries{skipped}; its splits are: {', '.join(present) or 'none'}.")
        return self.records[name]

    def statistics_table(self):
        """Ids, images and captions per split, as a Markdown table."""
        rows = []
        for name, recs in self.records.items():
            if recs:
                rows.append([name, len({r.pid for r in recs}), len(recs),
                             sum(len(r.captions) for r in recs)])
        return tabulate(rows, headers=["split", "# ids", "# images", "# captions"],
                        tablefmt="pipe", numalign="left")


@DATASET_REGISTRY.register()
class CUHKPEDES(TextImageDataset):
    dataset_dir = "CUHK-PEDES"
    how_to_obtain = ("CUHK-PEDES is licensed: request it from its authors "
                     "(https://github.com/ShuangLI59/Person-Search-with-Natural-Language-Description) "
                     "and unpack reid_raw.json and imgs/ into that folder.")


@DATASET_REGISTRY.register()
class ICFGPEDES(TextImageDataset):
    dataset_dir = "ICFG-PEDES"
    annotation_files = ("ICFG-PEDES.json", "ICFG_PEDES.json")
    splits = ("train", "test")  # published without a val split
    how_to_obtain = ("ICFG-PEDES is licensed: request it from its authors "
                     "(https://github.com/zifyloo/SSAN) and unpack ICFG-PEDES.json and imgs/ there.")


@DATASET_REGISTRY.register()
class RSTPReid(TextImageDataset):
    dataset_dir = "RSTPReid"
    annotation_files = ("data_captions.json",)
    image_key = "img_path"
    how_to_obtain = ("RSTPReid is licensed: request it from its authors "
                     "(https://github.com/NjtechCVLab/RSTPReid-Dataset) and unpack "
                     "data_captions.json and imgs/ there.")


@DATASET_REGISTRY.register()
class TextImageJSON(TextImageDataset):
    """Your own collection: one JSON list of {image path, identity, split, captions} objects
    whose file and key names come from DATASETS.TEXT_IMAGE_JSON."""

    image_dir = ""

    @classmethod
    def config_kwargs(cls, cfg):
        c = cfg.DATASETS.TEXT_IMAGE_JSON
        if not c.ANNOTATION_FILE:
            raise DatasetError("TextImageJSON needs DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE: the "
                               "path of your JSON list of {image, id, split, captions} entries "
                               "(see docs/training.md, 'Your own data').")
        return dict(annotation_files=(c.ANNOTATION_FILE,), image_dir=c.IMAGE_DIR,
                    image_key=c.IMAGE_KEY, id_key=c.ID_KEY, split_key=c.SPLIT_KEY,
                    captions_key=c.CAPTIONS_KEY)

    def _missing_message(self, what):
        return (f"TextImageJSON: {what}. DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE is relative to "
                f"DATASETS.ROOT ({os.path.abspath(self.root)}) unless it is absolute.")


@DATASET_REGISTRY.register()
class SyntheticPedes(TextImageDataset):
    """The embedded default: generated (CUHK-PEDES format) on first use, see data/synthetic.py."""

    def __init__(self, root="datasets", spec=None, **kwargs):
        spec = spec if spec is not None else SyntheticSpec()
        folder = ensure_synthetic_dataset(os.path.join(root, "SyntheticPedes"), spec, logger)
        super().__init__(root=folder, **kwargs)

    @classmethod
    def config_kwargs(cls, cfg):
        return {"spec": SyntheticSpec.from_cfg(cfg)}


def _text_image_dataset_names():
    return [k for k in registry_names(DATASET_REGISTRY)
            if isinstance(DATASET_REGISTRY.get(k), type)
            and issubclass(DATASET_REGISTRY.get(k), TextImageDataset)]


def build_dataset(cfg, name):
    """Instantiate the registered dataset `name` from the config's dataset root."""
    try:
        cls = DATASET_REGISTRY.get(name)
    except KeyError:
        raise DatasetError(f"Unknown dataset {name!r} in DATASETS.NAMES/TESTS; text-image datasets "
                           f"registered: {', '.join(_text_image_dataset_names())}.") from None
    if not (isinstance(cls, type) and issubclass(cls, TextImageDataset)):
        raise DatasetError(f"{name!r} in DATASETS.NAMES/TESTS is a FastReID re-identification "
                           f"dataset without captions; use a text-image dataset: "
                           f"{', '.join(_text_image_dataset_names())}.")
    return cls(root=dataset_root(cfg), skip_bad_images=cfg.DATASETS.SKIP_BAD_IMAGES,
               **cls.config_kwargs(cfg))
