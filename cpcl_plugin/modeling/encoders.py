"""Image and text encoders, chosen by config.

- ``build_openclip_backbone`` (FastReID BACKBONE_REGISTRY): the image tower of any open_clip
  architecture; returns the projected image embedding.
- ``build_openclip_text_encoder`` (the plugin's TEXT_ENCODER_REGISTRY): the text tower of the same
  architecture; returns the projected end-of-text token.
- Any other FastReID backbone (``build_resnet_backbone``, ``build_osnet_backbone``, ...) returns a
  feature map; `ImageEmbeddingHead` pools and projects it to the text embedding size.

The plugin registers a small architecture, ``CPCL-Tiny``, used by the tests and the demo.
"""
import logging
import os

import open_clip
import torch
import torch.nn.functional as F
from fastreid.layers import pooling
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.utils.registry import Registry
from open_clip.factory import load_state_dict
from torch import nn

from ..compat import registry_names
from ..errors import ConfigError, error_summary
from ..utils.checkpoint import check_weight_file
from .pretrained import is_recipe, pretrained_weights_path

__all__ = ["TEXT_ENCODER_REGISTRY", "build_text_encoder", "create_clip_model",
           "OpenCLIPImageBackbone", "OpenCLIPTextEncoder", "ImageEmbeddingHead"]

logger = logging.getLogger(__name__)

open_clip.add_model_config(os.path.join(os.path.dirname(__file__), "model_configs"))

TEXT_ENCODER_REGISTRY = Registry("TEXT_ENCODER")
TEXT_ENCODER_REGISTRY.__doc__ = """Text encoders: a builder takes the config and returns a module
mapping token ids (B, L) to embeddings (B, d), with an ``output_dim`` attribute."""


def clip_image_size(cfg):
    return tuple(int(v) for v in (cfg.MODEL.CLIP.IMAGE_SIZE or cfg.INPUT.SIZE_TRAIN))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record):
        return "No pretrained weights loaded" not in record.getMessage()


class _PositionEmbeddingResize(logging.Filter):
    """Catches open_clip's root-logger INFO line about resizing the position embedding grid (it
    never shows: nothing configures the root logger) so it can be said in this project's log,
    with the image sizes; lets every other record through unchanged."""

    def __init__(self, root_level):
        super().__init__()
        self.grids, self.root_level = None, root_level

    def filter(self, record):
        if record.getMessage().startswith("Resizing position embedding grid-size"):
            self.grids = record.args
            return False
        return record.levelno >= self.root_level  # what the root logger passed before


def create_clip_model(cfg):
    """The open_clip model of MODEL.CLIP at the configured image size and context length, with
    weights from MODEL.CLIP.PRETRAINED (tag, file, or a pretraining config whose cached weights
    engine/pretraining.py has made; position embeddings interpolated)."""
    arch, pretrained = cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.PRETRAINED or None
    if arch not in open_clip.list_models():
        raise ConfigError(f"MODEL.CLIP.ARCH {arch!r} is not an open_clip architecture; choose one "
                          f"of open_clip.list_models(), e.g. ViT-B-16, ViT-L-14, CPCL-Tiny.")
    recipe = None
    if pretrained and is_recipe(pretrained):
        recipe, pretrained = pretrained, pretrained_weights_path(cfg)  # a local file from here on
        if not os.path.isfile(pretrained):
            raise ConfigError(
                f"MODEL.CLIP.PRETRAINED {recipe}: its weights are not made yet ({pretrained}); "
                f"train with tools/train_net.py or CPCLTrainer, which make them first, or call "
                f"cpcl_plugin.engine.pretraining.ensure_pretrained_weights(cfg) before building "
                f"the model.")
    is_tag = bool(pretrained and open_clip.get_pretrained_cfg(arch, pretrained))
    if pretrained and not is_tag:
        if not os.path.exists(pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ConfigError(
                f"MODEL.CLIP.PRETRAINED {pretrained!r} is neither an existing file nor an "
                f"open_clip tag of {arch} (its tags: {tags}); name a weight file, a tag, a "
                f"pretraining config (.yml), or leave it empty for random weights.")
        check_weight_file("MODEL.CLIP.PRETRAINED", pretrained, "a weight file",
                          "name the weight file in it (.pt, .pth, .bin or .safetensors)")
    image_size = clip_image_size(cfg)
    if isinstance(open_clip.get_model_config(arch)["vision_cfg"].get("layers"), (list, tuple)):
        # open_clip's ModifiedResNet (RN50, RN101, ...) pools a square grid only.
        if image_size[0] != image_size[1]:
            raise ConfigError(f"MODEL.CLIP.ARCH {arch} takes square images only, but the image size "
                              f"is {list(image_size)}; use a ViT architecture for person crops, or "
                              f"a FastReID ResNet via MODEL.BACKBONE.NAME build_resnet_backbone.")
        image_size = image_size[0]
    # Weights trained with QuickGELU (OpenAI's) need it at run time; open_clip only warns.
    quick_gelu = bool(is_tag and open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu"))
    quiet = _DropRandomInitWarning() if not pretrained else None
    if quiet:  # random init is what MODEL.CLIP.PRETRAINED "" asks for; say it once, our way
        logging.getLogger().addFilter(quiet)
        logger.info(f"open_clip {arch}: random initialisation (MODEL.CLIP.PRETRAINED is empty)")
    root = logging.getLogger()
    root_level = root.level
    resize = _PositionEmbeddingResize(root_level)
    root.addFilter(resize)
    root.setLevel(min(root_level, logging.INFO))  # so that open_clip's INFO line reaches it
    try:
        model = open_clip.create_model(
            arch, pretrained=pretrained, force_image_size=image_size, force_quick_gelu=quick_gelu,
            force_context_length=cfg.MODEL.CLIP.CONTEXT_LENGTH, device="cpu",
            require_pretrained=bool(pretrained))
    except Exception as err:  # open_clip's reader and loader raise errors of many kinds
        if not pretrained:
            raise
        said = error_summary(err)
        if is_tag:
            raise ConfigError(
                f"MODEL.CLIP.PRETRAINED {pretrained!r} could not be loaded for {arch} ({said}). "
                f"Without internet access, download the weights elsewhere and set "
                f"MODEL.CLIP.PRETRAINED to the local file.") from None
        unreadable = _unreadable_weights(pretrained)
        if unreadable and recipe:  # the project's own cache: damaged after it was checked
            raise ConfigError(
                f"MODEL.CLIP.PRETRAINED {recipe}: its cached weights {pretrained} cannot be read "
                f"({unreadable}); delete them and their .sha256 file, and the next run pretrains "
                f"them again.") from None
        if unreadable:
            raise ConfigError(
                f"MODEL.CLIP.PRETRAINED {pretrained} is not a weight file open_clip can read "
                f"({unreadable}); name an open_clip state dict saved with torch.save, or a "
                f".safetensors file.") from None
        raise ConfigError(
            f"MODEL.CLIP.PRETRAINED {pretrained} does not fit MODEL.CLIP.ARCH {arch} ({said}); it "
            f"must be an open_clip state dict of that architecture (OpenAI's TorchScript .pt "
            f"archives are not accepted).") from None
    finally:
        root.removeFilter(resize)
        root.setLevel(root_level)
        if quiet:
            logging.getLogger().removeFilter(quiet)
    if pretrained:
        logger.info(f"Loaded open_clip {arch} weights from {pretrained}")
    if resize.grids:
        (old_h, old_w), (new_h, new_w) = (tuple(g) for g in resize.grids)
        patch_h, patch_w = (int(v) for v in model.visual.patch_size) \
            if hasattr(model.visual, "patch_size") else (1, 1)
        logger.info(f"Position embeddings of MODEL.CLIP.PRETRAINED interpolated from a "
                    f"{old_h}x{old_w} grid ({old_h * patch_h}x{old_w * patch_w} pixels) to "
                    f"{new_h}x{new_w} ({new_h * patch_h}x{new_w * patch_w} pixels)")
    if cfg.MODEL.CLIP.GRAD_CHECKPOINTING:
        model.set_grad_checkpointing(True)
    return model


def _unreadable_weights(path):
    """Why open_clip's reader cannot read `path` as a state dict of tensors; None when it can."""
    try:
        state = load_state_dict(path, device="cpu")
    except Exception as err:  # torch.load, pickle, zip and safetensors errors alike
        return error_summary(err)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        return "it holds no state dict of tensors"
    return None


class OpenCLIPImageBackbone(nn.Module):
    """The image tower of an open_clip model: images (B, 3, H, W) -> embeddings (B, d)."""

    def __init__(self, clip_model):
        super().__init__()
        self.visual = clip_model.visual
        self.output_dim = int(self.visual.output_dim)

    def forward(self, images):
        return self.visual(images)


class OpenCLIPTextEncoder(nn.Module):
    """The text tower of an open_clip model: token ids (B, L) -> embeddings (B, d)."""

    def __init__(self, clip_model):
        super().__init__()
        del clip_model.visual  # the image tower lives in the backbone
        # CLIP's own temperature is replaced by the meta-architecture's; keep it out of training.
        clip_model.logit_scale.requires_grad_(False)
        if getattr(clip_model, "logit_bias", None) is not None:
            clip_model.logit_bias.requires_grad_(False)
        self.clip = clip_model
        self.output_dim = int(clip_model.text_projection.shape[1]
                              if isinstance(clip_model.text_projection, nn.Parameter)
                              else clip_model.text_projection.out_features)

        # Causal attention pooled at the end-of-text token: positions after the batch's last
        # pooled token cannot change any caption's embedding, so they are not computed (captions
        # are far shorter than the context). Other text towers run unchanged.
        clip = clip_model
        self.trims_padding = (isinstance(clip, open_clip.CLIP)
                              and getattr(clip, "attn_mask", None) is not None
                              and getattr(clip, "text_pool_type", None) in ("argmax", "eos"))

    def forward(self, tokens):
        if not self.trims_padding or not tokens.numel():
            return self.clip.encode_text(tokens)
        clip = self.clip
        # The position each caption is read at: its end-of-text token (the largest id, or the
        # tokenizer's eos id), as open_clip pools.
        pooled_at = (tokens.argmax(dim=1) if clip.text_pool_type == "argmax"
                     else (tokens == clip.text_eos_id).int().argmax(dim=1))
        length = int(pooled_at.max()) + 1
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens[:, :length]).to(cast_dtype)
        x = x + clip.positional_embedding[:length].to(cast_dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
        x = clip.ln_final(x)[torch.arange(x.shape[0], device=x.device), pooled_at]
        if isinstance(clip.text_projection, nn.Linear):
            return clip.text_projection(x)
        return x if clip.text_projection is None else x @ clip.text_projection


@BACKBONE_REGISTRY.register()
def build_openclip_backbone(cfg):
    return OpenCLIPImageBackbone(create_clip_model(cfg))


@TEXT_ENCODER_REGISTRY.register()
def build_openclip_text_encoder(cfg):
    return OpenCLIPTextEncoder(create_clip_model(cfg))


def build_text_encoder(cfg):
    name = cfg.MODEL.TEXT_ENCODER.NAME
    try:
        builder = TEXT_ENCODER_REGISTRY.get(name)
    except KeyError:
        raise ConfigError(f"MODEL.TEXT_ENCODER.NAME {name!r} is not registered; known: "
                          f"{', '.join(registry_names(TEXT_ENCODER_REGISTRY))}.") from None
    return builder(cfg)


class ImageEmbeddingHead(nn.Module):
    """Pools a FastReID backbone's feature map (B, C, h, w) and projects it to (B, d)."""

    def __init__(self, in_channels, embed_dim, pool_layer="GlobalAvgPool"):
        super().__init__()
        if not hasattr(pooling, pool_layer):
            raise ConfigError(f"MODEL.IMAGE_HEAD.POOL_LAYER {pool_layer!r} is not a layer of "
                              f"fastreid.layers.pooling (e.g. GlobalAvgPool, GeneralizedMeanPoolingP).")
        self.pool = getattr(pooling, pool_layer)()
        self.projection = nn.Linear(in_channels, embed_dim)
        nn.init.normal_(self.projection.weight, std=in_channels ** -0.5)
        nn.init.zeros_(self.projection.bias)

    def forward(self, feature_map):
        return self.projection(self.pool(feature_map).flatten(1))


def feature_map_channels(backbone, image_size):
    """Channels of a backbone's output, found with one small forward pass."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, *image_size))
    backbone.train(was_training)
    if out.dim() != 4:
        raise ConfigError(f"MODEL.BACKBONE.NAME {type(backbone).__name__} returns a {out.dim()}-D "
                          f"tensor; a FastReID backbone must return a (B, C, H, W) feature map.")
    return int(out.shape[1])


def normalize(x):
    return F.normalize(x.float(), dim=-1)
