"""Making the weights a pretraining config stands for (modeling/pretrained.py says where they are
cached): an ordinary training run of the recipe (cpcl_plugin.train's command line, --config-file
<recipe>) in a child process, exported as an open_clip state dict. Like the synthetic dataset,
they are made once, written atomically (a temporary folder, then a rename), and reused; open_clip
then loads the file as it loads a downloaded CLIP checkpoint. `CPCLTrainer.build_model` and the
command line's preflight call `ensure_pretrained_weights` before a model is built.

    path = ensure_pretrained_weights(cfg)   # made on first use; None for tags and plain files
"""
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys

import torch
from filelock import FileLock, Timeout

from ..data.datasets import dataset_root
from ..errors import ConfigError
from ..modeling.encoders import OpenCLIPImageBackbone, OpenCLIPTextEncoder
from ..modeling.meta_arch import CPCL
from ..modeling.pretrained import (is_recipe, pretrained_weights_path, recipe_config,
                                   without_pretrained_weights)
from ..utils.checkpoint import load_model_weights, write_atomically
from ..utils.progress import console_logging
from ..utils.workdirs import make_work_folder, remove_leftover_work_folders

__all__ = ["ensure_pretrained_weights", "export_open_clip_weights", "open_clip_state_dict"]

logger = logging.getLogger(__name__)

# The child's program: cpcl_plugin.train's command line, from this same copy of the package. Its
# folder replaces the current directory that `python -c` puts first on the path (another
# checkout's cpcl_plugin there would win); where the folder is on the path already (an installed
# package in site-packages), the current directory is only dropped. On Linux the child asks to be
# killed when its parent dies (a killed run must not leave its pretraining training on), and
# stops at once if the parent died before it could ask.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHILD_MAIN = ("import os, sys\n"
               "if sys.platform.startswith('linux'):\n"
               "    import ctypes, signal\n"
               "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
               "    if os.getppid() != {parent}:\n"
               "        sys.exit(1)\n"
               f"p = {_PACKAGE_PARENT!r}; sys.path[0:1] = [] if p in sys.path else [p]\n"
               "from cpcl_plugin.train import cli; sys.exit(cli())")
_WORK_PREFIX = ".pretraining-"


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


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksum(path):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(_sha256(path) + "\n")
    write_atomically(path + ".sha256", write)


def _cache_is_whole(path):
    """Whether the cached weights at `path` are as written: their SHA-256 matches the one beside
    them. A cache from before checksums were written is adopted when torch can load it."""
    if not os.path.isfile(path):
        return False
    if os.path.isfile(path + ".sha256"):
        with open(path + ".sha256") as f:
            return f.read().strip() == _sha256(path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  whatever the damage, the cache is remade
        return False
    try:
        _write_checksum(path)
    except OSError:  # a read-only cache folder: used as it is, checked by loading each time
        pass
    return True


def _say(message, warning=False):
    """Log through the project's logger, to the console as well when no log is set up yet (the
    command line's preflight runs before the run's logger exists)."""
    quiet = not logging.getLogger("cpcl_plugin").handlers
    with console_logging() if quiet else contextlib.nullcontext():
        (logger.warning if warning else logger.info)(message)


def ensure_pretrained_weights(cfg):
    """The local weight file that MODEL.CLIP.PRETRAINED stands for when it names a recipe, made
    on first use (a training run in a child process, about as long as the recipe's own run);
    None when it is a tag, a file or empty. The file is checked against the SHA-256 written
    beside it and made again when damaged. Several processes asking at once pretrain once: the
    first holds a lock beside the file while the others wait for it and say so."""
    recipe = cfg.MODEL.CLIP.PRETRAINED
    if not is_recipe(recipe):
        return None
    path = pretrained_weights_path(cfg)  # refuses a cycle of recipes
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Working folders of runs killed while pretraining (any recipe's), at every start.
    remove_leftover_work_folders(os.path.dirname(path), _WORK_PREFIX, _say)
    if _cache_is_whole(path):  # the common case: no lock (the cache folder may be read-only)
        return path
    lock = FileLock(path + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"MODEL.CLIP.PRETRAINED {recipe}: another run is pretraining {path}; waiting for it "
             f"(lock: {path}.lock).")
        lock.acquire()
    try:
        if _cache_is_whole(path):
            return path
        if os.path.isfile(path):
            _say(f"The cached pretrained weights {path} are damaged (their SHA-256 does not "
                 f"match {path}.sha256, or torch cannot read them): pretraining them again.",
                 warning=True)
            # Gone while they are made again: a run starting meanwhile must wait, not adopt
            # them (a file torch still reads would otherwise pass as an older, unchecked cache).
            os.remove(path)
        if os.path.isfile(path + ".sha256"):  # the old file's: never beside the new weights
            os.remove(path + ".sha256")
        _pretrain(cfg, recipe, path)
    finally:
        lock.release()
    return path


def _pretrain(cfg, recipe, path):
    """Run the recipe in a child process and move its exported weights to `path`, complete or
    not at all, with their checksum."""
    root = dataset_root(cfg)
    work = make_work_folder(os.path.dirname(path), _WORK_PREFIX)
    _say(f"MODEL.CLIP.PRETRAINED {recipe}: pretraining once (.venv/bin/python tools/train_net.py "
         f"--config-file {recipe}); the weights are cached in {path}")
    try:
        # Its log goes to stderr: the caller's stdout may be a result (a benchmark's tables).
        proc = subprocess.run([sys.executable, "-c",
                               _CHILD_MAIN.replace("{parent}", str(os.getpid())),
                               "--config-file", recipe, "DATASETS.ROOT", root, "OUTPUT_DIR",
                               work], stdout=sys.stderr)
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
        _write_checksum(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"Pretrained weights ready: {path}")

