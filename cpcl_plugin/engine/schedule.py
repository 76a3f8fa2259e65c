"""The cosine learning-rate schedule, stepped every iteration.

FastReID steps its cosine schedule once per epoch over ``MAX_EPOCH - warm-up epochs`` steps, so
every epoch trains at one rate and, when the warm-up does not end on an epoch boundary, the last
epoch trains at rate 0 (measured: 8 epochs with 20 warm-up iterations of 18 per epoch end on
rates 0.067 and 0.0 x BASE_LR; a 3-epoch run without warm-up never goes below 0.25). Here the
rate follows the cosine iteration by iteration and reaches SOLVER.ETA_MIN_LR exactly at the end of
the last iteration, so no step is wasted at rate 0.
"""
import math

from fastreid.solver.lr_scheduler import _get_warmup_factor_at_epoch
from torch.optim.lr_scheduler import LRScheduler

from ..errors import ConfigError

__all__ = ["cosine_learning_rate", "cosine_start", "check_schedule", "WarmupCosineLR"]


def cosine_start(cfg, iters_per_epoch):
    """The iteration where the cosine begins: after the warm-up and after SOLVER.DELAY_EPOCHS."""
    return max(cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.DELAY_EPOCHS * iters_per_epoch)


def check_schedule(cfg, iters_per_epoch):
    """The cosine schedule (stepped per iteration) starts after the warm-up and
    SOLVER.DELAY_EPOCHS; at least one iteration must be left for it."""
    max_iter = cfg.SOLVER.MAX_EPOCH * iters_per_epoch
    if cfg.SOLVER.SCHED == "CosineAnnealingLR" and cosine_start(cfg, iters_per_epoch) >= max_iter:
        raise ConfigError(
            f"SOLVER.WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS} and SOLVER.DELAY_EPOCHS "
            f"{cfg.SOLVER.DELAY_EPOCHS} leave no iteration for the cosine schedule within "
            f"SOLVER.MAX_EPOCH {cfg.SOLVER.MAX_EPOCH} ({max_iter} iterations of "
            f"{iters_per_epoch} per epoch); lower WARMUP_ITERS or DELAY_EPOCHS, or raise "
            f"MAX_EPOCH.")


def cosine_learning_rate(iteration, base_lr, max_iter, eta_min=0.0, cosine_start=0,
                         warmup_iters=0, warmup_factor=0.1, warmup_method="linear"):
    """The rate of optimiser step `iteration` (0-based): `base_lr` until `cosine_start`, then half
    a cosine down to `eta_min` at `max_iter`; during the first `warmup_iters` steps it is scaled by
    FastReID's warm-up factor (SOLVER.WARMUP_METHOD, WARMUP_FACTOR)."""
    if iteration < cosine_start:
        lr = base_lr
    else:
        progress = min(1.0, (iteration - cosine_start) / max(1, max_iter - cosine_start))
        lr = eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * progress)) / 2
    return lr * _get_warmup_factor_at_epoch(warmup_method, iteration, warmup_iters, warmup_factor)


class WarmupCosineLR(LRScheduler):
    """`cosine_learning_rate` for every parameter group (each from its own initial rate), with
    ``last_epoch`` counting optimiser steps. The cosine begins after the warm-up and after
    SOLVER.DELAY_EPOCHS, as FastReID's does."""

    def __init__(self, optimizer, cfg, iters_per_epoch, last_epoch=-1):
        solver = cfg.SOLVER
        self.max_iter = solver.MAX_EPOCH * iters_per_epoch
        self.eta_min = solver.ETA_MIN_LR
        self.cosine_start = cosine_start(cfg, iters_per_epoch)
        self.warmup = (solver.WARMUP_ITERS, solver.WARMUP_FACTOR, solver.WARMUP_METHOD)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        warmup_iters, warmup_factor, warmup_method = self.warmup
        return [cosine_learning_rate(self.last_epoch, base_lr, self.max_iter, self.eta_min,
                                     self.cosine_start, warmup_iters, warmup_factor, warmup_method)
                for base_lr in self.base_lrs]

    def load_state_dict(self, state_dict):
        """Only the step count comes from the checkpoint (`at_iteration` sets it from the epoch
        resumed); the rates and the schedule's shape come from today's config, so a run resumed
        with a lower SOLVER.BASE_LR or a larger SOLVER.MAX_EPOCH follows them, and a checkpoint
        of FastReID's per-epoch scheduler loads too."""

    def at_iteration(self, iteration):
        """Continue from optimiser step `iteration`, setting the parameter groups' rates."""
        self.last_epoch = iteration
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
