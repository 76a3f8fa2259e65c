"""Every config key the plugin adds to FastReID's, declared in one place with a comment each, as
detectron2's `add_pointrend_config` does: declarations only (the allowed values: checks.py)."""
from fastreid.config import CfgNode as CN

from ..clustering.jaccard import EXACT_SEARCH_MAX

__all__ = ["add_cpcl_config"]


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
    # Cells each cell's rows are scanned against at first (its nearest ones, itself first): more
    # finds more of the exact neighbours, proportionally slower. Widened by MIN_RECALL below.
    _C.PSEUDO.IVF.NPROBE = 8
    # Training rows per cell for the k-means (a random sample of that many per cell).
    _C.PSEUDO.IVF.TRAIN_PER_LIST = 64
    # Recall the approximate search must reach: the share of each row's K1 - 1 nearest other rows
    # that its list holds, measured against exact search on RECALL_ROWS random rows each pass
    # (logged, and in TensorBoard as pseudo/*_knn_recall). Below it NPROBE doubles until it is
    # reached, or doubling would cost more than exact search (which then runs), or MAX_NPROBE
    # (then one warning). 0: measure and log only.
    _C.PSEUDO.IVF.MIN_RECALL = 0.95
    # Most cells per cell the widening scans (each doubling about doubles the search's time).
    _C.PSEUDO.IVF.MAX_NPROBE = 64
    # Rows the recall is measured on (one matrix product of this many rows against all: seconds at
    # a million rows); 0: not measured, nothing adapts.
    _C.PSEUDO.IVF.RECALL_ROWS = 1000
    # Batches of P pseudo identities x K pairs (CPCL's sampling); False keeps shuffled batches, as
    # IRRA's default sampler does, while the labels still reach the memory and the losses.
    _C.PSEUDO.PK_BATCHES = True
    # Samples per pseudo identity in a P x K batch (P = IMS_PER_BATCH / K; unused without them).
    _C.PSEUDO.NUM_INSTANCES = 4
    # What P x K batches do with pairs whose image is a clustering outlier: "drop" or "singleton"
    # (shuffled batches keep every pair).
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
    # A world shaped like a real dataset (cpcl_plugin/data/world.py): "cuhk", "icfg" or "rstp"
    # fix the views per person, captions per image (by different annotators, describing the whole
    # visible person), caption length and cameras as in CUHK-PEDES, ICFG-PEDES and RSTPReid, with
    # lookalikes and fine details captions rarely name; IMAGES_PER_ID, CAPTIONS_PER_IMAGE and
    # ATTRIBUTES_PER_CAPTION then do not apply. "" is the plain street (or web) world above.
    _C.DATASETS.SYNTHETIC.PRESET = ""

    # ---- training loop ---------------------------------------------------------------------------
    # Iterations between two lines of training metrics (console, metrics.json, TensorBoard).
    _C.SOLVER.LOG_PERIOD = 20
    # Periodic checkpoints (model_NNNN.pth, every SOLVER.CHECKPOINT_PERIOD epochs) kept in
    # OUTPUT_DIR: the newest N, older ones removed as new ones are written; 0 keeps all (FastReID's
    # way). model_best.pth and model_final.pth are never removed.
    _C.SOLVER.CHECKPOINT_KEEP = 0

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
    # 0: every caption searches the whole test gallery (the real datasets' protocol). N > 0: the
    # test people, in the order the split lists them, form round(P / N) galleries of about N
    # people each; every caption searches its own gallery and the metrics pool all captions, as
    # the small re-id benchmarks (VIPeR, CUHK01) average trials of a small gallery. For a gallery
    # size the model can rank, measured over many queries (benchmarks/configs/ablation.yml).
    # Applies to every DATASETS.TESTS entry; a synthetic preset world pairs the lookalikes of its
    # val and test splits within these galleries.
    _C.TEST.IDS_PER_GALLERY = 0
    return cfg

