"""Every config key the plugin adds to FastReID's, declared in one place with a comment each.

Typical use (what ``tools/train_net.py`` does)::

    from cpcl_plugin import load_config
    cfg = load_config("configs/CPCL/cuhk.yml", ["SOLVER.MAX_EPOCH", "10"])
"""
import math
import os

from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg

__all__ = ["add_cpcl_config", "load_config", "check_config", "check_schedule", "check_batch_split",
           "ConfigError"]


class ConfigError(ValueError):
    """A config file, key or value the user has to fix; the message says which and how."""

    one_sentence = True  # printed as its message alone (see compat: one_sentence_errors)


def add_cpcl_config(cfg):
    """Declare the plugin's keys on a FastReID config (before ``merge_from_file``)."""
    _C = cfg

    # Seed of python, numpy and torch RNGs (plus rank); negative: a fresh random seed per run.
    _C.SEED = 0

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
    # into DATASETS.ROOT/SyntheticPedes-<hash of these settings>.
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


def _config_error_from_key_error(err, source):
    key = str(err).strip("'\"").replace("Non-existent config key: ", "")
    return ConfigError(
        f"Unknown config key in {source}: {key}. Check its spelling against "
        f"cpcl_plugin/config.py and FastReID's fastreid/config/defaults.py.")


def load_config(config_file="", opts=None, check=True):
    """Build the full config: FastReID's defaults, the plugin's keys, the file, then `opts`.

    Raises `ConfigError` with one sentence naming the file or key when something is wrong;
    `check=False` leaves `check_config` (device, values, combinations) to the caller.
    """
    cfg = get_cfg()
    add_cpcl_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"Config file not found: {config_file}. Pass an existing YAML file, "
                              f"e.g. --config-file configs/CPCL/synthetic.yml.")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as err:
            raise _config_error_from_key_error(err, config_file) from None
        except FileNotFoundError as err:
            raise ConfigError(f"{config_file}: its _BASE_ file does not exist ({err.filename}); "
                              f"_BASE_ is relative to the including file.") from None
        except (ValueError, TypeError, AssertionError) as err:
            raise ConfigError(f"Bad value in {config_file}: {err}") from None
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"Command-line overrides must be KEY VALUE pairs; got an odd number: "
                              f"{' '.join(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except KeyError as err:
            raise _config_error_from_key_error(err, "the command line") from None
        except (ValueError, TypeError, AssertionError) as err:
            raise ConfigError(f"Bad value on the command line: {err}") from None
    if check:
        check_config(cfg)
    cfg.freeze()
    return cfg


def check_config(cfg):
    """Reject combinations that would otherwise fail deep inside training."""
    import torch
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but this machine has no CUDA "
                          f"device; add MODEL.DEVICE cpu to the command line.")
    if cfg.SOLVER.IMS_PER_BATCH < 2:
        raise ConfigError("SOLVER.IMS_PER_BATCH must be at least 2: the contrastive loss needs "
                          "negatives in the batch.")
    if list(cfg.INPUT.SIZE_TRAIN) != list(cfg.INPUT.SIZE_TEST):
        raise ConfigError(f"INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)} and INPUT.SIZE_TEST "
                          f"{list(cfg.INPUT.SIZE_TEST)} differ; the encoders need one image size.")
    if cfg.MODEL.CLIP.IMAGE_SIZE and list(cfg.MODEL.CLIP.IMAGE_SIZE) != list(cfg.INPUT.SIZE_TRAIN):
        raise ConfigError(f"MODEL.CLIP.IMAGE_SIZE {list(cfg.MODEL.CLIP.IMAGE_SIZE)} differs from "
                          f"INPUT.SIZE_TRAIN {list(cfg.INPUT.SIZE_TRAIN)}; leave it empty or make "
                          f"them equal.")
    from fastreid.modeling.backbones import BACKBONE_REGISTRY
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

    from .compat import registry_names
    for key, value, registry in (
            ("MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, META_ARCH_REGISTRY),
            ("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, BACKBONE_REGISTRY)):
        if value not in registry_names(registry):
            raise ConfigError(f"{key} {value!r} is not registered; known: "
                              f"{', '.join(registry_names(registry))}.")
    if cfg.TEST.PRECISE_BN.ENABLED or cfg.SOLVER.FREEZE_ITERS > 0:
        raise ConfigError("TEST.PRECISE_BN.ENABLED and SOLVER.FREEZE_ITERS are not supported by "
                          "CPCLTrainer; set them to False and 0.")
    if cfg.SOLVER.AMP.DTYPE not in ("float16", "bfloat16"):
        raise ConfigError(f"SOLVER.AMP.DTYPE must be 'float16' or 'bfloat16', got "
                          f"{cfg.SOLVER.AMP.DTYPE!r}.")
    if cfg.TEST.VIS_TOPK < 0 or cfg.TEST.VIS_QUERIES < 1:
        raise ConfigError(f"TEST.VIS_TOPK must be >= 0 and TEST.VIS_QUERIES >= 1, got "
                          f"{cfg.TEST.VIS_TOPK} and {cfg.TEST.VIS_QUERIES}.")
    if cfg.TEST.EVAL_PERIOD <= 0:
        raise ConfigError(f"TEST.EVAL_PERIOD must be a positive number of epochs, got "
                          f"{cfg.TEST.EVAL_PERIOD}.")
    if cfg.TEST.FLIP.ENABLED:
        raise ConfigError("TEST.FLIP.ENABLED is not supported for text-to-image retrieval "
                          "(captions cannot be flipped); set it to False.")
    if cfg.PSEUDO.OUTLIERS not in ("drop", "singleton"):
        raise ConfigError(f"PSEUDO.OUTLIERS must be 'drop' or 'singleton', got {cfg.PSEUDO.OUTLIERS!r}.")
    if cfg.PSEUDO.NUM_INSTANCES < 1 or cfg.SOLVER.IMS_PER_BATCH % cfg.PSEUDO.NUM_INSTANCES:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
                          f"PSEUDO.NUM_INSTANCES {cfg.PSEUDO.NUM_INSTANCES} (P x K batches).")
    if not 0 <= cfg.MODEL.CPCL.MEMORY_MOMENTUM < 1:
        raise ConfigError(f"MODEL.CPCL.MEMORY_MOMENTUM must be in [0, 1), got "
                          f"{cfg.MODEL.CPCL.MEMORY_MOMENTUM}.")
    if cfg.MODEL.CPCL.TEMPERATURE <= 0 or cfg.MODEL.CPCL.PROTO_TEMPERATURE <= 0:
        raise ConfigError("MODEL.CPCL.TEMPERATURE and PROTO_TEMPERATURE must be positive.")


def check_schedule(cfg, iters_per_epoch):
    """FastReID's cosine schedule spans the epochs after warm-up; there must be at least one."""
    warmup_epochs = math.ceil(cfg.SOLVER.WARMUP_ITERS / iters_per_epoch)
    if cfg.SOLVER.SCHED == "CosineAnnealingLR" and \
            cfg.SOLVER.MAX_EPOCH - max(warmup_epochs, cfg.SOLVER.DELAY_EPOCHS) <= 0:
        raise ConfigError(
            f"SOLVER.WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS} ({warmup_epochs} epochs of "
            f"{iters_per_epoch} iterations) leaves no epoch for the cosine schedule within "
            f"SOLVER.MAX_EPOCH {cfg.SOLVER.MAX_EPOCH}; lower WARMUP_ITERS or raise MAX_EPOCH.")


def check_batch_split(cfg, world_size):
    """SOLVER.IMS_PER_BATCH is split evenly over the processes, at least two pairs each (the
    contrastive loss of a process needs a negative)."""
    if cfg.SOLVER.IMS_PER_BATCH % world_size or cfg.SOLVER.IMS_PER_BATCH // world_size < 2:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of "
                          f"the {world_size} processes with at least 2 pairs per process.")
    return cfg.SOLVER.IMS_PER_BATCH // world_size
