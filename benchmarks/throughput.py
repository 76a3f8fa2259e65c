"""Training throughput: CPCLTrainer against a plain PyTorch loop, and the pseudo-label pass's share.

    python benchmarks/throughput.py                 # configs/CPCL/synthetic.yml, best of 3
    python benchmarks/throughput.py --repeats 5

After one discarded warm-up epoch, both sides run in this process, alternately (which goes first
alternates too), on the synthetic config with the same model (CPCLTrainer.build_model), optimiser
(FastReID's, as the trainer builds it), loader, batches (the sampler seeded the same) and loss,
for one epoch each:
- CPCLTrainer: FastReID's training loop with the plugin's hooks (LR schedule, timers, metric
  writers, checkpointing); timed from the start of the epoch's first step to the end of its last
  step, so per-step hook work counts and the end-of-epoch evaluation does not;
- plain loop: `for batch in loader: loss = sum(model(batch).values()); zero_grad; backward; step;
  memory update`, nothing else.
Instance-level epochs (no pseudo labels) for the step comparison. Then one CPCLTrainer epoch with
pseudo labels: the share of its time spent in the per-epoch pass (feature extraction over every
training image and caption, clustering, OPLM, memory rebuild). Prints Markdown tables.
"""
import argparse
import gc
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "CPCL", "synthetic.yml")


def config(data_root, output_dir, pseudo):
    from cpcl_plugin import load_config
    return load_config(CONFIG, ["DATASETS.ROOT", data_root, "OUTPUT_DIR", output_dir,
                                "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_ITERS", "0",
                                "TEST.EVAL_BEFORE_TRAIN", "False", "SOLVER.LOG_PERIOD", "10",
                                "PSEUDO.ENABLED", str(pseudo), "PSEUDO.START_EPOCH", "0",
                                # speed does not depend on the weights: no pretraining needed
                                "MODEL.CLIP.PRETRAINED", ""])


def trainer_epoch(cfg):
    """(seconds of the epoch's steps, steps, seconds of the pseudo-label pass or 0)."""
    from fastreid.engine.train_loop import HookBase

    from cpcl_plugin import CPCLTrainer

    class StepClock(HookBase):
        """Last hook: before_epoch after the pseudo-label pass; after_step after every hook's."""
        def before_epoch(self):
            self.epoch_start = time.perf_counter()

        def before_step(self):
            if self.trainer.iter == self.trainer.start_iter:
                self.first_step = time.perf_counter()

        def after_step(self):
            self.last_step = time.perf_counter()

    trainer = CPCLTrainer(cfg)
    clock = StepClock()
    trainer.register_hooks([clock])
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    pass_seconds = clock.epoch_start - start if cfg.PSEUDO.ENABLED else 0.0
    return clock.last_step - clock.first_step, trainer.iters_per_epoch, pass_seconds


def plain_epoch(cfg):
    """(seconds, steps) of one epoch of a plain loop over the same model, optimiser and data."""
    import torch
    from fastreid.utils.events import EventStorage

    from cpcl_plugin import CPCLTrainer
    from cpcl_plugin.data import build_text_image_train_loader
    loader = build_text_image_train_loader(cfg)
    loader.batch_sampler.sampler.set_epoch(0)
    model = CPCLTrainer.build_model(cfg)
    optimizer, _ = CPCLTrainer.build_optimizer(cfg, model)
    model.train()
    steps = 0
    with EventStorage(0):  # the model's forward logs, as under any FastReID trainer
        start = time.perf_counter()
        for batch in loader:
            losses = sum(model(batch).values())
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            model.memory.commit(cfg.MODEL.CPCL.MEMORY_MOMENTUM)
            steps += 1
        seconds = time.perf_counter() - start
    assert torch.isfinite(losses)
    return seconds, steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=os.path.join(REPO, "datasets"))
    args = parser.parse_args()
    import torch

    import logging

    import cpcl_plugin  # noqa: F401
    for name in ("fastreid", "cpcl_plugin"):  # the trainers' logs would drown the tables
        quiet = logging.getLogger(name)
        quiet.setLevel(logging.INFO)
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(args.data_root, tmp, pseudo=False)
        trainer_runs, plain_runs = [], []
        # A first epoch in a fresh process runs about 10% faster than any later one (measured:
        # 3.33 steps/s, then 3.03 and 3.02 for the trainer and the plain loop): one discarded
        # warm-up epoch, so that no measured run has that advantage.
        plain_epoch(cfg)
        for r in range(args.repeats):
            # Alternate which loop goes first, so that neither always runs on a warmer process
            # (allocator, caches) or just after the other's loader workers exit.
            for which in (("trainer", "plain") if r % 2 == 0 else ("plain", "trainer")):
                gc.collect()
                torch.manual_seed(r)
                if which == "trainer":
                    seconds, steps, _ = trainer_epoch(config(args.data_root, f"{tmp}/t{r}",
                                                             pseudo=False))
                    trainer_runs.append(steps / seconds)
                else:
                    seconds, plain_steps = plain_epoch(cfg)
                    plain_runs.append(plain_steps / seconds)
            assert plain_steps == steps
        full, steps, pass_seconds = trainer_epoch(config(args.data_root, f"{tmp}/p", pseudo=True))
    best_trainer, best_plain = max(trainer_runs), max(plain_runs)
    print(f"Training steps on configs/CPCL/synthetic.yml ({steps} steps of "
          f"{cfg.SOLVER.IMS_PER_BATCH} pairs per epoch, {torch.get_num_threads()} threads, best of "
          f"{args.repeats} epochs each):\n")
    print("| loop | steps / s | overhead against the plain loop |")
    print("|---|---|---|")
    print(f"| plain PyTorch loop | {best_plain:.3f} | – |")
    print(f"| CPCLTrainer (FastReID loop and hooks) | {best_trainer:.3f} | "
          f"{100 * (best_plain / best_trainer - 1):+.1f}% |")
    epoch = pass_seconds + full
    print(f"\nOne CPCL epoch with pseudo labels: {epoch:.1f} s, of which the pseudo-label pass "
          f"(features of every training image and caption, clustering, OPLM, memory) "
          f"{pass_seconds:.1f} s = {100 * pass_seconds / epoch:.0f}%, and the {steps} steps "
          f"{full:.1f} s.")


if __name__ == "__main__":
    main()
