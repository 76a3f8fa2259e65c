"""Every config key the plugin adds to FastReID's, declared in one place with a comment each.

Typical use (what ``tools/train_net.py`` does)::

    from cpcl_plugin import load_config
    cfg = load_config("configs/CPCL/cuhk.yml", ["SOLVER.MAX_EPOCH", "10"])
"""
import ast
import functools
import inspect
import os
import re
import textwrap

import yaml
from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg

from .clustering.jaccard import EXACT_SEARCH_MAX

__all__ = ["add_cpcl_config", "load_config", "check_config", "config_problems", "check_schedule",
           "check_batch_split", "backbone_depths", "error_summary", "ConfigError", "RANGES"]


class ConfigError(ValueError):
    """A config file, key or value the user has to fix; the message says which and how."""

    one_sentence = True  # printed as its message alone (see compat: one_sentence_errors)


def error_summary(err, limit=160):
    """"TypeName: first line of the message" of an exception from a library, to quote inside a
    ConfigError's sentence."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:limit]}" if lines else type(err).__name__


def add_cpcl_config(cfg):
    """Declare the plugin's keys on a FastReID config (before ``merge_from_file``)."""
    _C = cfg

    # Seed of python, numpy and torch RNGs (plus rank); negative: a fresh random seed per run.
    _C.SEED = 0

    # Training from MODEL.WEIGHTS whose tensors do not all fit the model this config builds:
    # False stops with the first difference; True loads the tensors that fit, keeps the others at
    # their initialisation and logs each one it skipped (missing, unexpected, other shape).
    # Training only: --eval-only and the tools always need every tensor.
    _C.MODEL.WEIGHTS_PARTIAL = False

    # ---- encoders -------------------------------------------------------------------------------
    # open_clip image/text encoders. MODEL.BACKBONE.NAME picks the image encoder: the CLIP image
    # tower ("build_openclip_backbone") or any FastReID backbone ("build_resnet_backbone", ...).
    _C.MODEL.CLIP = CN()
    # open_clip architecture name: "ViT-B-16", "RN50", "ViT-L-14", or the plugin's "CPCL-Tiny".
    _C.MODEL.CLIP.ARCH = "ViT-B-16"
    # open_clip pretrained tag ("openai", "laion2b_s34b_b88k", ...), a local weight file, or a
    # pretraining config (.yml, e.g. configs/CPCL/synthetic-web.yml): the weights its training
    # run produces, made on first use and cached in <dataset root>/pretrained/ under a hash of
    # that config (cpcl_plugin/modeling/pretrained.py); empty: random initialisation.
    _C.MODEL.CLIP.PRETRAINED = ""
    # Image size (H, W) of the CLIP image tower; empty: INPUT.SIZE_TRAIN. Position embeddings of
    # weights saved at another size are interpolated on load.
    _C.MODEL.CLIP.IMAGE_SIZE = []
    # Text context length in tokens; longer captions are truncated keeping the end-of-text token.
    _C.MODEL.CLIP.CONTEXT_LENGTH = 77
    # Recompute the CLIP towers' activations in the backward pass instead of storing them: less
    # memory (larger batches on a small GPU) for about a third more compute per step.
    _C.MODEL.CLIP.GRAD_CHECKPOINTING = False

    # Text encoder, from the plugin's TEXT_ENCODER_REGISTRY.
    _C.MODEL.TEXT_ENCODER = CN()
    # Registered builder name; "build_openclip_text_encoder" uses MODEL.CLIP.
    _C.MODEL.TEXT_ENCODER.NAME = "build_openclip_text_encoder"

    # Head that turns a FastReID backbone's feature map into the joint embedding (unused by CLIP).
    _C.MODEL.IMAGE_HEAD = CN()
    # A pooling layer of fastreid.layers.pooling: GlobalAvgPool, GeneralizedMeanPoolingP, ...
    _C.MODEL.IMAGE_HEAD.POOL_LAYER = "GlobalAvgPool"

    # CPCL objective.
    _C.MODEL.CPCL = CN()
    # Weight of the instance-level image-text contrastive loss (ITC, symmetric InfoNCE).
    _C.MODEL.CPCL.ITC_WEIGHT = 1.0
    # ITC temperature (initial value when learnable).
    _C.MODEL.CPCL.TEMPERATURE = 0.02
    # Learn the ITC temperature (as CLIP does) or keep it fixed.
    _C.MODEL.CPCL.LEARN_TEMPERATURE = False

    # Weight of similarity distribution matching over pseudo labels (IRRA's SDM); 0 = off.
    _C.MODEL.CPCL.SDM_WEIGHT = 0.0
    # Weight of the intra-modal prototype losses (image-to-image and text-to-text, PMM).
    _C.MODEL.CPCL.INTRA_WEIGHT = 1.0
    # Include the text-to-text term of the intra-modal losses. Captions that each name a few of a
    # person's attributes do not cluster by person; through such imprecise caption labels the
    # term hurts, and on the synthetic benchmark dropping it gains ~0.9 mAP (docs/benchmarks.md).
    _C.MODEL.CPCL.TEXT_INTRA = True
    # Weight of the many-to-many cross-modal prototype losses (HCM).
    _C.MODEL.CPCL.CROSS_WEIGHT = 1.0
    # Temperature of the prototype losses.
    _C.MODEL.CPCL.PROTO_TEMPERATURE = 0.05
    # Memory momentum m in P[y] <- normalise(m P[y] + (1 - m) f) after each optimiser step.
    _C.MODEL.CPCL.MEMORY_MOMENTUM = 0.2

    # ---- pseudo labels (per epoch, per modality) ----------------------------------------------------
    _C.PSEUDO = CN()
    # Cluster features into pseudo identities each epoch; False trains the instance loss only.
    _C.PSEUDO.ENABLED = True
    # First epoch (0-based) with pseudo labels; earlier epochs train the instance loss only.
    _C.PSEUDO.START_EPOCH = 0
    # DBSCAN radius on the k-reciprocal Jaccard distance, and its minimum cluster core size.
    _C.PSEUDO.EPS = 0.6
    _C.PSEUDO.MIN_SAMPLES = 4
    # k-reciprocal neighbourhood sizes of the Jaccard distance (Zhong et al. 2017).
    _C.PSEUDO.K1 = 30
    _C.PSEUDO.K2 = 6
    # How the K1 nearest neighbours are found: "exact", "approximate" (faiss IVF) or "auto" (exact
    # up to PSEUDO.EXACT_MAX rows per modality, approximate above). The pass logs which ran.
    _C.PSEUDO.SEARCH = "auto"
    # Largest modality (rows) that "auto" searches exactly: exact kNN costs N^2 d, IVF about
    # N^1.5 d; CUHK-PEDES (68k captions) stays exact, LUPerson-T (1.3M) does not.
    _C.PSEUDO.EXACT_MAX = EXACT_SEARCH_MAX
    _C.PSEUDO.IVF = CN()
    # Cells of the approximate search's k-means; 0: about 2 sqrt(N) (2,000 at a million rows).
    _C.PSEUDO.IVF.NLIST = 0
    # Cells each cell's rows are scanned against (its nearest ones, itself first): more finds more
    # of the exact neighbours, proportionally slower.
    _C.PSEUDO.IVF.NPROBE = 8
    # Training rows per cell for the k-means (a random sample of that many per cell).
    _C.PSEUDO.IVF.TRAIN_PER_LIST = 64
    # Samples per pseudo identity in a P x K batch (P = IMS_PER_BATCH / K).
    _C.PSEUDO.NUM_INSTANCES = 4
    # What batches do with pairs whose image is a clustering outlier: "drop" or "singleton".
    _C.PSEUDO.OUTLIERS = "singleton"
    # Images and captions per forward pass when features are extracted for clustering.
    _C.PSEUDO.BATCH_SIZE = 256
    _C.PSEUDO.OPLM = CN()
    # Outlier Pseudo Label Mining: recover outliers through their paired sample's cluster.
    _C.PSEUDO.OPLM.ENABLED = True
    # Minimum cosine between an outlier and the prototype it is assigned to.
    _C.PSEUDO.OPLM.THRESHOLD = 0.5

    # ---- data -----------------------------------------------------------------------------------
    # Dataset root; empty: $FASTREID_DATASETS, else "datasets" (FastReID's convention).
    _C.DATASETS.ROOT = ""
    # DATASETS.TESTS entries may name a split: "CUHKPEDES:val" or "CUHKPEDES:test" (a bare name
    # is its test split). As in FastReID, the first entry's metric chooses model_best, so list the
    # val split first to select on val and report test.
    # Images that do not exist or cannot be decoded: False stops with the file's path; True skips
    # them and counts them (entries with a missing image are dropped when the dataset loads, an
    # undecodable image is left out of the batch, the gallery or the clustering where it is read).
    _C.DATASETS.SKIP_BAD_IMAGES = False
    # Your own data (DATASETS.NAMES = ("TextImageJSON",)): one JSON list of objects, one per image.
    _C.DATASETS.TEXT_IMAGE_JSON = CN()
    # Path of the JSON file, relative to the dataset root unless absolute.
    _C.DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE = ""
    # Folder the image paths are relative to, itself relative to the JSON file's folder.
    _C.DATASETS.TEXT_IMAGE_JSON.IMAGE_DIR = ""
    # Key names in each object: image path, identity (int or string; evaluation only), split
    # ("train", "val" or "test") and captions (a list of strings, or one string).
    _C.DATASETS.TEXT_IMAGE_JSON.IMAGE_KEY = "file_path"
    _C.DATASETS.TEXT_IMAGE_JSON.ID_KEY = "id"
    _C.DATASETS.TEXT_IMAGE_JSON.SPLIT_KEY = "split"
    _C.DATASETS.TEXT_IMAGE_JSON.CAPTIONS_KEY = "captions"
    # The embedded synthetic dataset (DATASETS.NAMES = ("SyntheticPedes",)), generated on first use
    # into DATASETS.ROOT/SyntheticPedes/SyntheticPedes-<hash of these settings>.
    _C.DATASETS.SYNTHETIC = CN()
    # Identities per split (disjoint between splits).
    _C.DATASETS.SYNTHETIC.NUM_TRAIN_IDS = 1000
    _C.DATASETS.SYNTHETIC.NUM_VAL_IDS = 0
    _C.DATASETS.SYNTHETIC.NUM_TEST_IDS = 100
    # Images per identity (pose, scale, position, background, light, occlusion vary).
    _C.DATASETS.SYNTHETIC.IMAGES_PER_ID = 2
    # Captions per image, each describing a random subset of the identity's attributes.
    _C.DATASETS.SYNTHETIC.CAPTIONS_PER_IMAGE = 1
    # Range (min, max) of attributes one caption mentions: fewer means harder.
    _C.DATASETS.SYNTHETIC.ATTRIBUTES_PER_CAPTION = [3, 5]
    # Rendered image size (H, W).
    _C.DATASETS.SYNTHETIC.IMAGE_SIZE = [128, 64]
    # Generator seed; the same settings and seed write the same files.
    _C.DATASETS.SYNTHETIC.SEED = 0
    # Look and wording: "street" (the target: muted scenes, dim and uneven light, occluders,
    # sentence captions) or "web" (the pretraining corpus: clean saturated backdrops, even light,
    # alt-text captions with other nouns); see cpcl_plugin/data/synthetic.py.
    _C.DATASETS.SYNTHETIC.DOMAIN = "street"

    # ---- training loop ---------------------------------------------------------------------------
    # Iterations between two lines of training metrics (console, metrics.json, TensorBoard).
    _C.SOLVER.LOG_PERIOD = 20

    # ---- evaluation ------------------------------------------------------------------------------
    # Evaluate once before training and print that table beside the final one.
    _C.TEST.EVAL_BEFORE_TRAIN = False
    # Mixed precision of the training forward pass (SOLVER.AMP.ENABLED, FastReID's key):
    # "float16" (with a gradient scaler; GPUs) or "bfloat16" (no scaler; GPUs with bf16 and CPUs).
    # Losses and the prototype memory stay in float32.
    _C.SOLVER.AMP.DTYPE = "float16"
    # > 0: each evaluation also draws the top-k gallery images of TEST.VIS_QUERIES evenly spaced
    # queries (green: same identity, red: another) to OUTPUT_DIR/ranked_lists/<DATASETS.TESTS
    # entry>/query_<index>.png, replacing those of the previous evaluation (after a run with
    # several DATASETS.TESTS entries, the last are model_best's); works with --eval-only too.
    _C.TEST.VIS_TOPK = 0
    _C.TEST.VIS_QUERIES = 8
    return cfg


# ---- allowed values ---------------------------------------------------------------------------
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
}
# MODEL.BACKBONE.DEPTH of the FastReID builders that do not look it up in a dict literal (the
# others' values are read from their source by `backbone_depths`).
BACKBONE_DEPTHS = {
    "build_shufflenetv2_backbone": ("0.5x", "1.0x", "1.5x", "2.0x"),  # ShuffleNetV2.__init__
    "build_mobilenetv3_backbone": ("Large", "Small"),  # _mobilenet_v3_conf
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


@functools.lru_cache(maxsize=None)
def backbone_depths(name):
    """The MODEL.BACKBONE.DEPTH values the registered backbone builder `name` accepts, or None
    when it does not read that key (build_openclip_backbone) or its values cannot be told.

    FastReID's builders look the depth up in dict literals inside the function
    (``{"18x": [2, 2, 2, 2], ...}[depth]``), where no other code can import them; they accept the
    keys present in every such dict (build_resnext_backbone's second dict lacks "152x"), read here
    from the builder's source. BACKBONE_DEPTHS lists the builders that use no dict literal.
    """
    if name in BACKBONE_DEPTHS:
        return BACKBONE_DEPTHS[name]
    from fastreid.modeling.backbones import BACKBONE_REGISTRY
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(BACKBONE_REGISTRY.get(name))))
    except (KeyError, OSError, TypeError, SyntaxError):
        return None
    assigned = {target.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    depth = {var for var, value in assigned.items()
             if ast.unparse(value) == "cfg.MODEL.BACKBONE.DEPTH"}
    # `{...}[depth]`, or `table[depth]` with `table = {...}` (build_repvgg_backbone's func_dict).
    looked_up = [assigned.get(node.value.id) if isinstance(node.value, ast.Name) else node.value
                 for node in ast.walk(tree) if isinstance(node, ast.Subscript)
                 and isinstance(node.slice, ast.Name) and node.slice.id in depth]
    tables = [[k.value for k in table.keys if isinstance(k, ast.Constant)]
              for table in looked_up if isinstance(table, ast.Dict)]
    if not tables:
        return None
    return tuple(k for k in tables[0] if all(k in t for t in tables[1:]))


# ---- loading ----------------------------------------------------------------------------------
_MISMATCH = object()
_KINDS = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
          list: "a list", tuple: "a list"}


def _as_declared(value, default):
    """`value` (decoded as yacs decodes it) for a key declared with `default`: the value itself
    where yacs accepts it (the same type, a list for a tuple or back), a float for an integer
    where a float is declared (PSEUDO.EPS 1, as users type it), else _MISMATCH. Unlike yacs, an
    empty value (None, a blank in YAML) is refused for a key that has a default: every part of
    the plugin and of FastReID reads it as that type."""
    if type(default) is float and type(value) is int:
        return float(value)
    if type(value) is type(default) or default is None or \
            {type(value), type(default)} <= {list, tuple}:
        return value
    return _MISMATCH


def _conform(node, given, prefix, where, problems):
    """Check the mapping `given` (from a YAML file or the command line) against the keys declared
    in `node`, in place: integers for float keys become floats; unknown keys and values of another
    type are taken out and described in `problems`, so that the rest can be merged and checked."""
    import difflib
    for key in list(given):
        full = prefix + key
        if key not in node:
            if not node.is_new_allowed():
                near = difflib.get_close_matches(key, [k for k in node if isinstance(k, str)], 1)
                problems.append(
                    f"Unknown config key {where}: {full}"
                    + (f" (did you mean {prefix}{near[0]}?)" if near else "")
                    + ". Check its spelling against cpcl_plugin/config.py and FastReID's "
                      "fastreid/config/defaults.py.")
                del given[key]
            continue
        if isinstance(node[key], CN) and isinstance(given[key], dict):
            _conform(node[key], given[key], full + ".", where, problems)
            continue
        decoded = CN._decode_cfg_value(given[key])  # yacs's own reading of the text
        value = _as_declared(decoded, node[key])
        if value is _MISMATCH:
            current = node[key]
            kind = "a group of keys" if isinstance(current, CN) else \
                _KINDS.get(type(current), type(current).__name__)
            example = "" if isinstance(current, CN) or current in ("", [], ()) else \
                f", e.g. {current!r}"
            shown = "empty" if given[key] is None else repr(given[key])
            problems.append(f"{full} {where} is {shown}, but it takes {kind}{example}.")
            del given[key]
        elif value is not decoded:
            given[key] = value


def _nested(opts):
    """Command-line KEY VALUE pairs as the nested mapping a YAML file would give."""
    tree = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        *parents, leaf = str(key).split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # A.B given a value and A.B.C too: yacs decides
                raise ConfigError(f"The command line sets both {'.'.join(parents)} and {key}; "
                                  f"set the keys of a group one by one.")
        node[leaf] = value
    return tree


def _read_yaml(config_file):
    if not os.path.isfile(config_file):
        raise ConfigError(f"Config file not found: {config_file}. Pass an existing YAML file, "
                          f"e.g. --config-file configs/CPCL/synthetic.yml.")
    try:
        loaded = CN.load_yaml_with_base(config_file)
    except FileNotFoundError as err:
        raise ConfigError(f"{config_file}: its _BASE_ file does not exist ({err.filename}); "
                          f"_BASE_ is relative to the including file.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"{config_file} is not valid YAML ({getattr(err, 'problem', err)}"
                          f"{f' at line {mark.line + 1}' if mark else ''}).") from None
    except TypeError:  # load_yaml_with_base looks for _BASE_ in what an empty file gives
        loaded = None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_file} holds no config keys; it must be a YAML mapping such as "
                          f"configs/CPCL/synthetic.yml.")
    return loaded


def _problem_list(problems):
    if len(problems) == 1:
        return problems[0]
    return f"The config has {len(problems)} problems:\n" + "\n".join(
        f"  - {p}" for p in problems)


def load_config(config_file="", opts=None, check=True, more_problems=None):
    """Build the full config: FastReID's defaults, the plugin's keys, the file, then `opts`.

    Raises `ConfigError` naming the file, the key and the value when something is wrong, every
    problem at once; `check=False` leaves `check_config` (device, values, combinations) to the
    caller. An integer is accepted where a float is declared (yacs alone refuses PSEUDO.EPS 1).
    `more_problems(cfg)`, when given, returns a caller's own problems (one sentence each) to
    report in the same message.
    """
    cfg = get_cfg()
    add_cpcl_config(cfg)
    if opts and len(opts) % 2:
        raise ConfigError(f"Command-line overrides must be KEY VALUE pairs; got an odd number: "
                          f"{' '.join(map(str, opts))}")
    problems = []
    sources = ([(_read_yaml(config_file), f"in {config_file}")] if config_file else []) + \
        ([(_nested(list(opts)), "on the command line")] if opts else [])
    for given, where in sources:
        _conform(cfg, given, "", where, problems)
        try:  # FastReID's merge_from_file, after the checks above
            cfg.merge_from_other_cfg(CN(given))
        except (KeyError, ValueError, TypeError, AssertionError) as err:
            raise ConfigError(f"Bad value {where}: {err}") from None
    if check:
        problems += config_problems(cfg)
        problems += more_problems(cfg) if more_problems else []
    if problems:
        raise ConfigError(_problem_list(problems))
    cfg.freeze()
    return cfg


def check_config(cfg):
    """Raise one ConfigError listing every problem `config_problems` finds."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(_problem_list(problems))


def config_problems(cfg):
    """Every value out of its range and every combination that would otherwise fail deep inside
    training, one sentence each (empty when the config is fine)."""
    import torch
    from fastreid.modeling.backbones import BACKBONE_REGISTRY
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
    from fastreid.solver.build import GradientClipType

    from .compat import registry_names
    from .data.synthetic import DOMAINS
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
    choices = dict(CHOICES, **{"DATASETS.SYNTHETIC.DOMAIN": DOMAINS,
                               "SOLVER.CLIP_GRADIENTS.CLIP_TYPE":
                                   tuple(t.value for t in GradientClipType)})
    for key, allowed in choices.items():
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
    if cfg.PSEUDO.NUM_INSTANCES >= 1 and cfg.SOLVER.IMS_PER_BATCH % cfg.PSEUDO.NUM_INSTANCES:
        problems.append(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
                        f"PSEUDO.NUM_INSTANCES {cfg.PSEUDO.NUM_INSTANCES} (P x K batches).")
    if cfg.PSEUDO.K2 > cfg.PSEUDO.K1 >= 1:
        problems.append(f"PSEUDO.K2 {cfg.PSEUDO.K2} exceeds PSEUDO.K1 {cfg.PSEUDO.K1}; query "
                        f"expansion averages over the K2 nearest of the K1 neighbours.")
    return problems


def check_schedule(cfg, iters_per_epoch):
    """The cosine schedule (stepped per iteration, engine/schedule.py) starts after the warm-up and
    SOLVER.DELAY_EPOCHS; at least one iteration must be left for it."""
    from .engine.schedule import cosine_start
    max_iter = cfg.SOLVER.MAX_EPOCH * iters_per_epoch
    if cfg.SOLVER.SCHED == "CosineAnnealingLR" and cosine_start(cfg, iters_per_epoch) >= max_iter:
        raise ConfigError(
            f"SOLVER.WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS} and SOLVER.DELAY_EPOCHS "
            f"{cfg.SOLVER.DELAY_EPOCHS} leave no iteration for the cosine schedule within "
            f"SOLVER.MAX_EPOCH {cfg.SOLVER.MAX_EPOCH} ({max_iter} iterations of "
            f"{iters_per_epoch} per epoch); lower WARMUP_ITERS or DELAY_EPOCHS, or raise "
            f"MAX_EPOCH.")


def check_batch_split(cfg, world_size):
    """SOLVER.IMS_PER_BATCH is split evenly over the processes, at least two pairs each (the
    contrastive loss of a process needs a negative)."""
    if cfg.SOLVER.IMS_PER_BATCH % world_size or cfg.SOLVER.IMS_PER_BATCH // world_size < 2:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
                          f"the {world_size} processes with at least 2 pairs per process.")
    return cfg.SOLVER.IMS_PER_BATCH // world_size
