"""Checkpoint I/O: files written atomically, and model weights loaded all-or-nothing.

- `write_atomically`: any file (checkpoints, feature indexes, exports) appears complete or not
  at all;
- `AtomicCheckpointer`: FastReID's Checkpointer on top of it;
- `check_weight_file`: a weight path (MODEL.WEIGHTS, MODEL.CLIP.PRETRAINED) that is absent, a
  folder or empty, refused in one sentence;
- `load_model_weights`: MODEL.WEIGHTS into a model, refused in one sentence when it does not
  fit (or, for training with MODEL.WEIGHTS_PARTIAL, the tensors that fit, every other one named
  in the log);
- `parameter_digest`: a short hash of a model's state, to compare runs, ranks and indexes;
- `unwrap`: the model inside a DistributedDataParallel wrapper.
"""
import hashlib
import logging
import os
import re

import torch
from fastreid.utils.checkpoint import Checkpointer
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, error_summary

__all__ = ["AtomicCheckpointer", "parameter_digest", "check_weight_file", "check_checkpoint_path",
           "load_model_weights", "write_atomically", "remove_interrupted_writes", "unwrap"]

logger = logging.getLogger(__name__)


def unwrap(model):
    """The model itself, whether or not DistributedDataParallel wraps it."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def write_atomically(path, write, suffix=".tmp"):
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`, so the file
    appears complete or not at all. numpy appends its extension to names without it: pass
    suffix=".tmp.npz" / ".tmp.npy" for np.savez / np.save."""
    tmp = path + suffix
    write(tmp)
    os.replace(tmp, path)


def _torch_save_synced(data, path):
    with open(path, "wb") as f:
        torch.save(data, f)
        f.flush()
        os.fsync(f.fileno())


def remove_interrupted_writes(folder):
    """Delete the temporary files that checkpoint writes killed mid-way left in `folder`
    (``*.pth.tmp``, ``last_checkpoint.tmp``; a model's can be hundreds of MB); returns their
    names. Call it where no other process is writing checkpoints into `folder`."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder)
                   if n.endswith(".pth.tmp") or n == "last_checkpoint.tmp")
    for name in names:
        os.remove(os.path.join(folder, name))
    if names:
        logger.info(f"Removed {len(names)} file(s) that interrupted checkpoint writes left in "
                    f"{folder}: {', '.join(names)}")
    return names


# A periodic checkpoint's file name (model_best.pth and model_final.pth are not).
PERIODIC = re.compile(r"model_(\d+)\.pth")


class AtomicCheckpointer(Checkpointer):
    """FastReID's Checkpointer whose files appear complete or not at all: each checkpoint is
    written to a temporary file and renamed into place, so a crash mid-save never leaves a
    truncated ``model_*.pth`` or a ``last_checkpoint`` pointing at one. `last_written` is the
    last checkpoint this run wrote or resumed from (not another run's, from a reused folder)."""

    last_written = None
    keep = 0  # SOLVER.CHECKPOINT_KEEP: periodic checkpoints kept, the newest; 0: all

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        write_atomically(path, lambda tmp: _torch_save_synced(data, tmp))
        self.tag_last_checkpoint(basename)
        self.last_written = path
        if self.keep and PERIODIC.fullmatch(basename):
            self._remove_older_periodic(basename)

    def _remove_older_periodic(self, written):
        """Keep the `keep` periodic checkpoints (model_NNNN.pth) written last, `written` (this
        save's) always among them: by write time, not epoch number, as a folder may hold another
        run's later epochs."""
        others = [n for n in os.listdir(self.save_dir) if PERIODIC.fullmatch(n) and n != written]
        others.sort(key=lambda n: os.path.getmtime(os.path.join(self.save_dir, n)))
        older = others[:max(0, len(others) - (self.keep - 1))]
        for name in older:
            os.remove(os.path.join(self.save_dir, name))
        if older:
            self.logger.info(f"Removed {', '.join(older)} (SOLVER.CHECKPOINT_KEEP {self.keep})")

    def tag_last_checkpoint(self, last_filename_basename):
        def write(tmp):
            with open(tmp, "w") as f:
                f.write(last_filename_basename)
        write_atomically(os.path.join(self.save_dir, "last_checkpoint"), write)


def check_weight_file(key, path, kind, hint):
    """Refuse in one sentence a weight path given in config `key` that is not a file of weights:
    absent, a folder or empty. `kind` names what it must be ("a checkpoint file"); `hint` says
    what to name instead of a folder."""
    if os.path.isdir(path):
        raise ConfigError(f"{key} {path} is a folder, not {kind}; {hint}.")
    if not os.path.isfile(path):
        raise ConfigError(f"{key} {path} does not exist.")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"{key} {path} is empty (0 bytes), not {kind}; copy or download it "
                          f"again.")


def check_checkpoint_path(path):
    """`check_weight_file` for MODEL.WEIGHTS."""
    check_weight_file("MODEL.WEIGHTS", path, "a checkpoint file",
                      f"name the checkpoint in it, e.g. {os.path.join(path, 'model_final.pth')}")


def unprefixed(state):
    """A model state dict without the "module." of a DistributedDataParallel model saved without
    unwrapping it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def state_differences(own, state):
    """(missing, unexpected, mismatched) keys of checkpoint `state` against the model's `own`."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, mismatched


def mismatch_summary(own, state):
    """The first difference between checkpoint `state` and the model's `own` tensors, and the
    counts of each kind; None when they fit exactly."""
    missing, unexpected, mismatched = state_differences(own, state)
    if mismatched:
        k = mismatched[0]
        first = f"{k} is {tuple(state[k].shape)} in the checkpoint but {tuple(own[k].shape)} in " \
                f"the model"
    elif missing:
        first = f"the checkpoint lacks {missing[0]}"
    elif unexpected:
        first = f"the checkpoint has {unexpected[0]}, which the model does not"
    else:
        return None
    return (f"{first}; {len(mismatched)} shapes differ, {len(missing)} missing, "
            f"{len(unexpected)} extra")


def load_model_weights(model, path, partial=False, training=True):
    """Load the weights of checkpoint `path` (MODEL.WEIGHTS) into `model` and return the
    checkpoint's dict. A file that is not a checkpoint is one ConfigError; so is one whose tensors
    do not all fit the model the config builds (naming the first difference; FastReID's loader
    only warns and skips them), unless `partial` (MODEL.WEIGHTS_PARTIAL, for training): then the
    tensors that fit are loaded, the others keep their initialisation, and the log names every
    one skipped with its shapes. `training` False (evaluation and the tools): the message does
    not offer MODEL.WEIGHTS_PARTIAL, which only starts a training."""
    check_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle, zip and torch errors alike: not a readable checkpoint
        raise ConfigError(f"MODEL.WEIGHTS {path} is not a readable checkpoint "
                          f"({error_summary(err)}); pass a model_*.pth written by "
                          f"training.") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or \
            not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"MODEL.WEIGHTS {path} holds no model state dict; pass a model_*.pth "
                          f"written by training.")
    state = unprefixed(state)
    own = unwrap(model).state_dict()
    missing, unexpected, mismatched = state_differences(own, state)
    counts = (f"{len(mismatched)} shapes differ, {len(missing)} missing, "
              f"{len(unexpected)} extra")
    if not (missing or unexpected or mismatched):
        unwrap(model).load_state_dict(state)
        return checkpoint
    if not partial:
        advice = ", or, to start training from the tensors that fit, add MODEL.WEIGHTS_PARTIAL " \
                 "True" if training else " (config.yaml beside it)"
        raise ConfigError(
            f"MODEL.WEIGHTS {path} does not match the model this config builds "
            f"({mismatch_summary(own, state)}): use the config the checkpoint was trained "
            f"with{advice}.")
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not fitting:
        raise ConfigError(f"MODEL.WEIGHTS {path} has no tensor that fits the model this config "
                          f"builds ({counts}), so even MODEL.WEIGHTS_PARTIAL loads nothing: check "
                          f"that it is a checkpoint of this architecture.")
    skipped = ([f"  kept as initialised, not in the checkpoint: {k} {tuple(own[k].shape)}"
                for k in missing]
               + [f"  kept as initialised, other shape: {k} {tuple(own[k].shape)} in the model, "
                  f"{tuple(state[k].shape)} in the checkpoint" for k in mismatched]
               + [f"  ignored, not in the model: {k} {tuple(state[k].shape)}" for k in unexpected])
    logger.warning(f"MODEL.WEIGHTS_PARTIAL: loaded {len(fitting)} of the model's {len(own)} "
                   f"tensors from {path}; skipped {len(skipped)}:\n" + "\n".join(skipped))
    unwrap(model).load_state_dict(fitting, strict=False)
    return checkpoint


def parameter_digest(model):
    """A short hash of every parameter and buffer, to compare models across ranks or runs."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
