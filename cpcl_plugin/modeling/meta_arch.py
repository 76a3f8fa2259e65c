"""The CPCL meta-architecture: an image encoder and a text encoder in one embedding space."""
import math

import torch
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from .encoders import (ImageEmbeddingHead, build_text_encoder, clip_image_size,
                       feature_map_channels, normalize)
from .losses import cross_prototype_loss, intra_prototype_loss, itc_loss, sdm_loss
from .memory import PrototypeMemory

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
        c = cfg.MODEL.CPCL
        self.itc_weight, self.sdm_weight = c.ITC_WEIGHT, c.SDM_WEIGHT
        self.intra_weight, self.cross_weight = c.INTRA_WEIGHT, c.CROSS_WEIGHT
        self.text_intra = c.TEXT_INTRA
        self.proto_temperature = c.PROTO_TEMPERATURE
        # Prototypes of the current pseudo identities (filled by the PseudoLabelHook).
        self.memory = PrototypeMemory()

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
        # Under mixed precision (SOLVER.AMP) only the encoders run in half precision: the losses,
        # their softmaxes and the memory are computed in float32.
        with torch.autocast(self.device.type, enabled=False):
            return self._losses(image_features.float(), text_features.float(), batch)

    def _losses(self, image_features, text_features, batch):
        image_ids = batch["image_ids"].to(self.device)
        if "image_labels" not in batch or not self.memory.ready:
            return self.instance_losses(image_features, text_features, image_ids)
        a = batch["image_labels"].to(self.device)
        b = batch["text_labels"].to(self.device)
        self.memory.stage(image_features, text_features, a, b)
        losses = self.instance_losses(image_features, text_features, image_ids, a)
        losses.update(self.prototype_losses(image_features, text_features, a, b))
        return losses

    def instance_losses(self, image_features, text_features, image_ids, image_labels=None):
        losses = {"loss_itc": self.itc_weight * itc_loss(image_features, text_features,
                                                          self.logit_scale, image_ids)}
        if self.sdm_weight > 0 and image_labels is not None:
            losses["loss_sdm"] = self.sdm_weight * sdm_loss(image_features, text_features,
                                                            self.logit_scale, image_labels, image_ids)
        return losses

    def prototype_losses(self, image_features, text_features, image_labels, text_labels):
        """PMM intra-modal and HCM cross-modal prototype losses; labels -1 are left out."""
        m, tau = self.memory, self.proto_temperature
        losses = {}
        if self.intra_weight > 0:
            losses["loss_v2v"] = self.intra_weight * intra_prototype_loss(
                image_features, m.image_prototypes, image_labels, tau)
            if self.text_intra:
                losses["loss_t2t"] = self.intra_weight * intra_prototype_loss(
                    text_features, m.text_prototypes, text_labels, tau)
        if self.cross_weight > 0:
            losses["loss_v2t"] = self.cross_weight * cross_prototype_loss(
                image_features, m.text_prototypes, image_labels, m.cooccurring_texts(image_labels),
                tau)
            losses["loss_t2v"] = self.cross_weight * cross_prototype_loss(
                text_features, m.image_prototypes, text_labels, m.cooccurring_images(text_labels),
                tau)
        return losses
