"""Train or evaluate CPCL with FastReID's trainer, evaluator and launcher: the command line that
tools/train_net.py runs, also ``python -m cpcl_plugin.train``.

    python -m cpcl_plugin.train --config-file configs/CPCL/cuhk.yml [--num-gpus 4] [KEY VALUE ...]

DATASETS.TESTS entries may name a split ("CUHKPEDES:val"); with several, model_best is chosen on
the first one and, after training, evaluated on all of them. engine/launch.py starts the
processes (FastReID's launcher, or each one started by torchrun or srun); `preflight` checks the
config, the datasets and the pretrained weights once before any of them trains.
"""
import argparse
import logging
import os
import sys

import torch.distributed as dist
from fastreid.engine import default_setup
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger
from tabulate import tabulate

from .config import check_batch_split, load_config
from .data import build_dataset, parse_test_name
from .engine.launch import launch_run
from .engine.pretraining import ensure_pretrained_weights
from .engine.resume import check_resume
from .engine.schedule import check_schedule
from .engine.trainer import CPCLTrainer, TrainingDiverged
from .errors import ConfigError, DatasetError
from .modeling.build import load_trained_model
from .utils.checkpoint import check_checkpoint_path, load_model_weights

__all__ = ["cli", "main", "preflight", "parse_args", "argument_parser", "results_table",
           "pseudo_label_table"]

# Named, not __name__: run as `python -m cpcl_plugin.train`, __name__ is "__main__", outside
# the cpcl_plugin logger that setup_logger gives a console and log.txt.
logger = logging.getLogger("cpcl_plugin.train")


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cpcl_plugin",
                 abbrev_name="cpcl")
    # The console shows INFO and above; log.txt keeps DEBUG too (digests for comparing runs).
    for name in ("fastreid", "cpcl_plugin"):
        for handler in logging.getLogger(name).handlers:
            if getattr(handler, "stream", None) is sys.stdout:
                handler.setLevel(logging.INFO)
    summary = launch_summary(args)
    if summary:
        logger.info(summary)
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())
    return cfg


def launch_summary(args):
    """The log line naming the launcher that started this process, its rank and its machine's
    share as FastReID's comm helpers see them, e.g. "Launched by torchrun: rank 1 of 2 (local
    rank 1 of 2), gloo, master 127.0.0.1:29500"; None for a single process."""
    if comm.get_world_size() == 1:
        return None
    # Set by engine/launch.py for torchrun and SLURM: the environment cannot tell it any more,
    # as the process group's variables (RANK, WORLD_SIZE...) are now set whoever launched.
    environment_launch = getattr(args, "environment_launch", None)
    if environment_launch is None:
        launcher, meeting = "FastReID's launcher", f"--dist-url {args.dist_url}"
    else:
        launcher = environment_launch.launcher
        meeting = f"master {environment_launch.master_addr}:{environment_launch.master_port}"
    return (f"Launched by {launcher}: rank {comm.get_rank()} of {comm.get_world_size()} (local "
            f"rank {comm.get_local_rank()} of {comm.get_local_size()}), {dist.get_backend()}, "
            f"{meeting}")


def results_table(rows, dataset_names):
    """A Markdown table of evaluation results: one row per (label, dataset). FastReID's `test`
    returns one dataset's metrics directly, several datasets' as {name: metrics}."""
    keys = ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"]
    lines = []
    for label, results in rows:
        per_dataset = results if len(dataset_names) > 1 else {dataset_names[0]: results}
        for name in dataset_names:
            lines.append([label, name] + [per_dataset[name][k] for k in keys])
    return tabulate(lines, headers=["model", "dataset", "R1", "R5", "R10", "mAP", "mINP"],
                    tablefmt="pipe", floatfmt=".2f")


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = load_trained_model(cfg, "--eval-only")
        results = CPCLTrainer.test(cfg, model)
        if comm.is_main_process():
            logger.info("Text-to-image results of %s:\n%s", cfg.MODEL.WEIGHTS,
                        results_table([("evaluated", results)], cfg.DATASETS.TESTS))
        return results

    for note in getattr(args, "resume_notes", []):
        logger.warning(note)
    trainer = CPCLTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    rows = [("before training", trainer.initial_eval_results)] \
        if trainer.initial_eval_results else []
    rows.append(("after training", results))
    rows += evaluate_selected_checkpoint(cfg, trainer.model)
    if comm.is_main_process():
        history = trainer.pseudo_label_hook.quality_history
        if history:
            logger.info("Pseudo labels of each clustering epoch (monitoring: compared with the "
                        "identity labels, which training never reads):\n%s",
                        pseudo_label_table(history))
        logger.info("Text-to-image results:\n%s", results_table(rows, cfg.DATASETS.TESTS))
        best = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
        if os.path.isfile(best):
            logger.info(f"Best checkpoint by {cfg.DATASETS.TESTS[0]}'s metric: {best}; the last: "
                        f"{os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}")
    return results


def pseudo_label_table(history):
    """A Markdown table of the PseudoLabelHook's quality_history: one row per clustering epoch."""
    lines = [[h["epoch"], h["image_clusters"], h["image_outliers"],
              100 * h["image"]["precision"], 100 * h["image"]["recall"], h["image"]["ari"],
              h["text_clusters"], 100 * h["text"]["precision"], 100 * h["text"]["recall"],
              h["text"]["ari"]] for h in history]
    return tabulate(lines, headers=["epoch", "image clusters", "outliers", "image P %",
                                    "image R %", "image ARI", "caption clusters", "caption P %",
                                    "caption R %", "caption ARI"],
                    tablefmt="pipe",
                    floatfmt=("", "", "", ".1f", ".1f", ".3f", "", ".1f", ".1f", ".3f"))


def evaluate_selected_checkpoint(cfg, model):
    """With several DATASETS.TESTS entries, FastReID keeps as model_best the checkpoint with the
    best metric on the first one (e.g. CUHKPEDES:val): evaluate it on all of them (e.g. report
    its CUHKPEDES:test numbers). Returns [(row label, results)], empty with a single entry."""
    path = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
    if len(cfg.DATASETS.TESTS) < 2:
        return []
    comm.synchronize()  # rank 0 has written it
    # Every process must see rank 0's file (a shared OUTPUT_DIR), or none evaluates it.
    stat = os.stat(path) if os.path.isfile(path) else None
    seen = comm.all_gather(stat and (stat.st_size, stat.st_mtime_ns))
    if seen[0] is None:
        return []
    if any(s != seen[0] for s in seen):
        if comm.is_main_process():
            logger.warning(f"{path} is not visible to every process (OUTPUT_DIR is not shared "
                           f"between the machines): evaluate it with --eval-only MODEL.WEIGHTS.")
        return []
    extra = load_model_weights(model, path)
    # Epochs count from 0, as in FastReID's log and checkpoint names (model_0000.pth: epoch 0).
    label = f"best on {cfg.DATASETS.TESTS[0]} (epoch {int(extra.get('epoch', -1))})"

    return [(label, CPCLTrainer.test(cfg, model))]


def launch_problems(args, world_size):
    """The problems of the command line with a config (one sentence each): what --eval-only
    needs, MODEL.WEIGHTS, and the batch split over the `world_size` processes."""
    def problems(cfg):
        found = []
        if args.eval_only and not cfg.MODEL.WEIGHTS:
            found.append("--eval-only needs a checkpoint: add MODEL.WEIGHTS path/to/model.pth.")
        checks = [lambda: check_batch_split(cfg, world_size)]
        if cfg.MODEL.WEIGHTS:
            checks.append(lambda: check_checkpoint_path(cfg.MODEL.WEIGHTS))
        for check in checks:
            try:
                check()
            except ConfigError as err:
                found.append(str(err))
        return found
    return problems


def preflight(args, world_size):
    """Check config, datasets and weights in the launching process (rank 0 of a torchrun or SLURM
    launch), so that mistakes end with one sentence before any worker starts (and the synthetic
    data are generated only once). `world_size`: the number of processes.
    First every problem of the config and command line, in one message (the values decide which
    data are read or generated); then the datasets, whose message says how to get them."""
    cfg = load_config(args.config_file, args.opts, more_problems=launch_problems(args, world_size))
    # Before anything is written to OUTPUT_DIR: a refused resume leaves it as it was. What
    # differs from the interrupted run is logged once the run's log exists (main).
    args.resume_notes = check_resume(cfg) if args.resume and not args.eval_only else []
    datasets, num_pairs = {}, 0
    for name in cfg.DATASETS.NAMES:
        datasets[name] = build_dataset(cfg, name)
        num_pairs += sum(len(r.captions) for r in datasets[name].split("train"))
    for entry in cfg.DATASETS.TESTS:
        name, split = parse_test_name(entry)
        if name not in datasets:
            datasets[name] = build_dataset(cfg, name)
        datasets[name].split(split)
    batch = check_batch_split(cfg, world_size) * world_size
    if num_pairs < batch:
        raise ConfigError(f"The training set has {num_pairs} image-caption pairs, fewer than one "
                          f"batch (SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}).")
    if not args.eval_only:
        check_schedule(cfg, num_pairs // batch)
        # A pretraining config in MODEL.CLIP.PRETRAINED: its weights are made here, once, before
        # any worker starts (every rank then loads the cached file).
        ensure_pretrained_weights(cfg)
    return cfg


def worker(args):
    """`main` in a launched process: a config or data error found there ends that process with
    its one sentence (exit status 2) rather than a traceback."""
    try:
        return main(args)
    except (ConfigError, DatasetError, TrainingDiverged) as err:
        where = f" (rank {comm.get_rank()})" if comm.get_world_size() > 1 else ""
        print(f"error{where}: {err}", file=sys.stderr)
        sys.exit(2)


def argument_parser():
    """FastReID's launcher options (the same names and defaults), each with a sentence."""
    parser = argparse.ArgumentParser(
        description="Train CPCL, or evaluate a trained model, with FastReID's trainer and "
                    "launcher. Flags may come before or after the KEY VALUE overrides.")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="YAML config to train or evaluate, e.g. configs/CPCL/synthetic.yml "
                             "(required).")
    parser.add_argument("--resume", action="store_true",
                        help="Continue from OUTPUT_DIR's last checkpoint (its last_checkpoint "
                             "file) instead of starting from MODEL.WEIGHTS (default: off).")
    parser.add_argument("--eval-only", action="store_true",
                        help="Only evaluate the checkpoint in MODEL.WEIGHTS on DATASETS.TESTS "
                             "(default: off).")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="Processes to start on this machine, one per GPU (on CPU: gloo "
                             "processes; not under torchrun or srun, which start them "
                             "themselves; default: %(default)s).")
    parser.add_argument("--num-machines", type=int, default=1,
                        help="Machines taking part in the run (default: %(default)s).")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="This machine's rank among --num-machines, from 0 (default: "
                             "%(default)s).")
    # Not FastReID's default (a fixed port per user): two runs on one machine would meet there.
    parser.add_argument("--dist-url", default="auto",
                        help="Address where the processes meet: 'auto' (default) picks a free "
                             "local port, named in the log; several machines need "
                             "tcp://<machine 0's address>:<port>.")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="Config overrides, e.g. SOLVER.MAX_EPOCH 10 OUTPUT_DIR logs/run2.")
    return parser


def parse_args(argv=None):
    """The command line, with flags accepted after the KEY VALUE overrides too (argparse would
    take a trailing --resume as an override)."""
    parser = argument_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    overrides, moved, i = [], [], 0
    while i < len(args.opts):
        token = args.opts[i]
        action = parser._option_string_actions.get(token.split("=", 1)[0])
        if action is None:
            overrides.append(token)
            i += 1
            continue
        takes_value = action.nargs != 0 and "=" not in token
        moved += args.opts[i:i + 1 + takes_value]
        i += 1 + takes_value
    if not moved:
        return args
    head = argv[:len(argv) - len(args.opts)]
    return parser.parse_args(head + moved + overrides)


def cli(argv=None):
    """The command line's exit status: 0, 2 for a problem it names in one sentence, else that of
    the process that failed."""
    return launch_run(parse_args(argv), preflight, worker)


if __name__ == "__main__":
    sys.exit(cli())
