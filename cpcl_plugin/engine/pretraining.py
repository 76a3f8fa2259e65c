"""Making the weights a pretraining config stands for (modeling/pretrained.py says where they are
cached): an ordinary training run of the recipe (cpcl_plugin.train's command line, --config-file
<recipe>) in a child process, exported as an open_clip state dict. Like the synthetic dataset,
they are made once, written atomically (a temporary folder, then a rename), and reused; open_clip
then loads the file as it loads a downloaded CLIP checkpoint. `CPCLTrainer.build_model` and the
command line's preflight call `ensure_pretrained_weights` before a model is built.

    path = ensure_pretrained_weights(cfg)   # made on first use; None for tags and plain files
"""
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from ..data.datasets import dataset_root
from ..errors import ConfigError
from ..modeling.encoders import OpenCLIPImageBackbone, OpenCLIPTextEncoder
from ..modeling.meta_arch import CPCL
from ..modeling.pretrained import (is_recipe, pretrained_weights_path, recipe_config,
                                   without_pretrained_weights)
from ..utils.checkpoint import load_model_weights

__all__ = ["ensure_pretrained_weights", "export_open_clip_weights", "open_clip_state_dict"]

logger = logging.getLogger(__name__)

# The child's program: cpcl_plugin.train's command line, from this same copy of the package. Its
# folder replaces the current directory that `python -c` puts first on the path (another
# checkout's cpcl_plugin there would win); where the folder is on the path already (an installed
# package in site-packages), the current directory is only dropped.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHILD_MAIN = (f"import sys; p = {_PACKAGE_PARENT!r}; "
               f"sys.path[0:1] = [] if p in sys.path else [p]; "
               f"from cpcl_plugin.train import cli; sys.exit(cli())")


def open_clip_state_dict(model):
    """The open_clip CLIP state dict of a CPCL model whose towers are both open_clip's: what
    ``open_clip.create_model(arch, pretrained=file)`` loads. The learned temperature goes into
    CLIP's ``logit_scale``."""
    if not (isinstance(model.backbone, OpenCLIPImageBackbone)
            and isinstance(model.text_encoder, OpenCLIPTextEncoder)) or "image" in model.heads:
        raise ConfigError("Only a model of two open_clip towers (MODEL.BACKBONE.NAME "
                          "build_openclip_backbone, MODEL.TEXT_ENCODER.NAME "
                          "build_openclip_text_encoder) can be exported as CLIP weights.")
    state = {f"visual.{k}": v for k, v in model.backbone.visual.state_dict().items()}
    state.update(model.text_encoder.clip.state_dict())
    state["logit_scale"] = model.log_logit_scale.detach().reshape(state["logit_scale"].shape)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def export_open_clip_weights(cfg, checkpoint, path):
    """Write the open_clip weights of a CPCL `checkpoint` (model_*.pth, trained with `cfg`) to
    `path`."""
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
    root = dataset_root(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".pretraining-", dir=os.path.dirname(path))
    logger.info(f"MODEL.CLIP.PRETRAINED {recipe}: pretraining once (python tools/train_net.py "
                f"--config-file {recipe}); the weights are cached in {path}")
    try:
        # Its log goes to stderr: the caller's stdout may be a result (a benchmark's tables).
        proc = subprocess.run([sys.executable, "-c", _CHILD_MAIN, "--config-file", recipe,
                               "DATASETS.ROOT", root, "OUTPUT_DIR", work], stdout=sys.stderr)
        final = os.path.join(work, "model_final.pth")
        if proc.returncode or not os.path.isfile(final):
            raise ConfigError(f"MODEL.CLIP.PRETRAINED {recipe}: its pretraining run failed "
                              f"(exit status {proc.returncode}; its messages are above).")
        # Exported inside the work folder, then renamed into place: complete or absent.
        weights = export_open_clip_weights(recipe_config(recipe, root), final,
                                           os.path.join(work, "weights.pth"))
        if os.path.isfile(os.path.join(work, "log.txt")):  # how they were made, beside them
            os.replace(os.path.join(work, "log.txt"), path[:-len(".pth")] + ".log.txt")
        os.replace(weights, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(f"Pretrained weights ready: {path}")
    return path
