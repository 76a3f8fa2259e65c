"""Caption and image features in dataset order, on every rank: the one path shared by the
pseudo-label pass, retrieval (tools/retrieve.py) and feature export (tools/export_features.py)."""
import torch
from fastreid.data.transforms import build_transforms
from fastreid.evaluation import inference_on_dataset
from fastreid.utils import comm

from ..data.build import CaptionsThenImages, captions_then_images_loader
from ..data.tokenizer import build_tokenizer
from ..utils.progress import quiet_logger, track
from .t2i_evaluation import FeatureCollector

__all__ = ["extract_features", "encode_captions_and_images", "run_inference"]


class _TrackedLoader:
    """A loader that logs the progress of the pass over it (utils.progress), in items: what
    inference_on_dataset needs of a loader (len, .dataset, iteration), nothing else."""

    def __init__(self, loader, step, unit="items"):
        self.loader, self.step, self.unit, self.dataset = loader, step, unit, loader.dataset
        batches = getattr(loader, "batch_sampler", None)
        # This rank's items; batches of our loaders are index lists, cheap to walk.
        self.total = sum(len(b) for b in batches) if batches is not None else len(loader)
        self.per_batch = (lambda b: len(b["indices"])) if batches is not None else None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return track(self.loader, self.step, self.total, self.unit, count=self.per_batch,
                     enabled=comm.is_main_process())


def run_inference(model, loader, evaluator, step, flip_test=False, unit="items"):
    """FastReID's inference_on_dataset, with this project's progress lines ("`step`: done/total
    `unit` (rate, eta)", rank 0) in place of its own "Inference done" lines. Counts the items of
    the loader's batches (captions or images) when it has a batch sampler, else its batches."""
    with quiet_logger("fastreid.evaluation.evaluator"):
        return inference_on_dataset(model, _TrackedLoader(loader, step, unit), evaluator,
                                    flip_test)


def extract_features(model, loader, num_captions, step=None, dtype=torch.float32):
    """(caption features, image features, image decodable mask) as numpy arrays, the features of
    torch `dtype` (float32 unless asked: evaluation and the tools; the pseudo-label pass asks for
    float16), from a captions-then-images loader; the model is in eval mode meanwhile (FastReID's
    inference). `step` names the pass in the progress lines (default: what it encodes)."""
    num_images = len(loader.dataset) - num_captions
    step = step or f"encoding {num_captions} captions and {num_images} images"
    unit = "images" if num_captions == 0 else "captions" if num_images == 0 else "items"
    collected = run_inference(model, loader, FeatureCollector(dtype), step, unit=unit)
    feats, valid = collected["feats"].numpy(), collected["valid"].numpy()
    return feats[:num_captions], feats[num_captions:], valid[num_captions:]


def encode_captions_and_images(cfg, model, captions, image_paths, batch_size=None, step=None,
                               skip_bad_images=None):
    """extract_features over `captions` and `image_paths` with the test transforms and the
    config's tokenizer (TEST.IMS_PER_BATCH per batch unless `batch_size`). Undecodable images
    stop the pass with one DatasetError unless `skip_bad_images` (default:
    DATASETS.SKIP_BAD_IMAGES); skipped ones are False in the returned mask."""
    skip = cfg.DATASETS.SKIP_BAD_IMAGES if skip_bad_images is None else skip_bad_images
    dataset = CaptionsThenImages(list(captions), list(image_paths),
                                 build_transforms(cfg, is_train=False), build_tokenizer(cfg),
                                 skip_bad_images=skip)
    loader, num_captions = captions_then_images_loader(cfg, dataset,
                                                       batch_size or cfg.TEST.IMS_PER_BATCH)
    return extract_features(model, loader, num_captions, step)
