#!/usr/bin/env python
"""Train or evaluate CPCL with FastReID's trainer, evaluator and launcher.

    python tools/train_net.py --config-file configs/CPCL/cuhk.yml
    python tools/train_net.py --config-file configs/CPCL/cuhk.yml --num-gpus 4
    torchrun --nproc_per_node 4 tools/train_net.py --config-file configs/CPCL/cuhk.yml
    srun python tools/train_net.py --config-file configs/CPCL/cuhk.yml    # in an sbatch script
    python tools/train_net.py --config-file configs/CPCL/cuhk.yml --eval-only MODEL.WEIGHTS model.pth
    python tools/train_net.py --config-file configs/CPCL/cuhk.yml --resume

DATASETS.TESTS entries may name a split ("CUHKPEDES:val"); with several, model_best is chosen
on the first one and, after training, evaluated on all of them.

Processes started by torchrun or srun are each one rank already (cpcl_plugin.engine.launch says
how they are recognised): they join the process group their variables describe instead of
spawning, and rank 0 checks the config and prepares data and weights before the others start.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpcl_plugin import CPCLTrainer, ConfigError, DatasetError, compat, load_config  # noqa: E402
from cpcl_plugin.config import check_batch_split, check_schedule  # noqa: E402
from cpcl_plugin.data import build_dataset, parse_test_name  # noqa: E402
from cpcl_plugin.engine.trainer import TrainingDiverged  # noqa: E402
from cpcl_plugin.engine.checkpoint import (check_checkpoint_path, load_model_weights,  # noqa: E402
                                           load_trained_model)
from cpcl_plugin.engine.launch import (Rank0Failed, detect_environment_launch,  # noqa: E402
                                       gpu_shortage, launcher_conflict, run_on_rank0_first,
                                       without_launch_variables)
from cpcl_plugin.modeling.pretrained import ensure_pretrained_weights  # noqa: E402
from fastreid.engine import default_argument_parser, default_setup, launch  # noqa: E402
from fastreid.utils import comm  # noqa: E402
from fastreid.utils.env import seed_all_rng  # noqa: E402
from fastreid.utils.logger import setup_logger  # noqa: E402
from tabulate import tabulate  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.multiprocessing import ProcessExitedException  # noqa: E402

logger = logging.getLogger("cpcl_plugin.train_net")


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
    # Set by run_launched_by_environment: the environment cannot tell it any more, as the
    # process group's variables (RANK, WORLD_SIZE...) are now set whoever launched.
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


def preflight(args, world_size=None):
    """Check config, datasets and weights in the launching process (rank 0 of a torchrun or SLURM
    launch), so that mistakes end with one sentence before any worker starts (and the synthetic
    data are generated only once). `world_size`: the number of processes; by default FastReID's
    launcher's, --num-gpus x --num-machines.
    First every problem of the config and command line, in one message (the values decide which
    data are read or generated); then the datasets, whose message says how to get them."""
    world_size = world_size or args.num_gpus * args.num_machines
    cfg = load_config(args.config_file, args.opts, more_problems=launch_problems(args, world_size))
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
    parser.add_argument("--dist-url", default=default_argument_parser().get_default("dist_url"),
                        help="Address where the processes meet; 'auto' picks a free local port "
                             "(single machine; default: %(default)s).")
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


def configured_device(args):
    """MODEL.DEVICE of the command line's config, or "" where the config has a problem (rank 0's
    preflight then reports it; the backend chosen meanwhile is the same on every rank)."""
    try:
        return load_config(args.config_file, args.opts, check=False).MODEL.DEVICE
    except ConfigError:
        return ""


def run_launched_by_environment(args, launch):
    """The rank `launch` describes (torchrun's or SLURM's process): join the process group, let
    rank 0 run the preflight while the others wait, then train or evaluate in this process.
    Returns the exit status."""
    conflict = launcher_conflict(launch, args.num_gpus, args.num_machines)
    if conflict:
        if launch.rank == 0:  # every rank finds it; one says it
            print(f"error: {conflict}", file=sys.stderr)
        return 2
    # Read by compat.dist_backend(): gloo for CPU runs. Every rank reads the config for it, as
    # the backend is chosen before rank 0's preflight can say anything.
    os.environ["CPCL_DEVICE"] = configured_device(args)
    if compat.dist_backend() == "nccl":
        shortage = gpu_shortage(launch, torch.cuda.device_count())
        if shortage:
            print(f"error: {shortage}", file=sys.stderr)
            return 2
    args.environment_launch = launch  # for the log's first lines (launch_summary)
    with compat.environment_process_group(launch):
        try:
            run_on_rank0_first(lambda: preflight_alone(args, launch.world_size))
        except (ConfigError, DatasetError) as err:  # rank 0
            print(f"error: {err}", file=sys.stderr)
            return 2
        except Rank0Failed as failed:  # the other ranks: rank 0 said why
            return failed.exit_status
        try:
            worker(args)
        except SystemExit as exit_:  # worker() already said why
            return exit_.code
    return 0


def preflight_alone(args, world_size):
    """`preflight` as a process of its own: a pretraining recipe's run (a child train_net.py)
    must not take itself for a rank of this launch. Returns nothing (the config stays here)."""
    with without_launch_variables():
        preflight(args, world_size)


def cli(argv=None):
    args = parse_args(argv)
    try:
        environment_launch = detect_environment_launch()
    except ConfigError as err:  # incomplete launch variables
        print(f"error: {err}", file=sys.stderr)
        return 2
    if environment_launch is not None:
        return run_launched_by_environment(args, environment_launch)
    try:
        cfg = preflight(args)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Read by the launcher's worker (cpcl_plugin.compat) to pick gloo for CPU runs.
    os.environ["CPCL_DEVICE"] = cfg.MODEL.DEVICE
    try:
        launch(worker, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except SystemExit as exit_:  # the single-process case: worker() already said why
        return exit_.code
    except ProcessExitedException as err:  # a launched worker exited; the launcher stopped the rest
        if err.exit_code != 2:  # 2: the worker has already said why, naming its rank
            rank = args.machine_rank * args.num_gpus + err.error_index
            how = f"was killed by {err.signal_name}" if err.signal_name else \
                f"exited with status {err.exit_code}"
            log = os.path.join(cfg.OUTPUT_DIR, "log.txt" + (f".rank{rank}" if rank else ""))
            print(f"error: the process of rank {rank} (pid {err.error_pid}) {how}; the other "
                  f"processes were stopped. Its log: {log}.", file=sys.stderr)
        return err.exit_code if err.exit_code > 0 else 128 - err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
