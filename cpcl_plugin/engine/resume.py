"""What `--resume` continues, checked before anything is written to OUTPUT_DIR: the interrupted
run's config (OUTPUT_DIR/config.yaml, as that run wrote it) against this one's, and its last
checkpoint's epoch against SOLVER.MAX_EPOCH. A change that makes the checkpoint's state wrong for
this run (another model, other data) is refused in one sentence; any other change is a choice,
said once per key in the log. The command line's preflight calls `check_resume`."""
import os

import torch
from fastreid.config import get_cfg
from yacs.config import CfgNode

from ..config import add_cpcl_config
from ..errors import ConfigError, error_summary
from ..utils.checkpoint import mismatch_summary, unprefixed, unwrap

__all__ = ["check_model_fits", "check_resume", "config_differences", "finished_run_message",
           "last_checkpoint"]

# Keys whose change would continue a checkpoint into another model or onto other data: its
# tensors and optimizer state belong to the old architecture, its memory, pseudo labels and best
# metric to the old training set. The image size decides the CLIP tower's position embeddings
# when MODEL.CLIP.IMAGE_SIZE is empty. Loss weights, temperatures, gradient checkpointing, the
# device, the data's location, skipping undecodable images and the test sets are choices.
_REFUSED = ("MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.", "MODEL.HEADS.", "MODEL.TEXT_ENCODER.",
            "MODEL.IMAGE_HEAD.", "MODEL.CLIP.ARCH", "MODEL.CLIP.IMAGE_SIZE",
            "MODEL.CLIP.CONTEXT_LENGTH", "INPUT.SIZE_TRAIN", "DATASETS.NAMES",
            "DATASETS.COMBINEALL", "DATASETS.SYNTHETIC.", "DATASETS.TEXT_IMAGE_JSON.")
# Keys that shape the learning-rate schedule (a change is said with that consequence).
_SCHEDULE = ("SOLVER.MAX_EPOCH", "SOLVER.BASE_LR", "SOLVER.ETA_MIN_LR", "SOLVER.WARMUP_",
             "SOLVER.DELAY_EPOCHS", "SOLVER.SCHED", "SOLVER.STEPS", "SOLVER.GAMMA",
             "SOLVER.IMS_PER_BATCH", "SOLVER.HEADS_LR_FACTOR", "SOLVER.BIAS_LR_FACTOR")


def default_config():
    """Every key with its default (FastReID's and the plugin's), no file read."""
    cfg = get_cfg()
    add_cpcl_config(cfg)
    return cfg


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value):
    """Lists and tuples alike (YAML reads lists, yacs keeps tuples)."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def config_differences(old, new):
    """[(key, old value, new value)] of every key whose value differs between two configs
    (CfgNodes or nested dicts), in key order; a key absent from one side has the value None."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if _plain(a.get(k)) != _plain(b.get(k))]


def last_checkpoint(output_dir):
    """The checkpoint `--resume` continues from (named in OUTPUT_DIR/last_checkpoint), or None."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    return os.path.join(output_dir, name) if name else None


def finished_run_message(output_dir, epochs_done, max_epoch, checkpoint):
    """The sentence for a resume with nothing left to train (epochs are counted from 0)."""
    trained = f"{epochs_done} epoch{'s' * (epochs_done != 1)}" + \
        (f" (epochs 0 to {epochs_done - 1})" if epochs_done > 1 else "")
    return (f"--resume: {output_dir} holds a run that has trained {trained}, which is all of "
            f"SOLVER.MAX_EPOCH {max_epoch}: raise SOLVER.MAX_EPOCH to train on, or evaluate it "
            f"with --eval-only MODEL.WEIGHTS {checkpoint}.")


def check_resume(cfg):
    """Before a resumed run writes anything: raise ConfigError when OUTPUT_DIR's run was trained
    with another model or other data (keys of _REFUSED), or has trained every epoch of
    SOLVER.MAX_EPOCH; return the sentences to log for the other keys that differ. Returns [] when
    there is nothing to resume (the run then starts from scratch, as FastReID's resume does)."""
    output_dir = cfg.OUTPUT_DIR
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None:
        return []
    saved = os.path.join(output_dir, "config.yaml")
    said = []
    if os.path.isfile(saved):
        with open(saved) as f:
            old = CfgNode.load_cfg(f)
        # Keys the saved config lacks came with a newer version of the plugin; the interrupted
        # run worked as their defaults do.
        old = {**_flat(default_config()), **_flat(old)}
        changes = [c for c in config_differences(old, _flat(cfg)) if c[0] != "OUTPUT_DIR"]
        # A key this version no longer has is said, never refused.
        refused = [c for c in changes if c[0].startswith(_REFUSED) and c[2] is not None]
        if refused:
            key, was, now = refused[0]
            what = "data" if key.startswith("DATASETS.") else "model"
            more = f" (and {len(refused) - 1} more: " + ", ".join(k for k, _, _ in refused[1:]) + \
                ")" if len(refused) > 1 else ""
            raise ConfigError(
                f"--resume: {output_dir} holds a run trained with {key} {was!r}, and this "
                f"config has {now!r}{more}; its checkpoint cannot continue with another "
                f"{what}: resume with the settings in {saved}, or train into a new OUTPUT_DIR "
                f"(MODEL.WEIGHTS {checkpoint} starts from its weights).")
        for key, was, now in changes:
            if now is None:
                said.append(f"--resume: {key} ({was!r} in the interrupted run) is not a key "
                            f"of this version; it is ignored.")
                continue
            why = (" (the learning-rate schedule follows the new value from the resumed epoch "
                   "on, so the rates differ from the interrupted run's)"
                   if key.startswith(_SCHEDULE) else "")
            said.append(f"--resume: {key} was {was!r} in the interrupted run and is "
                        f"{now!r} now; the run goes on with the new value{why}.")
    else:
        said.append(f"--resume: {saved} is missing, so this run's settings cannot be compared "
                    f"with the interrupted run's; the run goes on with this config.")
    try:
        epoch = torch.load(checkpoint, map_location="cpu", mmap=True,
                           weights_only=False).get("epoch", -1)
    except Exception as err:  # noqa: BLE001  truncated, not a checkpoint: FastReID would crash
        raise ConfigError(f"--resume: the last checkpoint {checkpoint} cannot be read "
                          f"({error_summary(err)}); point {os.path.join(output_dir, 'last_checkpoint')} "
                          f"at an earlier model_*.pth, or train into a new OUTPUT_DIR.") from None
    if epoch + 1 >= cfg.SOLVER.MAX_EPOCH:
        raise ConfigError(finished_run_message(output_dir, epoch + 1, cfg.SOLVER.MAX_EPOCH,
                                               checkpoint))
    return said


def check_model_fits(model, checkpoint):
    """Raise ConfigError when the model state in `checkpoint` (the file --resume continues) does
    not fit `model` exactly; FastReID's resume would log hundreds of lines and crash in the
    optimizer. The command line's check_resume finds the same earlier, from the configs."""
    state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)
    summary = mismatch_summary(unwrap(model).state_dict(), unprefixed(state.get("model", {})))
    if summary:
        raise ConfigError(f"--resume: {checkpoint} does not match the model this config builds "
                          f"({summary}): resume with the config it was trained with "
                          f"({os.path.join(os.path.dirname(checkpoint), 'config.yaml')}).")
