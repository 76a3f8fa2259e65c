"""Torch datasets and loaders for text-image training and text-to-image evaluation (their samplers
live in data/samplers/, as FastReID keeps its own).

Training items are image-caption pairs, one per caption, and carry what weak supervision may use:
the dataset index, the image index (which image the caption belongs to), the image and the
tokens. They never carry identity labels.

Evaluation items are all captions of a split (queries) followed by all its images (gallery); a
batch holds only one kind, so one FastReID `inference_on_dataset` pass computes both.

Items with an image carry ``valid``: 0 when the image could not be decoded and
DATASETS.SKIP_BAD_IMAGES let the run go on (a black placeholder stands in for it, so batches keep
their shape); whoever consumes the batch leaves such items out and counts them.
"""
import logging

import numpy as np
import torch
from fastreid.data.build import fast_batch_collator
from fastreid.data.data_utils import DataLoaderX
from fastreid.data.transforms import build_transforms
from fastreid.utils import comm
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..config import check_batch_split
from ..errors import DatasetError
from .datasets import build_dataset, load_image, parse_test_name
from .samplers import KindAwareBatchSampler, PseudoIdentitySampler
from .tokenizer import build_tokenizer

__all__ = ["TextImagePairs", "CaptionsThenImages", "build_feature_loader",
           "build_text_image_train_loader", "build_text_image_test_loader", "flatten_pairs",
           "captions_then_images_loader"]

logger = logging.getLogger(__name__)


class ImageReader:
    """Reads and transforms images; an undecodable one raises its DatasetError, or with
    `skip_bad_images` becomes a black placeholder marked invalid (logged once per file)."""

    def __init__(self, transform, skip_bad_images=False):
        self.transform, self.skip_bad_images = transform, skip_bad_images
        self._reported = set()

    def __call__(self, path):
        """(transformed image, 1) or (placeholder, 0)."""
        try:
            return self.transform(load_image(path)), 1
        except DatasetError as err:
            if not self.skip_bad_images:
                raise
            if path not in self._reported:
                self._reported.add(path)
                logger.warning(f"Skipping an undecodable image (DATASETS.SKIP_BAD_IMAGES): {err}")
            return self.transform(Image.new("RGB", (64, 128))), 0


def flatten_pairs(records):
    """(image index, caption) for every caption of `records`, in record order."""
    return [(i, c) for i, rec in enumerate(records) for c in rec.captions]


class TextImagePairs(Dataset):
    """One item per caption: its image (transformed) and its tokens. It keeps only image paths
    and captions: identity labels never enter the training set."""

    def __init__(self, records, transform, tokenizer, skip_bad_images=False):
        self.image_paths = [rec.image_path for rec in records]
        self.pairs = flatten_pairs(records)
        self.read = ImageReader(transform, skip_bad_images)
        self.tokenizer = tokenizer
        self.pair_image = np.array([i for i, _ in self.pairs], dtype=np.int64)
        self.image_labels = self.text_labels = None  # pseudo labels per pair, set each epoch

    def set_pseudo_labels(self, image_labels, text_labels):
        """Per-pair pseudo labels (image cluster, text cluster) that items carry from now on;
        None removes them (instance-level training)."""
        self.image_labels = None if image_labels is None else np.asarray(image_labels)
        self.text_labels = None if text_labels is None else np.asarray(text_labels)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image_index, caption = self.pairs[index]
        image, valid = self.read(self.image_paths[image_index])
        item = {"indices": index, "image_ids": image_index, "images": image, "valid": valid,
                "tokens": self.tokenizer(caption)}
        if self.image_labels is not None:
            item["image_labels"] = int(self.image_labels[index])
            item["text_labels"] = int(self.text_labels[index])
        return item


class CaptionsThenImages(Dataset):
    """Captions first (queries), then images (gallery), for one feature pass: evaluation (with
    identity targets, for the metrics) or the per-epoch pseudo-label pass (without any label)."""

    def __init__(self, captions, image_paths, transform, tokenizer, caption_targets=None,
                 image_targets=None, skip_bad_images=False):
        self.captions, self.image_paths = captions, image_paths
        self.read, self.tokenizer = ImageReader(transform, skip_bad_images), tokenizer
        self.caption_targets, self.image_targets = caption_targets, image_targets

    @classmethod
    def for_evaluation(cls, records, transform, tokenizer, skip_bad_images=False):
        """Every caption and image of `records`, with their identities as targets."""
        pairs = flatten_pairs(records)
        return cls([c for _, c in pairs], [r.image_path for r in records], transform, tokenizer,
                   [records[i].pid for i, _ in pairs], [r.pid for r in records], skip_bad_images)

    @classmethod
    def for_pseudo_labels(cls, pairs_set, transform):
        """The training set's captions (pair order) then unique images (image order); no labels."""
        return cls([c for _, c in pairs_set.pairs], pairs_set.image_paths, transform,
                   pairs_set.tokenizer, skip_bad_images=pairs_set.read.skip_bad_images)

    @property
    def num_query(self):
        return len(self.captions)

    def __len__(self):
        return len(self.captions) + len(self.image_paths)

    def __getitem__(self, index):
        if index < self.num_query:
            item = {"indices": index, "tokens": self.tokenizer(self.captions[index])}
            targets, k = self.caption_targets, index
        else:
            k = index - self.num_query
            image, valid = self.read(self.image_paths[k])
            item = {"indices": index, "images": image, "valid": valid}
            targets = self.image_targets
        if targets is not None:
            item["targets"] = targets[k]
        return item


def _loader(cfg, dataset, batch_sampler):
    """FastReID's DataLoaderX (prefetch thread, copies to the GPU on a side stream) when the model
    is on CUDA; a plain DataLoader otherwise, also on a CUDA machine told MODEL.DEVICE cpu."""
    kwargs = dict(dataset=dataset, batch_sampler=batch_sampler, collate_fn=fast_batch_collator,
                  num_workers=cfg.DATALOADER.NUM_WORKERS)
    if str(cfg.MODEL.DEVICE).startswith("cuda"):
        return DataLoaderX(comm.get_local_rank(), pin_memory=True, **kwargs)
    return DataLoader(**kwargs)


def _log_statistics(data, name):
    if comm.is_main_process():
        logger.info(f"Loaded {name} from {data.annotation_path}:\n{data.statistics_table()}")


def build_text_image_train_loader(cfg):
    """The training loader over every caption of DATASETS.NAMES' train splits."""
    tokenizer = build_tokenizer(cfg)
    records = []
    for name in cfg.DATASETS.NAMES:
        data = build_dataset(cfg, name)
        _log_statistics(data, name)
        records.extend(data.split("train"))
    train_set = TextImagePairs(records, build_transforms(cfg, is_train=True), tokenizer,
                               cfg.DATASETS.SKIP_BAD_IMAGES)
    batch_per_rank = check_batch_split(cfg, comm.get_world_size())
    # The order must agree across ranks: a negative SEED draws one seed shared by all of them.
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    sampler = PseudoIdentitySampler(len(train_set), batch_per_rank, cfg.PSEUDO.NUM_INSTANCES,
                                    cfg.PSEUDO.OUTLIERS, seed=seed)
    batch_sampler = torch.utils.data.BatchSampler(sampler, batch_per_rank, drop_last=True)
    return _loader(cfg, train_set, batch_sampler)


def captions_then_images_loader(cfg, dataset, batch_size):
    """(loader, number of captions) over a CaptionsThenImages set, sharded over the ranks."""
    batch_sampler = KindAwareBatchSampler(len(dataset), dataset.num_query,
                                          max(1, batch_size // comm.get_world_size()))
    return _loader(cfg, dataset, batch_sampler), dataset.num_query


def build_feature_loader(cfg, pairs_set):
    """(loader, number of captions) over the training captions then images, test transforms."""
    dataset = CaptionsThenImages.for_pseudo_labels(pairs_set, build_transforms(cfg, is_train=False))
    return captions_then_images_loader(cfg, dataset, cfg.PSEUDO.BATCH_SIZE)


def build_text_image_test_loader(cfg, test_name):
    """(loader, number of queries) over the captions then images of a DATASETS.TESTS entry
    ("CUHKPEDES" for its test split, "CUHKPEDES:val" for its val split)."""
    name, split = parse_test_name(test_name)
    dataset = CaptionsThenImages.for_evaluation(build_dataset(cfg, name).split(split),
                                                build_transforms(cfg, is_train=False),
                                                build_tokenizer(cfg), cfg.DATASETS.SKIP_BAD_IMAGES)
    return captions_then_images_loader(cfg, dataset, cfg.TEST.IMS_PER_BATCH)
