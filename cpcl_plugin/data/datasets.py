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
"""
import json
import logging
import os
from collections import namedtuple

from fastreid.data.datasets import DATASET_REGISTRY
from tabulate import tabulate

from ..compat import registry_names
from .synthetic import SyntheticSpec, ensure_synthetic_dataset

__all__ = ["ImageRecord", "TextImageDataset", "DatasetError", "dataset_root", "build_dataset",
           "CUHKPEDES", "ICFGPEDES", "RSTPReid", "SyntheticPedes"]

logger = logging.getLogger(__name__)

# One annotated image: absolute path, identity (evaluation and monitoring only) and its captions.
ImageRecord = namedtuple("ImageRecord", ["image_path", "pid", "captions"])


class DatasetError(ValueError):
    """Missing or malformed dataset files; the message names the file and entry."""


def dataset_root(cfg):
    """DATASETS.ROOT, else $FASTREID_DATASETS, else "datasets" (FastReID's convention)."""
    return cfg.DATASETS.ROOT or os.getenv("FASTREID_DATASETS", "datasets")


class TextImageDataset:
    """Images with captions, split into train / val / test, read from one JSON annotation file."""

    dataset_dir = ""                   # folder under the dataset root
    annotation_files = ("reid_raw.json",)  # accepted names of the annotation file, first found wins
    image_dir = "imgs"                 # image paths in the file are relative to this folder
    image_key = "file_path"            # key of the image path in each entry
    id_key = "id"
    split_key = "split"
    captions_key = "captions"
    splits = ("train", "val", "test")  # split names the file may use
    how_to_obtain = ""                 # one sentence on where the data come from

    def __init__(self, root="datasets", **kwargs):
        self.root = os.path.join(root, self.dataset_dir) if self.dataset_dir else root
        self.annotation_path = self._find_annotation_file()
        self.records = self._load(self.annotation_path)

    # -- loading ------------------------------------------------------------------------------
    def _missing_message(self, what):
        names = " or ".join(self.annotation_files)
        msg = (f"{type(self).__name__}: {what}. Expected {names} and the {self.image_dir}/ folder "
               f"in {os.path.abspath(self.root)} (set DATASETS.ROOT or $FASTREID_DATASETS to the "
               f"folder that contains {self.dataset_dir or 'the dataset'}/).")
        return msg + (" " + self.how_to_obtain if self.how_to_obtain else "")

    def _find_annotation_file(self):
        if not os.path.isdir(self.root):
            raise DatasetError(self._missing_message(f"dataset folder {os.path.abspath(self.root)} "
                                                     f"does not exist"))
        for name in self.annotation_files:
            path = os.path.join(self.root, name)
            if os.path.isfile(path):
                return path
        raise DatasetError(self._missing_message(
            f"no annotation file {' or '.join(self.annotation_files)} in {os.path.abspath(self.root)}"))

    def _load(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                               f"{err.msg}).") from None
        if not isinstance(entries, list):
            raise DatasetError(f"{path} must hold a JSON list of image entries, found "
                               f"{type(entries).__name__}.")
        records = {s: [] for s in self.splits}
        image_root = os.path.join(self.root, self.image_dir)
        keys = (self.id_key, self.split_key, self.captions_key, self.image_key)
        for i, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DatasetError(f"{path}, entry {i}: missing key(s) {', '.join(missing)}.")
            split = entry[self.split_key]
            if split not in records:
                raise DatasetError(f"{path}, entry {i}: unknown split {split!r}; expected one of "
                                   f"{', '.join(self.splits)}.")
            captions = entry[self.captions_key]
            if isinstance(captions, str):
                captions = [captions]
            if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
                raise DatasetError(f"{path}, entry {i} ({entry[self.image_key]}): empty caption "
                                   f"list or empty caption.")
            records[split].append(ImageRecord(os.path.join(image_root, entry[self.image_key]),
                                              int(entry[self.id_key]), tuple(captions)))
        return records

    # -- access -------------------------------------------------------------------------------
    def split(self, name):
        """The list of ImageRecord of split `name` ("train", "val" or "test")."""
        if name not in self.records:
            raise DatasetError(f"{type(self).__name__} has no split {name!r}; it has "
                               f"{', '.join(s for s in self.records if self.records[s])}.")
        return self.records[name]

    def statistics_table(self):
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
    splits = ("train", "test")
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
class SyntheticPedes(TextImageDataset):
    """The embedded default: generated (CUHK-PEDES format) on first use, see data/synthetic.py."""

    def __init__(self, root="datasets", spec=None, **kwargs):
        spec = spec if spec is not None else SyntheticSpec()
        folder = ensure_synthetic_dataset(os.path.join(root, "SyntheticPedes"), spec, logger)
        super().__init__(root=folder)


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
    kwargs = {}
    if issubclass(cls, SyntheticPedes):
        kwargs["spec"] = SyntheticSpec.from_cfg(cfg)
    return cls(root=dataset_root(cfg), **kwargs)
