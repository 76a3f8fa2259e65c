"""The cosine schedule: it reaches SOLVER.ETA_MIN_LR at the end of the last epoch, never trains an
epoch at that minimum, and resumes with the rate it had."""
import pytest
import torch

from cpcl_plugin import load_config
from cpcl_plugin.engine.schedule import WarmupCosineLR
from conftest import TINY


def _rates(max_epoch, iters_per_epoch, warmup_iters, *opts):
    cfg = load_config(TINY, ["SOLVER.MAX_EPOCH", str(max_epoch), "SOLVER.WARMUP_ITERS",
                             str(warmup_iters), "SOLVER.ETA_MIN_LR", "0.0", *opts])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    schedule = WarmupCosineLR(optimizer, cfg, iters_per_epoch)
    rates = []
    for _ in range(max_epoch * iters_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"] / cfg.SOLVER.BASE_LR)
        optimizer.step()
        schedule.step()
    return rates, optimizer.param_groups[0]["lr"], (optimizer, schedule, cfg)


@pytest.mark.parametrize("max_epoch, iters_per_epoch, warmup_iters", [
    (3, 10, 0), (3, 1, 0), (8, 18, 20), (4, 10, 10), (2, 5, 9)])
def test_every_epoch_trains_and_the_minimum_comes_at_the_end(max_epoch, iters_per_epoch,
                                                             warmup_iters):
    rates, final, _ = _rates(max_epoch, iters_per_epoch, warmup_iters)
    assert final == pytest.approx(0.0, abs=1e-12)
    last_epoch = rates[-iters_per_epoch:]
    assert min(last_epoch) > 0  # the last epoch still learns
    # After the warm-up the rate falls at every step; each epoch trains at other rates.
    after_warmup = rates[warmup_iters:]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))
    if warmup_iters:
        assert rates[0] == pytest.approx(0.1) and max(rates) <= 1.0


def test_resume_continues_the_rate_and_follows_todays_config():
    rates, _, (optimizer, schedule, cfg) = _rates(4, 10, 5)
    state = schedule.state_dict()

    def resumed(*opts):
        today = load_config(TINY, ["SOLVER.MAX_EPOCH", "4", "SOLVER.WARMUP_ITERS", "5",
                                   "SOLVER.ETA_MIN_LR", "0.0", *opts])
        fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=today.SOLVER.BASE_LR)
        schedule = WarmupCosineLR(fresh, today, 10)
        schedule.load_state_dict(state)
        schedule.at_iteration(20)  # resumed after epoch 1
        return fresh.param_groups[0]["lr"], today.SOLVER.BASE_LR

    # The same config: the rate the uninterrupted run had at that step.
    lr, base = resumed()
    assert lr / base == pytest.approx(rates[20])
    # A lower SOLVER.BASE_LR (what a diverged run is told to try) is followed, not the saved one.
    lr, base = resumed("SOLVER.BASE_LR", "0.00001")
    assert base == 0.00001 and lr == pytest.approx(base * rates[20])
    # SOLVER.MAX_EPOCH raised to 8: the cosine now ends at epoch 8, so the rate is higher.
    lr, base = resumed("SOLVER.MAX_EPOCH", "8")
    assert lr / base > rates[20]
