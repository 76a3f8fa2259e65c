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
    _assert_one_sentence(proc, f"--resume: {out} holds a run that has trained 3 epochs (epochs "
                               f"0 to 2), which is all of SOLVER.MAX_EPOCH 3: raise "
                               f"SOLVER.MAX_EPOCH to train on")


def _folder_state(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.name.endswith(".yaml") else None)
            for p in folder.iterdir()}


@pytest.mark.parametrize("change, key, what", [
    (["MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.DEPTH", "18x"],
     "MODEL.BACKBONE.DEPTH '50x', and this config has '18x' (and 1 more: "
     "MODEL.BACKBONE.NAME)", "model"),
    (["MODEL.CLIP.ARCH", "RN50"], "MODEL.CLIP.ARCH 'CPCL-Tiny'", "model"),
    (["DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "16"], "DATASETS.SYNTHETIC.NUM_TRAIN_IDS 12, and this "
     "config has 16", "data"),
    (["INPUT.SIZE_TRAIN", "[96, 48]", "INPUT.SIZE_TEST", "[96, 48]"], "INPUT.SIZE_TRAIN", "model"),
    (["SOLVER.MAX_EPOCH", "2"], "has trained 2 epochs (epochs 0 to 1), which is all of "
     "SOLVER.MAX_EPOCH 2", None),
])
def test_a_refused_resume_says_why_and_leaves_the_folder_as_it_was(trained_run, data_root,
                                                                   tmp_path, capfd, change, key,
                                                                   what):
    # The run died after epoch 1 (0-based) of 3; resumed with a change that cannot continue it.
    out = _linked(trained_run, tmp_path / "run", ["model_0000.pth", "model_0001.pth",
                                                   "config.yaml", "log.txt"])
    (out / "last_checkpoint").write_text("model_0001.pth")
    before = _folder_state(out)
    proc = run_cli_in_process(capfd, "--config-file", TINY, "--resume", "DATASETS.ROOT",
                              data_root, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "3",
                              *AUGMENT, *change)
    _assert_one_sentence(proc, "--resume: ", key)
    if what:
        assert f"its checkpoint cannot continue with another {what}: resume with the settings " \
               f"in {out / 'config.yaml'}, or train into a new OUTPUT_DIR (MODEL.WEIGHTS " \
               f"{out / 'model_0001.pth'} starts from its weights)." in proc.stderr
    assert _folder_state(out) == before  # nothing written, config.yaml included


def test_a_resume_with_another_schedule_goes_on_and_says_what_changed(trained_run, data_root,
                                                                     tmp_path):
    out = _linked(trained_run, tmp_path / "run", ["model_0000.pth", "model_0001.pth",
                                                   "config.yaml"])
    (out / "last_checkpoint").write_text("model_0001.pth")
    proc = run_train_net("--config-file", TINY, "--resume", "DATASETS.ROOT", data_root,
                         "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "4", "SOLVER.BASE_LR",
                         "0.0005", "TEST.EVAL_PERIOD", "2", *AUGMENT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "--resume: SOLVER.MAX_EPOCH was 3 in the interrupted run and is 4 now; the run goes on " \
           "with the new value (the learning-rate schedule follows the new value from the " \
           "resumed epoch on" in log
    assert "--resume: SOLVER.BASE_LR was 0.0003 in the interrupted run and is 0.0005 now" in log
    assert "--resume: TEST.EVAL_PERIOD was 1 in the interrupted run and is 2 now; the run goes " \
           "on with the new value." in log
    # Only the data's location may differ (the shared run may come from another test worker).
    noted = [l.split("--resume: ", 1)[1].split()[0] for l in log.splitlines() if "--resume: " in l]
    assert set(noted) - {"DATASETS.ROOT"} == {"SOLVER.MAX_EPOCH", "SOLVER.BASE_LR",
                                               "TEST.EVAL_PERIOD"}
    assert (out / "model_final.pth").exists()


def test_a_library_resume_into_another_model_is_one_sentence(trained_run, tiny_cfg, tmp_path):
    from cpcl_plugin import ConfigError
    out = _linked(trained_run, tmp_path / "run", ["model_0001.pth"])
    (out / "last_checkpoint").write_text("model_0001.pth")
    cfg = tiny_cfg("OUTPUT_DIR", str(out), "MODEL.CLIP.ARCH", "RN50", "INPUT.SIZE_TRAIN",
                   "[64, 64]", "INPUT.SIZE_TEST", "[64, 64]", "SOLVER.MAX_EPOCH", "3")
    trainer = CPCLTrainer(cfg)
    with pytest.raises(ConfigError, match=r"--resume: .*model_0001.pth does not match the model "
                                          r"this config builds \(.*\): resume with the config it "
                                          r"was trained with"):
        trainer.resume_or_load(resume=True)


def test_eval_only_reproduces_the_final_evaluation(trained_run, data_root, tmp_path):
    out, log = trained_run
    # As `python -m cpcl_plugin.train` (what tools/train_net.py runs), with its own log lines.
    proc = run_python("-m", "cpcl_plugin.train", "--config-file", TINY, "--eval-only",
                      "DATASETS.ROOT", data_root, "OUTPUT_DIR", str(tmp_path / "eval"),
                      "MODEL.WEIGHTS", str(out / "model_final.pth"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_results_row(proc.stdout + proc.stderr) == _last_results_row(log)
    assert "Text-to-image results of" in (tmp_path / "eval" / "log.txt").read_text()


def _interrupted_run(folder, cfg, edit_saved=None):
    """A folder as a run of `cfg` leaves it after epoch 0: its config.yaml (changed by
    `edit_saved`, a function of the config) and a checkpoint."""
    import torch
    saved = cfg.clone()
    saved.defrost()
    if edit_saved:
        edit_saved(saved)
    (folder / "config.yaml").write_text(saved.dump())
    torch.save({"epoch": 0, "model": {}}, folder / "model_0000.pth")
    (folder / "last_checkpoint").write_text("model_0000.pth")


def test_a_resume_of_a_run_from_an_older_version_takes_new_keys_as_their_defaults(tmp_path,
                                                                                  tiny_cfg):
    from cpcl_plugin.engine.resume import check_resume

    def older_version(saved):  # as if these keys came with a later version
        del saved.MODEL.CLIP["GRAD_CHECKPOINTING"]
        del saved.DATASETS.SYNTHETIC["PRESET"]
        del saved.SOLVER["CHECKPOINT_KEEP"]
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "3")
    _interrupted_run(tmp_path, cfg, older_version)
    # At their defaults (GRAD_CHECKPOINTING False, PRESET ""), nothing to say; the tiny config
    # keeps 3 checkpoints where the default keeps all: said, and no schedule consequence.
    assert check_resume(cfg) == ["--resume: SOLVER.CHECKPOINT_KEEP was 0 in the interrupted run "
                                 "and is 3 now; the run goes on with the new value."]


def test_a_resume_refuses_only_what_its_checkpoint_cannot_continue(tmp_path, tiny_cfg):
    from cpcl_plugin import ConfigError
    from cpcl_plugin.engine.resume import check_resume
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "3")
    _interrupted_run(tmp_path, cfg)
    # The project's own advice after a bad image or out of memory, other loss weights: choices,
    # each said.
    choices = tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "3",
                       "DATASETS.SKIP_BAD_IMAGES", "True", "MODEL.CLIP.GRAD_CHECKPOINTING",
                       "True", "MODEL.CPCL.CROSS_WEIGHT", "0.5")
    said = check_resume(choices)
    assert [line.split()[1] for line in said] == ["DATASETS.SKIP_BAD_IMAGES",
                                                  "MODEL.CLIP.GRAD_CHECKPOINTING",
                                                  "MODEL.CPCL.CROSS_WEIGHT"]
    assert not any("learning-rate" in line for line in said)
    for change in (["MODEL.CLIP.CONTEXT_LENGTH", "32"], ["DATASETS.NAMES", '("CUHKPEDES",)'],
                   ["DATASETS.SYNTHETIC.SEED", "3"]):
        with pytest.raises(ConfigError, match=f"--resume: .* trained with {change[0]} "):
            check_resume(tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "3",
                                  *change))


def test_a_resume_says_which_saved_keys_this_version_no_longer_has(tmp_path, tiny_cfg):
    from cpcl_plugin.engine.resume import check_resume

    def from_another_version(saved):
        saved.DATASETS.SYNTHETIC.set_new_allowed(True)
        saved.DATASETS.SYNTHETIC.RETIRED_KEY = 7
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "3", "SOLVER.CHECKPOINT_KEEP",
                   "0")
    _interrupted_run(tmp_path, cfg, from_another_version)
    assert check_resume(cfg) == ["--resume: DATASETS.SYNTHETIC.RETIRED_KEY (7 in the interrupted "
                                 "run) is not a key of this version; it is ignored."]
