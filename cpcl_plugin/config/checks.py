"""The values every key may take, and the combinations that would otherwise fail deep inside
training: `config_problems` finds them all at once, one sentence each, before anything is built."""
import re

import numpy as np
import torch
from fastreid.config import get_cfg
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.solver.build import GradientClipType

from ..compat.registries import backbone_depths, registry_names
from ..errors import ConfigError
from .keys import add_cpcl_config

__all__ = ["RANGES", "CHOICES", "IMAGE_SIZES", "config_problems", "check_config", "problem_list",
           "check_batch_split"]

# The range of every numeric key the plugin declares, and of the FastReID keys its optimiser,
# schedule, sampler, loaders and augmentations read. `check_config` reports every key outside its
# range at once, before anything is built. A range is "> a", ">= a", "< a", "<= a" or an interval
# "in [a, b)" (a bracket includes its bound, a parenthesis excludes it); a second item, where
# given, says why.
RANGES = {
    # numpy takes seeds below 2**32, and each process adds its rank; negative: a random seed.
    "SEED": "<= 2147483647",
    # Start and end tokens plus at least one word.
    "MODEL.CLIP.CONTEXT_LENGTH": ">= 3",
    "MODEL.CPCL.ITC_WEIGHT": ">= 0",
    "MODEL.CPCL.TEMPERATURE": "> 0",
    "MODEL.CPCL.SDM_WEIGHT": ">= 0",
    "MODEL.CPCL.INTRA_WEIGHT": ">= 0",
    "MODEL.CPCL.CROSS_WEIGHT": ">= 0",
    "MODEL.CPCL.PROTO_TEMPERATURE": "> 0",
    "MODEL.CPCL.MEMORY_MOMENTUM": ("in [0, 1)", "at 1 the memory would never move"),
    "PSEUDO.START_EPOCH": ">= 0",
    "PSEUDO.EPS": ("in (0, 1)", "a radius on the Jaccard distance, which lies in [0, 1]"),
    "PSEUDO.MIN_SAMPLES": ">= 1",
    "PSEUDO.K1": ">= 1",
    "PSEUDO.K2": ">= 1",
    "PSEUDO.EXACT_MAX": ">= 0",
    "PSEUDO.IVF.NLIST": (">= 0", "0 picks about 2 sqrt(N) cells"),
    "PSEUDO.IVF.NPROBE": ">= 1",
    "PSEUDO.IVF.TRAIN_PER_LIST": (">= 39", "faiss's k-means wants at least 39 training rows a cell"),
    "PSEUDO.IVF.MIN_RECALL": ("in [0, 1]", "a share of the exact neighbours found"),
    "PSEUDO.IVF.MAX_NPROBE": ">= 1",
    "PSEUDO.IVF.RECALL_ROWS": ">= 0",
    "PSEUDO.NUM_INSTANCES": ">= 1",
    "PSEUDO.BATCH_SIZE": ">= 1",
    "PSEUDO.OPLM.THRESHOLD": ("in [-1, 1]", "a cosine similarity"),
    "DATASETS.SYNTHETIC.NUM_TRAIN_IDS": ">= 1",
    "DATASETS.SYNTHETIC.NUM_VAL_IDS": ">= 0",
    "DATASETS.SYNTHETIC.NUM_TEST_IDS": ">= 1",
    "DATASETS.SYNTHETIC.IMAGES_PER_ID": ">= 1",
    "DATASETS.SYNTHETIC.CAPTIONS_PER_IMAGE": ">= 1",
    "DATASETS.SYNTHETIC.SEED": ">= 0",
    "SOLVER.LOG_PERIOD": ">= 1",
    "TEST.VIS_TOPK": ">= 0",
    "TEST.VIS_QUERIES": ">= 1",
    "TEST.IDS_PER_GALLERY": ">= 0",
    # FastReID's keys.
    "SOLVER.MAX_EPOCH": ">= 1",
    "SOLVER.BASE_LR": "> 0",
    "SOLVER.HEADS_LR_FACTOR": ">= 0",
    "SOLVER.BIAS_LR_FACTOR": ">= 0",
    "SOLVER.MOMENTUM": ">= 0",
    "SOLVER.WEIGHT_DECAY": ">= 0",
    "SOLVER.WEIGHT_DECAY_NORM": ">= 0",
    "SOLVER.WEIGHT_DECAY_BIAS": ">= 0",
    "SOLVER.GAMMA": "> 0",
    "SOLVER.DELAY_EPOCHS": ">= 0",
    "SOLVER.ETA_MIN_LR": ">= 0",
    "SOLVER.WARMUP_FACTOR": ("in (0, 1]", "the fraction of SOLVER.BASE_LR warm-up starts from"),
    "SOLVER.WARMUP_ITERS": ">= 0",
    "SOLVER.CHECKPOINT_PERIOD": ">= 1",
    "SOLVER.CHECKPOINT_KEEP": ">= 0",
    "SOLVER.IMS_PER_BATCH": (">= 2", "the contrastive loss needs a negative in the batch"),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "> 0",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "> 0",
    "TEST.EVAL_PERIOD": ">= 1",
    "TEST.IMS_PER_BATCH": ">= 1",
    "DATALOADER.NUM_WORKERS": ">= 0",
    "INPUT.FLIP.PROB": "in [0, 1]",
    "INPUT.PADDING.SIZE": ">= 0",
    "INPUT.CJ.PROB": "in [0, 1]",
    "INPUT.AUTOAUG.PROB": "in [0, 1]",
    "INPUT.AUGMIX.PROB": "in [0, 1]",
    "INPUT.REA.PROB": "in [0, 1]",
    "INPUT.RPT.PROB": "in [0, 1]",
}
# Image sizes [height, width]: two positive integers (MODEL.CLIP.IMAGE_SIZE may be empty).
IMAGE_SIZES = ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST", "MODEL.CLIP.IMAGE_SIZE",
               "DATASETS.SYNTHETIC.IMAGE_SIZE")
# Keys that take one of a few strings (SOLVER.SCHED: fastreid.solver.build_lr_scheduler's;
# SOLVER.WARMUP_METHOD: fastreid.solver.lr_scheduler's warm-up factors).
CHOICES = {
    "PSEUDO.OUTLIERS": ("drop", "singleton"),
    "PSEUDO.SEARCH": ("auto", "exact", "approximate"),
    "SOLVER.AMP.DTYPE": ("float16", "bfloat16"),
    "SOLVER.SCHED": ("MultiStepLR", "CosineAnnealingLR"),
    "SOLVER.WARMUP_METHOD": ("constant", "linear", "exp"),
    # The looks of the synthetic world (data/synthetic.py reads them from here).
    "DATASETS.SYNTHETIC.DOMAIN": ("street", "web"),
    "DATASETS.SYNTHETIC.PRESET": ("", "cuhk", "icfg", "rstp"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": tuple(t.value for t in GradientClipType),
}

_RANGE = re.compile(r"(>=|>|<=|<) (\S+)$|in ([\[(])(\S+), (\S+)([\])])$")
_COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


def _in_range(value, rule):
    m = _RANGE.match(rule)
    if m is None:
        raise ValueError(f"malformed range {rule!r} in cpcl_plugin.config.RANGES")
    value = float(value)
    if m.group(1):
        return _COMPARE[m.group(1)](value, float(m.group(2)))
    lo, hi = float(m.group(4)), float(m.group(5))
    return _COMPARE[">=" if m.group(3) == "[" else ">"](value, lo) and \
        _COMPARE["<=" if m.group(6) == "]" else "<"](value, hi)


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def problem_list(problems):
    """One problem as its sentence; several as a list under one heading."""
    if len(problems) == 1:
        return problems[0]
    return f"The config has {len(problems)} problems:\n" + "\n".join(
        f"  - {p}" for p in problems)


def check_config(cfg):
    """Raise one ConfigError listing every problem `config_problems` finds."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problem_list(problems))


def config_problems(cfg):
    """Every value out of its range and every combination that would otherwise fail deep inside
    training, one sentence each (empty when the config is fine)."""
    problems = []
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but this machine has no CUDA "
                        f"device; add MODEL.DEVICE cpu to the command line.")
    for key, rule in RANGES.items():
        rule, why = rule if isinstance(rule, tuple) else (rule, "")
        value = _get(cfg, key)
        if not _in_range(value, rule):
            problems.append(f"{key} is {value!r}; it must be {rule}{f' ({why})' if why else ''}.")
    for key in IMAGE_SIZES:
        size = _get(cfg, key)
        if not (len(size) == 2 and all(type(v) is int and v > 0 for v in size)) and \
                not (key == "MODEL.CLIP.IMAGE_SIZE" and len(size) == 0):
            problems.append(f"{key} is {list(size)}; it must be [height, width], two positive "
                            f"integers{' (or empty)' if key == 'MODEL.CLIP.IMAGE_SIZE' else ''}.")
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            problems.append(f"{key} is {_get(cfg, key)!r}; it must be one of "
                            f"{', '.join(allowed)}.")
    optimizer = getattr(torch.optim, str(cfg.SOLVER.OPT), None)
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        problems.append(f"SOLVER.OPT {cfg.SOLVER.OPT!r} is not an optimiser of torch.optim; "
                        f"e.g. Adam, AdamW, SGD.")
    for key, value, registry in (
            ("MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, META_ARCH_REGISTRY),
            ("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, BACKBONE_REGISTRY)):
        if value not in registry_names(registry):
            problems.append(f"{key} {value!r} is not registered; known: "
                            f"{', '.join(registry_names(registry))}.")
    depths = backbone_depths(cfg.MODEL.BACKBONE.NAME) \
        if cfg.MODEL.BACKBONE.NAME in registry_names(BACKBONE_REGISTRY) else None
    if depths is not None and cfg.MODEL.BACKBONE.DEPTH not in depths:
        problems.append(f"MODEL.BACKBONE.DEPTH {cfg.MODEL.BACKBONE.DEPTH!r} is not a depth of "
                        f"{cfg.MODEL.BACKBONE.NAME}; it accepts {', '.join(depths)}.")
    synthetic = cfg.DATASETS.SYNTHETIC
    if synthetic.PRESET:
        # Keys of the plain world only: a preset draws its own views and captions.
        defaults = add_cpcl_config(get_cfg()).DATASETS.SYNTHETIC
        for key in ("IMAGES_PER_ID", "CAPTIONS_PER_IMAGE", "ATTRIBUTES_PER_CAPTION"):
            if list(np.ravel(synthetic[key])) != list(np.ravel(defaults[key])):
                problems.append(f"DATASETS.SYNTHETIC.{key} is set, but the {synthetic.PRESET} "
                                f"preset draws its own views and captions, as its dataset does "
                                f"(docs/design.md, section 3); remove the key, or set "
                                f"DATASETS.SYNTHETIC.PRESET \"\" for the plain world.")
    if list(cfg.INPUT.SIZE_TRAIN) != list(cfg.INPUT.SIZE_TEST):
        problems.append(f"INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)} and INPUT.SIZE_TEST "
                        f"{list(cfg.INPUT.SIZE_TEST)} differ; the encoders need one image size.")
    if cfg.MODEL.CLIP.IMAGE_SIZE and list(cfg.MODEL.CLIP.IMAGE_SIZE) != list(cfg.INPUT.SIZE_TRAIN):
        problems.append(f"MODEL.CLIP.IMAGE_SIZE {list(cfg.MODEL.CLIP.IMAGE_SIZE)} differs from "
                        f"INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)}; leave it empty or make "
                        f"them equal.")
    if cfg.TEST.PRECISE_BN.ENABLED or cfg.SOLVER.FREEZE_ITERS > 0:
        problems.append("TEST.PRECISE_BN.ENABLED and SOLVER.FREEZE_ITERS are not supported by "
                        "CPCLTrainer; set them to False and 0.")
    if cfg.TEST.FLIP.ENABLED:
        problems.append("TEST.FLIP.ENABLED is not supported for text-to-image retrieval "
                        "(captions cannot be flipped); set it to False.")
    if (cfg.PSEUDO.PK_BATCHES and cfg.PSEUDO.NUM_INSTANCES >= 1
            and cfg.SOLVER.IMS_PER_BATCH % cfg.PSEUDO.NUM_INSTANCES):
        problems.append(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
                        f"PSEUDO.NUM_INSTANCES {cfg.PSEUDO.NUM_INSTANCES} (P x K batches).")
    if cfg.PSEUDO.K2 > cfg.PSEUDO.K1 >= 1:
        problems.append(f"PSEUDO.K2 {cfg.PSEUDO.K2} exceeds PSEUDO.K1 {cfg.PSEUDO.K1}; query "
                        f"expansion averages over the K2 nearest of the K1 neighbours.")
    return problems


def check_batch_split(cfg, world_size):
    """SOLVER.IMS_PER_BATCH is split evenly over the processes, at least two pairs each (the
    contrastive loss of a process needs a negative)."""
    if cfg.SOLVER.IMS_PER_BATCH % world_size or cfg.SOLVER.IMS_PER_BATCH // world_size < 2:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
                          f"the {world_size} processes with at least 2 pairs per process.")
    return cfg.SOLVER.IMS_PER_BATCH // world_size

