"""Runs that used to end in tracebacks: epochs of one iteration, divergence, a dead rank, flags
after the overrides."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, run_train_net


def _one_error_line(proc):
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[-1]


def test_epochs_of_one_iteration_train_and_report(data_root, tmp_path):
    # 48 pairs, batches of 48: one iteration per epoch. Leftovers of a killed checkpoint write
    # are removed at the start.
    (tmp_path / "model_0003.pth.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "last_checkpoint.tmp").write_text("model_0003.pth")
    proc = run_train_net("--config-file", TINY, "DATASETS.ROOT", data_root, "OUTPUT_DIR",
                         str(tmp_path), "SOLVER.IMS_PER_BATCH", "48", "SOLVER.MAX_EPOCH", "3",
                         "PSEUDO.START_EPOCH", "1", "TEST.EVAL_BEFORE_TRAIN", "True",
                         "SOLVER.LOG_PERIOD", "1")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert "| after training  | SyntheticPedes |" in text
    assert (tmp_path / "model_final.pth").exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert "Removed 2 file(s) that interrupted checkpoint writes left" in text
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    # The before-training evaluation is the metric curves' first point, at iteration 0.
    assert metrics[0]["iteration"] == 0 and "Rank-1" in metrics[0]
    # loss_itc from the first step, before the prototype losses begin (epoch 1).
    first_step = next(m for m in metrics if "total_loss" in m)
    assert first_step["loss_itc"] == first_step["total_loss"]
    # Every epoch trains at its own rate; the last one above ETA_MIN_LR (0).
    rates = [m["lr"] for m in metrics if "lr" in m]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] > 0


def test_divergence_stops_in_one_sentence_without_a_checkpoint(data_root, tmp_path):
    proc = run_train_net("--config-file", TINY, "DATASETS.ROOT", data_root, "OUTPUT_DIR",
                         str(tmp_path), "SOLVER.BASE_LR", "1000.0",
                         "MODEL.CPCL.LEARN_TEMPERATURE", "True")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert "Training diverged" in line and "at iteration" in line and "SOLVER.BASE_LR" in line
    assert "this run wrote no checkpoint before it" in line
    assert not list(tmp_path.glob("model_*.pth"))


def test_weights_broken_by_the_last_step_are_never_checkpointed(tiny_cfg, tmp_path):
    from cpcl_plugin import CPCLTrainer
    from cpcl_plugin.engine.trainer import TrainingDiverged
    from fastreid.utils.events import EventStorage

    trainer = CPCLTrainer(tiny_cfg())
    trainer.checkpointer.save("model_0000")  # an earlier, good checkpoint
    with EventStorage(0) as trainer.storage:
        trainer.epoch, trainer.iter = 1, 2 * trainer.iters_per_epoch
        with torch.no_grad():
            next(trainer.model.parameters()).view(-1)[0] = float("nan")
        with pytest.raises(TrainingDiverged, match="last good checkpoint is .*model_0000.pth"):
            trainer.after_epoch()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.pth")) == ["model_0000.pth"]


def test_flags_may_follow_the_overrides():
    from cpcl_plugin.train import parse_args
    args = parse_args(["--config-file", "a.yml", "SOLVER.MAX_EPOCH", "3", "--resume",
                       "--num-gpus", "2", "OUTPUT_DIR", "x", "--dist-url=auto"])
    assert args.resume and args.num_gpus == 2 and args.dist_url == "auto"
    assert args.opts == ["SOLVER.MAX_EPOCH", "3", "OUTPUT_DIR", "x"]
    with pytest.raises(SystemExit) as exit_:  # --help too, wherever it stands
        parse_args(["--config-file", "a.yml", "SOLVER.MAX_EPOCH", "3", "--help"])
    assert exit_.value.code == 0


def test_a_killed_rank_is_named(data_root, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
           "--num-gpus", "2", "--dist-url", "auto", "DATASETS.ROOT", data_root,
           "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "50"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        log1 = tmp_path / "log.txt.rank1"
        deadline = time.time() + 240
        while not (log1.exists() and "Starting training" in log1.read_text()):
            assert time.time() < deadline and proc.poll() is None, "rank 1 never started training"
            time.sleep(0.5)
        pid = int(subprocess.run(["pgrep", "-n", "-P", str(proc.pid)], capture_output=True,
                                 text=True).stdout.split()[0])
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "error: the process of rank 1" in stderr and "SIGKILL" in stderr, stderr[-3000:]
    assert "log.txt.rank1" in stderr


def test_only_the_newest_periodic_checkpoints_are_kept(tiny_cfg, tmp_path):
    from cpcl_plugin import CPCLTrainer
    from cpcl_plugin.modeling.pretrained import pretrained_weights_path
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0029.pth").write_bytes(b"an earlier run's later epoch, written before")
    os.utime(out / "model_0029.pth", (1, 1))
    cfg = tiny_cfg("OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "4", "SOLVER.CHECKPOINT_KEEP",
                   "2", "PSEUDO.ENABLED", "False")
    trainer = CPCLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    kept = sorted(p.name for p in out.glob("model_*.pth"))
    # Epochs 0-2 write model_000N.pth, the last one model_final.pth (FastReID's names); the
    # newest written are kept, whatever their epoch numbers.
    assert kept == ["model_0001.pth", "model_0002.pth", "model_best.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text() in kept
    # Bookkeeping, not what a recipe trains: the pretrained cache's name does not change with it.
    recipe = os.path.join(REPO, "tests", "configs", "tiny-pretrain.yml")
    hashes = {pretrained_weights_path(tiny_cfg("MODEL.CLIP.PRETRAINED", str(r))).rsplit("-", 1)[1]
              for r in (recipe, _recipe_keeping(tmp_path, recipe, 5))}
    assert len(hashes) == 1


def _recipe_keeping(folder, recipe, n):
    path = folder / "keeping.yml"
    path.write_text(f"_BASE_: {recipe}\nSOLVER:\n  CHECKPOINT_KEEP: {n}\n")
    return path
