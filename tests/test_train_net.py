"""tools/train_net.py end to end on the tiny synthetic config: errors, two gloo ranks, resume and
eval-only."""
import os
import re

import pytest

from conftest import AUGMENT, TINY, run_cli_in_process, run_python, run_train_net

from cpcl_plugin import CPCLTrainer, load_config
from cpcl_plugin.modeling import load_trained_model


def _digests(log_text):
    return dict(re.findall(r"Final parameter digest \(rank (\d+)\): (\w+)", log_text))


def _last_results_row(text):
    rows = re.findall(r"^\| SyntheticPedes\s*\|(.*)\|\s*$", text, flags=re.M)
    assert rows, text[-3000:]
    return [float(v) for v in rows[-1].split("|")]


def _assert_one_sentence(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_wrong_config_key_is_named(data_root, tmp_path):
    # In a process of its own, as a user types it: exit status 2 and one line, no traceback.
    proc = run_train_net("--config-file", TINY, "DATASETS.ROOT", data_root, "SOLVER.MAX_EPOHC", "3")
    _assert_one_sentence(proc, "SOLVER.MAX_EPOHC")


def test_wrong_key_in_a_config_file_is_named(tmp_path, capfd):
    bad = tmp_path / "bad.yml"
    bad.write_text(f"_BASE_: {TINY}\nMODEL:\n  CLIPP:\n    ARCH: RN50\n")
    proc = run_cli_in_process(capfd, "--config-file", str(bad))
    _assert_one_sentence(proc, "MODEL.CLIPP", str(bad))


def test_missing_config_file_is_named(tmp_path, capfd):
    proc = run_cli_in_process(capfd, "--config-file", str(tmp_path / "nope.yml"))
    _assert_one_sentence(proc, "nope.yml")


def test_missing_dataset_root_is_named(tmp_path, capfd):
    root = tmp_path / "no-such-root"
    proc = run_cli_in_process(capfd, "--config-file", TINY, "DATASETS.ROOT", str(root),
                              "DATASETS.NAMES", '("CUHKPEDES",)', "DATASETS.TESTS",
                              '("CUHKPEDES",)')
    _assert_one_sentence(proc, str(root / "CUHK-PEDES"), "reid_raw.json")


def test_warmup_longer_than_training_is_named(data_root, tmp_path, capfd):
    proc = run_cli_in_process(capfd, "--config-file", TINY, "DATASETS.ROOT", data_root,
                              "OUTPUT_DIR", str(tmp_path), "SOLVER.WARMUP_ITERS", "100")
    _assert_one_sentence(proc, "SOLVER.WARMUP_ITERS 100", "SOLVER.MAX_EPOCH 2")


@pytest.mark.parametrize("flags, keys, needle", [
    ([], ["MODEL.BACKBONE.NAME", "build_resnet"], "MODEL.BACKBONE.NAME 'build_resnet' is not registered"),
    ([], ["DATASETS.NAMES", '("Market1501",)'], "'Market1501' in DATASETS.NAMES/TESTS is a FastReID"),
    (["--num-gpus", "3"], ["SOLVER.IMS_PER_BATCH", "8"], "SOLVER.IMS_PER_BATCH 8 must be a multiple"),
])
def test_bad_names_and_batch_splits_are_named(data_root, flags, keys, needle, capfd):
    proc = run_cli_in_process(capfd, "--config-file", TINY, *flags, "DATASETS.ROOT", data_root,
                              *keys)
    _assert_one_sentence(proc, needle)


def test_eval_only_without_weights_says_so(data_root, capfd):
    proc = run_cli_in_process(capfd, "--config-file", TINY, "--eval-only", "DATASETS.ROOT",
                              data_root)
    _assert_one_sentence(proc, "MODEL.WEIGHTS")


def test_two_gloo_ranks_end_with_identical_parameters(two_process_run, data_root, tmp_path):
    out = two_process_run
    log0 = (out / "log.txt").read_text()
    log1 = (out / "log.txt.rank1").read_text()
    assert "World size: 2" in log0 and "World size: 2" in log1
    d0, d1 = _digests(log0), _digests(log1)
    assert d0["0"] == d1["1"], (d0, d1)
    # Same pseudo labels and memory on both ranks, after clustering and after the momentum updates.
    for pattern in (r"Pseudo-label digest \(rank \d, epoch 0\): (.*)",
                    r"Memory digest after epoch 0 \(rank \d\): (.*)"):
        m0, m1 = re.findall(pattern, log0), re.findall(pattern, log1)
        assert m0 and m0 == m1, (pattern, m0, m1)
    # Evaluation split over two ranks and gathered equals one process evaluating the same model.
    cfg = load_config(TINY, ["DATASETS.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "eval1"),
                             "MODEL.WEIGHTS", str(out / "model_final.pth")])
    single = CPCLTrainer.test(cfg, load_trained_model(cfg, "this test"))
    keys = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric")  # FastReID's table's columns
    assert [round(single[k], 2) for k in keys] == _last_results_row(log0)


def _linked(run, folder, names):
    """A folder of hard links to some of the shared run's files, for a run to write into."""
    folder.mkdir()
    for name in names:
        os.link(run.out / name, folder / name)
    return folder


def test_resume_continues_from_the_last_checkpoint(trained_run, data_root, tmp_path):
    out, log = trained_run
    # Pretend the run died after epoch 1: its last checkpoint is model_0001.pth.
    resumed = _linked(trained_run, tmp_path / "resumed", ["model_0000.pth", "model_0001.pth"])
    (resumed / "last_checkpoint").write_text("model_0001.pth")
    proc = run_train_net("--config-file", TINY, "--resume", "DATASETS.ROOT", data_root,
                         "OUTPUT_DIR", str(resumed), "SOLVER.MAX_EPOCH", "3", *AUGMENT)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Starting training from epoch 2" in text
    assert (resumed / "model_final.pth").exists()
    # The resumed run ends exactly where the uninterrupted one did: weights and metrics.
    assert _digests((resumed / "log.txt").read_text()) == _digests((out / "log.txt").read_text())
    assert _last_results_row(text) == _last_results_row(log)
    assert "Final parameter digest" not in proc.stdout  # DEBUG: log.txt only


def test_resuming_a_finished_run_says_so(trained_run, data_root, tmp_path):
    out = _linked(trained_run, tmp_path / "finished", ["model_final.pth", "last_checkpoint"])
    proc = run_train_net("--config-file", TINY, "--resume", "DATASETS.ROOT", data_root,
                         "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "3", *AUGMENT)
    _assert_one_sentence(proc, "already finished epoch 3 of SOLVER.MAX_EPOCH 3")


def test_eval_only_reproduces_the_final_evaluation(trained_run, data_root, tmp_path):
    out, log = trained_run
    # As `python -m cpcl_plugin.train` (what tools/train_net.py runs), with its own log lines.
    proc = run_python("-m", "cpcl_plugin.train", "--config-file", TINY, "--eval-only",
                      "DATASETS.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "eval"),
                      "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_results_row(proc.stdout + proc.stderr) == _last_results_row(log)
    assert "Text-to-image results of" in (tmp_path / "eval" / "log.txt").read_text()
