"""CPCLTrainer: FastReID's DefaultTrainer with the parts that differ for text-image training.

What differs, and why:
- construction (`__init__`): the text-image loader is epoch-based (re-created each epoch, so a
  per-epoch hook can change what the next epoch samples); DDP gets no ``device_ids`` on CPU;
  checkpoints are written atomically; no ``num_classes`` auto-scaling (there are no classes).
- `build_optimizer`: FastReID's parameter groups (``heads`` get SOLVER.HEADS_LR_FACTOR) without
  ContiguousParams, whose buffers stop updating on torch >= 2; Adam and AdamW run fused.
- `run_step`: draws from the epoch iterator; SimpleTrainer's step, with autocast and a gradient
  scaler under SOLVER.AMP (FastReID's AMPTrainer is CUDA-only and float16-only), then the
  prototype memory's momentum update; logs the temperature.
- `build_hooks`: the PseudoLabelHook first (pseudo labels, memory and sampler before each epoch).
- `build_evaluator`: the text-to-image evaluator; `build_hooks`: FastReID's hooks with a
  configurable log period and the optional evaluation before training.
- `resume_or_load`: resuming a finished run says so instead of failing in a hook.
Checkpoint I/O (atomic files, all-or-nothing weight loading) is in `checkpoint`.
- `build_lr_scheduler`: the cosine stepped per iteration, down to its minimum at the end
  (engine/schedule.py); `test`: FastReID's loop over DATASETS.TESTS with progress lines.
Everything else (resume, hooks, writers) is FastReID's; checkpoints also carry every random state
(engine/random_state.py).
"""
import logging
import os
import time
from collections import OrderedDict

import torch
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import SimpleTrainer, TrainerBase
from fastreid.evaluation.testing import flatten_results_dict, print_csv_format
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter
from fastreid.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..compat.writers import JSONWriter, TensorboardWriter
from ..data.build import build_text_image_test_loader, build_text_image_train_loader
from ..errors import ConfigError, DatasetError
from ..evaluation.features import run_inference
from ..evaluation.t2i_evaluation import TextImageEvaluator
from ..utils.checkpoint import (AtomicCheckpointer, load_model_weights, parameter_digest,
                                remove_interrupted_writes, unwrap)
from .pretraining import ensure_pretrained_weights
from .resume import check_model_fits, finished_run_message
from .pseudo_labels import PseudoLabelHook
from .random_state import RandomStates
from .schedule import WarmupCosineLR, check_schedule

__all__ = ["CPCLTrainer", "EvalBeforeTrain", "TrainingDiverged"]

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the learnable temperature stopped being finite; the message says where, which
    checkpoint is the last good one, and what to lower."""

    one_sentence = True  # printed as its message alone (see compat: one_sentence_errors)


class CPCLTrainer(DefaultTrainer):

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        fr_logger = logging.getLogger("fastreid")
        if not fr_logger.isEnabledFor(logging.INFO):
            setup_logger()
        self.cfg = cfg
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            remove_interrupted_writes(cfg.OUTPUT_DIR)
        data_loader = self.build_train_loader(cfg)
        model = self.build_model(cfg)
        optimizer, _ = self.build_optimizer(cfg, model)
        if comm.get_world_size() > 1:
            on_cuda = next(model.parameters()).device.type == "cuda"
            model = DistributedDataParallel(
                model, device_ids=[comm.get_local_rank()] if on_cuda else None,
                broadcast_buffers=False)
        model.train()
        self._model, self._data_loader, self._optimizer = model, data_loader, optimizer
        # SOLVER.AMP: autocast dtype of the forward pass, and a gradient scaler for float16.
        self._device_type = next(model.parameters()).device.type
        self._amp_dtype = getattr(torch, cfg.SOLVER.AMP.DTYPE) if cfg.SOLVER.AMP.ENABLED else None
        if self._amp_dtype == torch.bfloat16 and self._device_type == "cuda" and \
                not torch.cuda.is_bf16_supported():  # asked here, where CUDA is in use anyway
            raise ConfigError("SOLVER.AMP.DTYPE bfloat16 needs a GPU with bfloat16 support; use "
                              "float16 on this one.")
        self._grad_scaler = torch.amp.GradScaler(self._device_type) \
            if self._amp_dtype == torch.float16 else None
        self._epoch_iter = None

        self.iters_per_epoch = len(data_loader.batch_sampler)
        check_schedule(cfg, self.iters_per_epoch)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.iters_per_epoch)
        # The pseudo labels and the prototype memory are saved with every checkpoint.
        self.pseudo_label_hook = PseudoLabelHook(cfg)
        # And every generator state, so that a resumed run repeats the uninterrupted one.
        self.random_states = RandomStates(data_loader.batch_sampler.sampler)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR,
                                               save_to_disk=comm.is_main_process(),
                                               optimizer=optimizer,
                                               pseudo_labels=self.pseudo_label_hook,
                                               random_states=self.random_states,
                                               **({"grad_scaler": self._grad_scaler}
                                                  if self._grad_scaler else {}),
                                               **self.scheduler)
        self.checkpointer.keep = cfg.SOLVER.CHECKPOINT_KEEP
        self.start_epoch = 0
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * self.iters_per_epoch
        self.warmup_iters = cfg.SOLVER.WARMUP_ITERS
        self.delay_epochs = cfg.SOLVER.DELAY_EPOCHS
        self.initial_eval_results = None
        self.skipped_pairs = 0  # this rank's pairs left out because their image could not be decoded
        self.diverged = False
        self.register_hooks(self.build_hooks())

    # DefaultTrainer reads these from a SimpleTrainer it owns; this trainer steps by itself.
    model = property(lambda self: self._model)
    data_loader = property(lambda self: self._data_loader)
    optimizer = property(lambda self: self._optimizer)
    grad_scaler = property(lambda self: self._grad_scaler)

    @classmethod
    def build_model(cls, cfg):
        # A pretraining config in MODEL.CLIP.PRETRAINED: its weights are made first (once; cached).
        ensure_pretrained_weights(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_text_image_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_text_image_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        ranked_lists = None
        if cfg.TEST.VIS_TOPK > 0:
            folder = os.path.join(output_dir or cfg.OUTPUT_DIR, "ranked_lists",
                                  dataset_name.replace(":", "_"))
            ranked_lists = (data_loader.dataset, cfg.TEST.VIS_TOPK, cfg.TEST.VIS_QUERIES, folder)
        return data_loader, TextImageEvaluator(num_query, ranked_lists,
                                                  cfg.TEST.IDS_PER_GALLERY)

    @classmethod
    def test(cls, cfg, model):
        """FastReID's test loop over DATASETS.TESTS, whose pass names what it encodes ("evaluating
        SyntheticPedes: 400 captions, then 400 images") and logs its progress."""
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TESTS:
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            num_captions = data_loader.dataset.num_query
            step = (f"evaluating {dataset_name}: {num_captions} captions, then "
                    f"{len(data_loader.dataset) - num_captions} images")
            results[dataset_name] = run_inference(model, data_loader, evaluator, step,
                                                  flip_test=cfg.TEST.FLIP.ENABLED)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name}:")
                print_csv_format(OrderedDict(results[dataset_name], dataset=dataset_name))
        return results[cfg.DATASETS.TESTS[0]] if len(results) == 1 else results

    @classmethod
    def build_optimizer(cls, cfg, model):
        optimizer, params = build_optimizer(cfg, model, contiguous=False)
        # torch runs fused Adam on CPUs from 2.4 on (CUDA earlier); older ones keep the default.
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and \
                tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):
            # FastReID makes one group per parameter, which defeats torch's multi-tensor path; the
            # fused kernel (CPU and CUDA) updates each tensor in one pass instead of a dozen. On
            # two CPU cores the tiny CLIP's step (8M parameters) falls from ~0.15 s to ~0.01 s.
            for group in optimizer.param_groups:
                group.update(fused=True, foreach=False)
            optimizer.defaults.update(fused=True, foreach=False)
        return optimizer, params

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch):
        """The cosine schedule stepped per iteration, down to ETA_MIN_LR at the end of the last
        epoch (FastReID's steps per epoch and trains its last epoch at rate 0); other schedules
        are FastReID's."""
        if cfg.SOLVER.SCHED == "CosineAnnealingLR":
            return {"lr_sched": WarmupCosineLR(optimizer, cfg, iters_per_epoch)}
        return super().build_lr_scheduler(cfg, optimizer, iters_per_epoch)

    def build_hooks(self):
        """FastReID's default hooks minus PreciseBN and LayerFreeze (rejected by check_config),
        with SOLVER.LOG_PERIOD for the writers and the optional evaluation before training."""
        cfg = self.cfg

        def test_and_save_results():
            if self.diverged:  # EvalHook.after_train would evaluate the broken model
                return {}
            self._last_eval_results = self.test(cfg, self.model)
            return self._last_eval_results

        ret = [self.pseudo_label_hook, hooks.IterationTimer(),
               (StepwiseLRScheduler if isinstance(self.scheduler["lr_sched"], WarmupCosineLR)
                else hooks.LRScheduler)(self.optimizer, self.scheduler)]
        if cfg.TEST.EVAL_BEFORE_TRAIN:
            ret.append(EvalBeforeTrain())
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        # After the evaluation (its loader draws a seed), right before the checkpoint is written.
        ret.append(CaptureRandomStates())
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
            ret.append(hooks.PeriodicWriter(self.build_writers(), cfg.SOLVER.LOG_PERIOD))
        return ret

    def build_writers(self):
        # Per-scalar writers (compat/writers.py), so that evaluation metrics are written too.
        return [CommonMetricPrinter(self.max_iter),
                JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
                TensorboardWriter(self.cfg.OUTPUT_DIR)]

    def _next_batch(self):
        if self._epoch_iter is None:
            self.data_loader.batch_sampler.sampler.set_epoch(self.epoch)
            self._epoch_iter = iter(self.data_loader)
        return next(self._epoch_iter)

    def _without_undecodable_images(self, data):
        """The batch without pairs whose image could not be decoded (DATASETS.SKIP_BAD_IMAGES);
        they are counted in ``skipped_pairs``."""
        keep = data["valid"].bool()
        nothing_left = not bool(keep.any())
        if self.cfg.DATASETS.SKIP_BAD_IMAGES and comm.get_world_size() > 1:
            # Every rank must stop together: the others would wait in DDP's all-reduce.
            nothing_left = any(comm.all_gather(nothing_left))
        if nothing_left:
            raise DatasetError("Every image of a training batch could not be decoded; check the "
                               "dataset's image files (tools/check_dataset.py --decode).")
        if bool(keep.all()):
            return data
        self.skipped_pairs += int((~keep).sum())
        return {k: v[keep] if isinstance(v, torch.Tensor) else v for k, v in data.items()}

    def after_epoch(self):
        self._epoch_iter = None
        # The epoch's last step may have broken the weights: stop before they are checkpointed.
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            self._diverged(f"the weights became NaN or infinite at iteration {self.iter - 1} "
                           f"(epoch {self.epoch})")
        if self.cfg.DATASETS.SKIP_BAD_IMAGES:
            skipped = sum(comm.all_gather(self.skipped_pairs)) if comm.get_world_size() > 1 \
                else self.skipped_pairs
            if skipped and comm.is_main_process():
                logger.warning(f"{skipped} training pairs left out so far: their image could "
                               f"not be decoded (DATASETS.SKIP_BAD_IMAGES).")
                self.storage.put_scalar("data/skipped_pairs", skipped, smoothing_hint=False)
        super().after_epoch()

    def run_step(self):
        assert self.model.training, "[CPCLTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = self._without_undecodable_images(self._next_batch())
        data_time = time.perf_counter() - start
        with torch.autocast(self._device_type, dtype=self._amp_dtype,
                            enabled=self._amp_dtype is not None):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self._stop_if_diverged(losses)
        self.optimizer.zero_grad()
        if self._grad_scaler is not None:  # float16: scaled so small gradients do not vanish
            self._grad_scaler.scale(losses).backward()
            self._write_metrics(loss_dict, data_time)
            self._grad_scaler.step(self.optimizer)
            self._grad_scaler.update()
        else:
            losses.backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()
        if (self.iter + 1) % self.cfg.SOLVER.LOG_PERIOD == 0 or self.iter == self.max_iter - 1:
            # Only when PeriodicWriter writes: .item() waits for the GPU.
            scale = unwrap(self.model).logit_scale.item()  # 0 after a diverged step: stopped next
            self.storage.put_scalar("temperature", 1.0 / scale if scale > 0 else float("inf"),
                                    smoothing_hint=False)
        # After the step, as in cluster-contrast: the memory moves towards this batch's features.
        unwrap(self.model).memory.commit(self.cfg.MODEL.CPCL.MEMORY_MOMENTUM)

    def _write_metrics(self, loss_dict, data_time):
        """SimpleTrainer's metrics, plus the single loss by its name: FastReID writes the terms
        only when there are several, so loss_itc was missing until the prototype losses began."""
        SimpleTrainer._write_metrics(self, loss_dict, data_time)
        if len(loss_dict) == 1 and comm.is_main_process():
            (name,) = loss_dict
            self.storage.put_scalar(name, self.storage.history("total_loss").latest())

    def _stop_if_diverged(self, losses):
        """Stop, before this step changes any weight, when the loss is NaN or infinite (on any
        rank) or the learnable temperature has become infinite (logit scale 0): every later step
        would train on garbage, and no checkpoint of it must be written."""
        total = losses.detach().clone()
        if comm.get_world_size() > 1:  # every rank stops together, whichever rank's batch broke
            torch.distributed.all_reduce(total)
        scale = unwrap(self.model).logit_scale.detach()
        if bool(torch.isfinite(total) & (scale > 0) & torch.isfinite(scale)):
            return  # one device sync, as the metric writer's .item() calls make anyway
        what = (f"the loss became {float(total)}" if not torch.isfinite(total)
                else f"the learnable temperature became infinite (logit scale {float(scale)})")
        self._diverged(f"{what} at iteration {self.iter} (epoch {self.epoch}, learning rate "
                       f"{max(group['lr'] for group in self.optimizer.param_groups):.3g})")

    def _diverged(self, what):
        """Raise TrainingDiverged: `what` happened; names this run's last checkpoint (rank 0 has
        written them) and what to lower."""
        self.diverged = True  # no evaluation of the broken model after this (see build_hooks)
        if not comm.is_main_process():
            raise TrainingDiverged(f"Training diverged: {what}; see rank 0's message.")
        last = self.checkpointer.last_written
        hint = f"SOLVER.BASE_LR (now {self.cfg.SOLVER.BASE_LR:g})" + (
            " or fix the temperature with MODEL.CPCL.LEARN_TEMPERATURE False"
            if self.cfg.MODEL.CPCL.LEARN_TEMPERATURE else "")
        raise TrainingDiverged(
            f"Training diverged: {what}; "
            + (f"the last good checkpoint is {last}" if last else
               "this run wrote no checkpoint before it")
            + f", and lowering {hint} should help.")

    def resume_or_load(self, resume=True):
        """FastReID's resume from OUTPUT_DIR's last checkpoint; otherwise MODEL.WEIGHTS, loaded
        strictly (FastReID only warns about tensors that do not fit, and trains a half-random
        model) unless MODEL.WEIGHTS_PARTIAL asks for the tensors that fit."""
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.last_written = self.checkpointer.get_checkpoint_file()
            check_model_fits(self.model, self.checkpointer.last_written)
            super().resume_or_load(resume=True)
            schedule = self.scheduler["lr_sched"]
            if isinstance(schedule, WarmupCosineLR):  # its step count, from the epoch resumed
                schedule.at_iteration(self.start_epoch * self.iters_per_epoch)
            if not self.random_states.restored and comm.is_main_process():
                logger.warning(f"{self.checkpointer.last_written} holds no random states (written "
                               f"by an older version, or by another number of processes): the "
                               f"run goes on, but not exactly as the interrupted one would have.")
        elif self.cfg.MODEL.WEIGHTS:
            logger.info(f"Initialising the model from MODEL.WEIGHTS {self.cfg.MODEL.WEIGHTS}")
            load_model_weights(self.model, self.cfg.MODEL.WEIGHTS,
                               partial=self.cfg.MODEL.WEIGHTS_PARTIAL)
        if resume:
            self._restore_best_metric()
        if self.start_epoch >= self.max_epoch:  # the command line's preflight says it earlier
            raise ConfigError(finished_run_message(self.cfg.OUTPUT_DIR, self.start_epoch,
                                                   self.max_epoch, self.checkpointer.last_written))

    def _restore_best_metric(self):
        """FastReID's PeriodicCheckpointer starts each run with best metric -1, so after a resume
        its first checkpoint would replace model_best whatever its metric: start from the one
        recorded in model_best.pth instead."""
        path = os.path.join(self.cfg.OUTPUT_DIR, "model_best.pth")
        periodic = [h for h in self._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
        if not periodic or not os.path.isfile(path):
            return
        best = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        periodic[0].best_metric = float(best.get("metric", -1))
        logger.info(f"Resumed: {path} (epoch {int(best.get('epoch', -1))}) has metric "
                    f"{periodic[0].best_metric:.2f}; a checkpoint must beat it to replace it.")

    def train(self):
        results = super().train()
        # For comparing runs and ranks (tests read it from log.txt); not for the console.
        logger.debug(f"Final parameter digest (rank {comm.get_rank()}): "
                     f"{parameter_digest(self.model)}")
        return results


class EvalBeforeTrain(hooks.HookBase):
    """Evaluates the untrained model once (TEST.EVAL_BEFORE_TRAIN), for a before/after table."""

    def before_train(self):
        if self.trainer.start_epoch > 0:
            return  # resumed: the model is not the untrained one
        logger.info("Evaluating the model before training")
        results = self.trainer.test(self.trainer.cfg, self.trainer.model)
        self.trainer.initial_eval_results = results
        # At iteration 0 of the metric curves (TensorBoard, metrics.json), as EvalHook puts later
        # evaluations at theirs.
        # Not "metric": FastReID's PeriodicCheckpointer picks model_best by the latest "metric"
        # in the storage, and the untrained model's would then stand for trained weights.
        scalars = {k: v for k, v in flatten_results_dict(results).items()
                   if k.split("/")[-1] != "metric"}
        self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
        comm.synchronize()


class StepwiseLRScheduler(hooks.LRScheduler):
    """FastReID's LRScheduler hook for a schedule that steps after every iteration (WarmupCosineLR,
    which includes the warm-up) rather than after every epoch."""

    def after_step(self):
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler["lr_sched"].step()

    def after_epoch(self):
        pass


class CaptureRandomStates(hooks.HookBase):
    """Records every rank's generator states at the end of each epoch, for the checkpoint that
    follows (all ranks take part: the states are gathered to rank 0)."""

    def after_epoch(self):
        self.trainer.random_states.capture()
