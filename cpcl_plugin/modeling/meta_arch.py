"""The CPCL meta-architecture: an image encoder and a text encoder in one embedding space."""
import math

import torch
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from .encoders import (ImageEmbeddingHead, build_text_encoder, clip_image_size,
                       feature_map_channels, normalize)
from .losses import itc_loss

__all__ = ["CPCL"]


@META_ARCH_REGISTRY.register()
class CPCL(nn.Module):
    """Train mode: ``model(batch)`` returns a dict of named, weighted losses.
    Eval mode: ``model(batch)`` returns L2-normalised features of the batch's captions (if it has
    ``tokens``) or of its images; ``encode_image`` / ``encode_text`` do the same for inference code.

    Modules created here (not pretrained) live under ``heads``, so FastReID's optimiser gives them
    SOLVER.HEADS_LR_FACTOR times the base learning rate.
    """

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.text_encoder = build_text_encoder(cfg)
        embed_dim = self.text_encoder.output_dim
        self.heads = nn.ModuleDict()
        if getattr(self.backbone, "output_dim", None) is None:
            channels = feature_map_channels(self.backbone, clip_image_size(cfg))
            self.heads["image"] = ImageEmbeddingHead(channels, embed_dim,
                                                     cfg.MODEL.IMAGE_HEAD.POOL_LAYER)
        elif self.backbone.output_dim != embed_dim:
            self.heads["image"] = nn.Linear(self.backbone.output_dim, embed_dim)

        log_scale = torch.tensor(math.log(1.0 / cfg.MODEL.CPCL.TEMPERATURE))
        if cfg.MODEL.CPCL.LEARN_TEMPERATURE:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.itc_weight = cfg.MODEL.CPCL.ITC_WEIGHT

        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1),
                             persistent=False)

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def logit_scale(self):
        # Clamped as in CLIP, so a learnable temperature cannot run away (max scale 100).
        return self.log_logit_scale.clamp(max=math.log(100.0)).exp()

    def encode_image(self, images):
        """Images in 0-255 (FastReID's ToTensor), (B, 3, H, W) -> normalised (B, d)."""
        images = (images.to(self.device, non_blocking=True) - self.pixel_mean) / self.pixel_std
        features = self.backbone(images)
        if "image" in self.heads:
            features = self.heads["image"](features)
        return normalize(features)

    def encode_text(self, tokens):
        """Token ids (B, L) -> normalised (B, d)."""
        return normalize(self.text_encoder(tokens.to(self.device, non_blocking=True)))

    def forward(self, batch):
        if not self.training:
            if "tokens" in batch:
                return self.encode_text(batch["tokens"])
            return self.encode_image(batch["images"])
        image_features = self.encode_image(batch["images"])
        text_features = self.encode_text(batch["tokens"])
        image_ids = batch["image_ids"].to(self.device)
        return self.losses(image_features, text_features, image_ids)

    def losses(self, image_features, text_features, image_ids):
        return {"loss_itc": self.itc_weight * itc_loss(image_features, text_features,
                                                        self.logit_scale, image_ids)}
