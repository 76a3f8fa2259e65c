"""CLIP weights made by a pretraining config: what MODEL.CLIP.PRETRAINED accepts besides an
open_clip tag or a weight file.

When MODEL.CLIP.PRETRAINED names a YAML config (a "recipe", e.g. configs/CPCL/synthetic-web.yml),
the weights are those that training that config produces: an ordinary run of
``tools/train_net.py --config-file <recipe>``, exported as an open_clip state dict. Like the
synthetic dataset, they are made once, into a file named by a hash of what produces them (the
recipe's full config and the synthetic generator's version), written atomically (a temporary file
renamed into place), and reused afterwards. open_clip then loads that file exactly as it loads a
downloaded CLIP checkpoint.

    path = ensure_pretrained_weights(cfg)   # generates on first use; None for tags and plain files
"""
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from ..config import ConfigError

__all__ = ["RECIPE_SUFFIXES", "is_recipe", "open_clip_state_dict", "pretrained_weights_path",
           "ensure_pretrained_weights", "export_open_clip_weights", "without_pretrained_weights"]

logger = logging.getLogger(__name__)

RECIPE_SUFFIXES = (".yml", ".yaml")
# Bump when the export below changes, so that cached weights are made again.
EXPORT_VERSION = "1"
_TRAIN_NET = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "train_net.py")


def is_recipe(pretrained):
    return str(pretrained).lower().endswith(RECIPE_SUFFIXES)


def _recipe_config(recipe, data_root):
    """The recipe's full config as its training run will see it (DATASETS.ROOT = `data_root`)."""
    from ..config import load_config
    if not os.path.isfile(recipe):
        raise ConfigError(f"MODEL.CLIP.PRETRAINED {recipe} does not exist; name an existing "
                          f"pretraining config (relative to the current directory), an open_clip "
                          f"tag or a weight file.")
    return load_config(recipe, ["DATASETS.ROOT", data_root], check=False)


def pretrained_weights_path(cfg, _within=()):
    """Where the weights of the recipe in cfg.MODEL.CLIP.PRETRAINED are cached:
    ``<dataset root>/pretrained/<arch>-<recipe name>-<hash>.pth``, the hash covering the recipe's
    full config (paths aside), the synthetic generator's version and, when the recipe itself
    starts from a recipe, that one's cached file (so editing either makes the weights again).
    `_within`: the recipes whose hash asks for this one, to refuse a cycle."""
    from ..data.datasets import dataset_root
    from ..data.synthetic import GENERATOR_VERSION
    recipe, root = cfg.MODEL.CLIP.PRETRAINED, dataset_root(cfg)
    if os.path.abspath(recipe) in _within:
        raise ConfigError(f"MODEL.CLIP.PRETRAINED recipes form a cycle: "
                          f"{' -> '.join(_within + (os.path.abspath(recipe),))}.")
    recipe_cfg = _recipe_config(recipe, root)
    if recipe_cfg.MODEL.CLIP.ARCH != cfg.MODEL.CLIP.ARCH:
        raise ConfigError(f"MODEL.CLIP.PRETRAINED {recipe} trains {recipe_cfg.MODEL.CLIP.ARCH}, "
                          f"but MODEL.CLIP.ARCH is {cfg.MODEL.CLIP.ARCH}; use the same "
                          f"architecture in both.")
    starts_from = ""
    if is_recipe(recipe_cfg.MODEL.CLIP.PRETRAINED):
        starts_from = os.path.basename(pretrained_weights_path(
            recipe_cfg, _within + (os.path.abspath(recipe),)))
    produced_by = recipe_cfg.clone()
    produced_by.defrost()
    produced_by.OUTPUT_DIR, produced_by.DATASETS.ROOT = "", ""  # where, not what
    blob = (produced_by.dump() + GENERATOR_VERSION + EXPORT_VERSION + starts_from).encode()
    name = os.path.splitext(os.path.basename(recipe))[0]
    return os.path.join(root, "pretrained",
                        f"{cfg.MODEL.CLIP.ARCH}-{name}-{hashlib.sha1(blob).hexdigest()[:10]}.pth")


def open_clip_state_dict(model):
    """The open_clip CLIP state dict of a CPCL model whose towers are both open_clip's: what
    ``open_clip.create_model(arch, pretrained=file)`` loads. The learned temperature goes into
    CLIP's ``logit_scale``."""
    from .encoders import OpenCLIPImageBackbone, OpenCLIPTextEncoder
    if not (isinstance(model.backbone, OpenCLIPImageBackbone)
            and isinstance(model.text_encoder, OpenCLIPTextEncoder)) or "image" in model.heads:
        raise ConfigError("Only a model of two open_clip towers (MODEL.BACKBONE.NAME "
                          "build_openclip_backbone, MODEL.TEXT_ENCODER.NAME "
                          "build_openclip_text_encoder) can be exported as CLIP weights.")
    state = {f"visual.{k}": v for k, v in model.backbone.visual.state_dict().items()}
    state.update(model.text_encoder.clip.state_dict())
    state["logit_scale"] = model.log_logit_scale.detach().reshape(state["logit_scale"].shape)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def without_pretrained_weights(cfg):
    """A copy of cfg whose CLIP starts from random weights: for models whose every weight is then
    loaded from a checkpoint (no pretraining config need be trained, no download made)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.CLIP.PRETRAINED = ""
    return cfg


def export_open_clip_weights(cfg, checkpoint, path):
    """Write the open_clip weights of a CPCL `checkpoint` (model_*.pth, trained with `cfg`) to
    `path`."""
    from ..engine.checkpoint import load_model_weights
    from .meta_arch import CPCL
    model = CPCL(without_pretrained_weights(cfg))  # every weight comes from the checkpoint
    load_model_weights(model, checkpoint)
    torch.save(open_clip_state_dict(model), path)
    return path


def ensure_pretrained_weights(cfg):
    """The local weight file that MODEL.CLIP.PRETRAINED stands for when it names a recipe, made
    on first use (a training run in a child process, about as long as the recipe's own run);
    None when it is a tag, a file or empty. Safe when several processes ask at once: each trains
    in its own temporary folder and the last rename wins."""
    recipe = cfg.MODEL.CLIP.PRETRAINED
    if not is_recipe(recipe):
        return None
    path = pretrained_weights_path(cfg)  # refuses a cycle of recipes
    if os.path.isfile(path):
        return path
    if not os.path.isfile(_TRAIN_NET):
        raise ConfigError(f"MODEL.CLIP.PRETRAINED {recipe} is made by tools/train_net.py of a "
                          f"cpcl-plugin checkout, which is not at {_TRAIN_NET}; train the recipe "
                          f"there and set MODEL.CLIP.PRETRAINED to its exported weights.")
    from ..data.datasets import dataset_root
    root = dataset_root(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".pretraining-", dir=os.path.dirname(path))
    logger.info(f"MODEL.CLIP.PRETRAINED {recipe}: pretraining once (python tools/train_net.py "
                f"--config-file {recipe}); the weights are cached in {path}")
    try:
        # Its log goes to stderr: the caller's stdout may be a result (a benchmark's tables).
        proc = subprocess.run([sys.executable, _TRAIN_NET, "--config-file", recipe,
                               "DATASETS.ROOT", root, "OUTPUT_DIR", work],
                              stdout=sys.stderr)
        final = os.path.join(work, "model_final.pth")
        if proc.returncode or not os.path.isfile(final):
            raise ConfigError(f"MODEL.CLIP.PRETRAINED {recipe}: its pretraining run failed "
                              f"(exit status {proc.returncode}; its messages are above).")
        # Exported inside the work folder, then renamed into place: complete or absent.
        weights = export_open_clip_weights(_recipe_config(recipe, root), final,
                                           os.path.join(work, "weights.pth"))
        if os.path.isfile(os.path.join(work, "log.txt")):  # how they were made, beside them
            os.replace(os.path.join(work, "log.txt"), path[:-len(".pth")] + ".log.txt")
        os.replace(weights, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(f"Pretrained weights ready: {path}")
    return path
