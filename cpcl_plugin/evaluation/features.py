"""Caption and image features in dataset order, on every rank: the one path shared by the
pseudo-label pass, retrieval (tools/retrieve.py) and feature export (tools/export_features.py)."""
from fastreid.data.transforms import build_transforms
from fastreid.evaluation import inference_on_dataset

from ..data.build import CaptionsThenImages, captions_then_images_loader
from ..data.tokenizer import build_tokenizer
from .t2i_evaluation import FeatureCollector

__all__ = ["extract_features", "encode_captions_and_images"]


def extract_features(model, loader, num_captions):
    """(caption features, image features, image decodable mask) as float32 numpy arrays, from a
    captions-then-images loader; the model is in eval mode meanwhile (FastReID's inference)."""
    collected = inference_on_dataset(model, loader, FeatureCollector())
    feats, valid = collected["feats"].numpy(), collected["valid"].numpy()
    return feats[:num_captions], feats[num_captions:], valid[num_captions:]


def encode_captions_and_images(cfg, model, captions, image_paths, batch_size=None):
    """extract_features over `captions` and `image_paths` with the test transforms and the
    config's tokenizer (TEST.IMS_PER_BATCH per batch unless `batch_size`)."""
    dataset = CaptionsThenImages(list(captions), list(image_paths),
                                 build_transforms(cfg, is_train=False), build_tokenizer(cfg),
                                 skip_bad_images=cfg.DATASETS.SKIP_BAD_IMAGES)
    loader, num_captions = captions_then_images_loader(cfg, dataset,
                                                       batch_size or cfg.TEST.IMS_PER_BATCH)
    return extract_features(model, loader, num_captions)
