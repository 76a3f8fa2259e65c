"""Where the CLIP weights of MODEL.CLIP.PRETRAINED come from, as open_clip's pretrained.py says
where a tag's weights live: an open_clip tag, a local weight file, or a pretraining config (a
"recipe", e.g. configs/CPCL/synthetic-web.yml). A recipe stands for the weights that training it
produces, cached under a hash of what produces them; cpcl_plugin/engine/pretraining.py makes them
before a model is built (CPCLTrainer.build_model, the command line's preflight).

    path = pretrained_weights_path(cfg)   # <dataset root>/pretrained/<arch>-<recipe>-<hash>.pth
"""
import hashlib
import os

from ..config import load_config
from ..data.datasets import dataset_root
from ..data.synthetic import GENERATOR_VERSION
from ..errors import ConfigError

__all__ = ["RECIPE_SUFFIXES", "EXPORT_VERSION", "is_recipe", "recipe_config",
           "pretrained_weights_path", "without_pretrained_weights"]

RECIPE_SUFFIXES = (".yml", ".yaml")
# Keys declared after caches were first named: left out of the hash while they hold their
# defaults, so that those caches keep their names (a recipe that sets one gets a name of its own).
LATER_KEYS = ("PSEUDO.IVF.MIN_RECALL", "PSEUDO.IVF.MAX_NPROBE", "PSEUDO.IVF.RECALL_ROWS")
# Bump when the export (engine/pretraining.py: open_clip_state_dict) changes, so that cached
# weights are made again.
EXPORT_VERSION = "1"


def is_recipe(pretrained):
    """Whether MODEL.CLIP.PRETRAINED names a pretraining config rather than a tag or a file."""
    return str(pretrained).lower().endswith(RECIPE_SUFFIXES)


def recipe_config(recipe, data_root):
    """The recipe's full config as its training run will see it (DATASETS.ROOT = `data_root`)."""
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
    recipe, root = cfg.MODEL.CLIP.PRETRAINED, dataset_root(cfg)
    if os.path.abspath(recipe) in _within:
        raise ConfigError(f"MODEL.CLIP.PRETRAINED recipes form a cycle: "
                          f"{' -> '.join(_within + (os.path.abspath(recipe),))}.")
    recipe_cfg = recipe_config(recipe, root)
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
    # How many checkpoints the run keeps and how its test split is searched, not what it trains;
    # removed, not blanked, so that the caches made before the keys existed keep their names.
    del produced_by.SOLVER["CHECKPOINT_KEEP"]
    del produced_by.TEST["IDS_PER_GALLERY"]
    defaults = load_config(check=False)
    for key in LATER_KEYS:
        *path, leaf = key.split(".")
        node, default = produced_by, defaults
        for part in path:
            node, default = node[part], default[part]
        if node[leaf] == default[leaf]:
            del node[leaf]
    blob = (produced_by.dump() + GENERATOR_VERSION + EXPORT_VERSION + starts_from).encode()
    name = os.path.splitext(os.path.basename(recipe))[0]
    return os.path.join(root, "pretrained",
                        f"{cfg.MODEL.CLIP.ARCH}-{name}-{hashlib.sha1(blob).hexdigest()[:10]}.pth")


def without_pretrained_weights(cfg):
    """A copy of cfg whose CLIP starts from random weights: for models whose every weight is then
    loaded from a checkpoint (no pretraining config need be trained, no download made)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.CLIP.PRETRAINED = ""
    return cfg
