"""A FastReID user's own image re-id project, run with ``cpcl_plugin`` imported: the bag-of-tricks
``Baseline`` (ResNet-18, NaiveIdentitySampler, CE + triplet, AMP on as in FastReID's config) trains
with FastReID's DefaultTrainer on a tiny Market-1501-format set, ReidEvaluator evaluates it (no
Cython module, no compiler needed), the final checkpoint is written and loads back.

The run happens in a child process, as a user's ``train_net.py`` would: FastReID reads its
dataset root (``FASTREID_DATASETS``) when first imported, and a process that FastReID exits must
show up as such. The child dumps the evaluator's features; the metrics are recomputed here with
plain numpy."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKET = "Market-1501-v15.09.15"

# FastReID's configs/Base-bagtricks.yml (ResNet-50, 256x128, 120 epochs), shrunk where noted.
BAGTRICKS_YAML = """\
MODEL:
  META_ARCHITECTURE: Baseline
  BACKBONE:
    NAME: build_resnet_backbone
    NORM: BN
    DEPTH: 18x        # 50x in FastReID's file
    LAST_STRIDE: 1
    FEAT_DIM: 512     # 2048 for 50x
    WITH_IBN: False
    PRETRAIN: False   # no download here
  HEADS:
    NAME: EmbeddingHead
    NORM: BN
    WITH_BNNECK: True
    POOL_LAYER: GlobalAvgPool
    NECK_FEAT: before
    CLS_LAYER: Linear
  LOSSES:
    NAME: ("CrossEntropyLoss", "TripletLoss",)
    CE:
      EPSILON: 0.1
      SCALE: 1.
    TRI:
      MARGIN: 0.3
      HARD_MINING: True
      NORM_FEAT: False
      SCALE: 1.
INPUT:
  SIZE_TRAIN: [64, 32]
  SIZE_TEST: [64, 32]
  REA:
    ENABLED: True
    PROB: 0.5
  FLIP:
    ENABLED: True
  PADDING:
    ENABLED: True
DATALOADER:
  SAMPLER_TRAIN: NaiveIdentitySampler
  NUM_INSTANCE: 2   # 4 with 64 images a batch
  NUM_WORKERS: 2
SOLVER:
  AMP:
    ENABLED: True
  OPT: Adam
  MAX_EPOCH: 2
  BASE_LR: 0.00035
  WEIGHT_DECAY: 0.0005
  WEIGHT_DECAY_NORM: 0.0005
  IMS_PER_BATCH: 8   # 64
  SCHED: MultiStepLR
  STEPS: [1]
  GAMMA: 0.1
  WARMUP_FACTOR: 0.1
  WARMUP_ITERS: 2
  CHECKPOINT_PERIOD: 2
TEST:
  EVAL_PERIOD: 2
  IMS_PER_BATCH: 16
DATASETS:
  NAMES: ("Market1501",)
  TESTS: ("Market1501",)
CUDNN_BENCHMARK: True
"""


def _person(rng, pid, cam):
    """A 32x64 'pedestrian': upper and lower body in its identity's colours (pid 0, the
    distractors, get random ones), on a camera-tinted background, with strong noise: the test
    identities are told apart, but not perfectly."""
    from PIL import Image
    seed = pid if pid > 0 else int(rng.integers(1 << 30))
    colours = np.random.default_rng(seed).integers(60, 200, (2, 3))
    img = np.empty((64, 32, 3))
    img[:] = (40 * cam, 90, 160 - 30 * cam)
    img[8:34, 6:26] = colours[0]
    img[34:60, 8:24] = colours[1]
    img += rng.normal(0, 60, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_market1501(root):
    """A tiny Market-1501 in its official layout and file naming: 8 training identities x 2
    cameras; 5 test identities with one query each (camera 1) and 4 gallery images (cameras
    1-3: camera-1 ones are same-camera matches, which the protocol leaves out), 3 distractors
    (pid 0) and one junk image (pid -1, which FastReID ignores)."""
    rng = np.random.default_rng(0)
    base = os.path.join(root, MARKET)

    def save(folder, pid, cam, frame):
        os.makedirs(os.path.join(base, folder), exist_ok=True)
        name = f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg" if pid >= 0 else f"-1_c{cam}s1_{frame}.jpg"
        _person(rng, pid, cam).save(os.path.join(base, folder, name), quality=95)

    for pid in range(1, 9):
        for cam in (1, 2):
            save("bounding_box_train", pid, cam, 100 * pid + cam)
    for pid in range(101, 106):
        save("query", pid, 1, 100 * pid)
        # 101 has two same-camera images: the queries' ranked lists differ in length
        for seq, cam in enumerate((1, 1, 2, 3) if pid == 101 else (1, 2, 2, 3)):
            save("bounding_box_test", pid, cam, 100 * pid + 10 * cam + seq + 1)
    for seq in range(3):
        save("bounding_box_test", 0, 1 + seq, 5000 + seq)
    save("bounding_box_test", -1, 3, 6000)


def reference_metrics(q_feat, g_feat, q_pids, g_pids, q_cams, g_cams):
    """The Market-1501 protocol (conftest.market1501_reference) on cosine distances, in percent."""
    from conftest import market1501_reference  # here: the child process never needs it
    q = q_feat / np.linalg.norm(q_feat, axis=1, keepdims=True)
    g = g_feat / np.linalg.norm(g_feat, axis=1, keepdims=True)
    dist = 1 - q.astype(np.float64) @ g.astype(np.float64).T
    cmc, ap, inp = market1501_reference(dist, q_pids, g_pids, q_cams, g_cams, (1, 5, 10))
    return {"Rank-1": cmc[0] * 100, "Rank-5": cmc[1] * 100, "Rank-10": cmc[2] * 100,
            "mAP": ap * 100, "mINP": inp * 100}


def child(config_file, out_dir):
    """The user's train_net.py (FastReID's tools/train_net.py), plus a record of what the
    evaluator saw. Runs in a fresh process with FASTREID_DATASETS set."""
    sys.path.insert(0, REPO)
    import cpcl_plugin  # noqa: F401  (the plugin lives in the same environment)
    import torch
    from fastreid.config import get_cfg
    from fastreid.engine import DefaultTrainer, default_argument_parser, default_setup
    from fastreid.evaluation import ReidEvaluator
    from fastreid.utils.checkpoint import Checkpointer
    from fastreid.utils.env import seed_all_rng

    class RecordingEvaluator(ReidEvaluator):
        seen = []

        def process(self, inputs, outputs):
            super().process(inputs, outputs)
            self.seen.append((outputs.float().numpy().copy(), inputs["targets"].numpy().copy(),
                              inputs["camids"].numpy().copy()))

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_dir=None):
            data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
            RecordingEvaluator.seen = []
            RecordingEvaluator.num_query = num_query
            return data_loader, RecordingEvaluator(cfg, num_query, output_dir)

    args = default_argument_parser().parse_args(
        ["--config-file", config_file, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out_dir])
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    seed_all_rng(1)  # default_setup seeds at random; FastReID 1.4 has no SEED key

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    results = trainer.train()
    final_eval = RecordingEvaluator.seen
    feats, pids, cams = (np.concatenate(x) for x in zip(*final_eval))
    np.savez(os.path.join(out_dir, "features.npz"), feats=feats, pids=pids, cams=cams,
             num_query=RecordingEvaluator.num_query)

    # --eval-only, as FastReID's train_net.py does it: a fresh model from the final checkpoint
    # (built from the config.yaml that training wrote, which has the number of classes).
    cfg_final = get_cfg()
    cfg_final.merge_from_file(os.path.join(out_dir, "config.yaml"))
    model = Trainer.build_model(cfg_final)
    Checkpointer(model).load(os.path.join(out_dir, "model_final.pth"))
    trained = dict(trainer.model.named_parameters())
    reloaded = all(torch.equal(v, trained[k]) for k, v in model.named_parameters())
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, start[k])]

    # ReidEvaluator's other options on the reloaded model: re-ranking, query expansion, ROC.
    cfg2 = cfg.clone()
    cfg2.defrost()
    cfg2.TEST.RERANK.ENABLED = True
    cfg2.TEST.RERANK.K1, cfg2.TEST.RERANK.K2 = 6, 3
    cfg2.TEST.AQE.ENABLED = True
    cfg2.TEST.ROC.ENABLED = True
    options = Trainer.test(cfg2, model)

    def floats(d):
        return {k: float(v) for k, v in d.items() if k != "dataset"}

    with open(os.path.join(out_dir, "child.json"), "w") as f:
        json.dump({"results": floats(results), "reloaded": reloaded,
                   "options": floats(options), "changed": changed}, f)


def test_reid_evaluator_in_process_matches_plain_numpy():
    """ReidEvaluator, built in this process without the Cython module: no compiling, no exit,
    and on a gallery shorter than 50 where queries lose different numbers of same-camera items,
    the reference numbers."""
    import torch
    from fastreid.config import get_cfg
    from fastreid.evaluation import ReidEvaluator
    rng = np.random.default_rng(1)
    q_pids, g_pids = np.array([1, 2, 3, 4]), np.array([1, 1, 1, 2, 2, 3, 3, 5, 0, 4, 4, 2])
    q_cams, g_cams = np.zeros(4, int), np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 2])
    feats = rng.normal(size=(16, 8)).astype(np.float32)
    cfg = get_cfg()
    cfg.TEST.ROC.ENABLED = True
    evaluator = ReidEvaluator(cfg, num_query=4)
    pids, cams = np.concatenate([q_pids, g_pids]), np.concatenate([q_cams, g_cams])
    for b in range(0, 16, 6):  # batches, as inference_on_dataset feeds them
        evaluator.process({"targets": torch.from_numpy(pids[b:b + 6]),
                           "camids": torch.from_numpy(cams[b:b + 6])},
                          torch.from_numpy(feats[b:b + 6]))
    results = evaluator.evaluate()
    ref = reference_metrics(feats[:4], feats[4:], q_pids, g_pids, q_cams, g_cams)
    for k, v in ref.items():
        assert results[k] == pytest.approx(v, abs=1e-4), (k, results, ref)
    assert 0 <= results["TPR@FPR=1e-02"] <= 1


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastreid_baseline")
    make_market1501(str(root / "datasets"))
    config = root / "bagtricks_R18.yml"
    config.write_text(BAGTRICKS_YAML)
    out = root / "out"
    env = dict(os.environ, FASTREID_DATASETS=str(root / "datasets"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, __file__, str(config), str(out)], cwd=str(root),
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_baseline_trains_evaluates_and_checkpoints(baseline_run):
    proc, out = baseline_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cython reid evaluation module failed" not in proc.stdout + proc.stderr
    child_out = json.loads((out / "child.json").read_text())
    assert (out / "model_final.pth").is_file()
    # AMP stays on in the config; without CUDA the steps run in float32. The optimiser (over
    # FastReID's ContiguousParams) moved the weights that the checkpoint holds.
    assert {"backbone.conv1.weight", "backbone.layer4.1.conv2.weight"} <= set(child_out["changed"])
    results = child_out["results"]
    for k in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"):
        assert np.isfinite(results[k]) and 0 <= results[k] <= 100, (k, results)

    npz = np.load(out / "features.npz")
    nq = int(npz["num_query"])
    feats, pids, cams = npz["feats"], npz["pids"], npz["cams"]
    assert nq == 5 and len(feats) == 5 + 23  # the junk image (pid -1) is not in the gallery
    ref = reference_metrics(feats[:nq], feats[nq:], pids[:nq], pids[nq:], cams[:nq], cams[nq:])
    for k, v in ref.items():
        assert results[k] == pytest.approx(v, abs=1e-4), (k, results, ref)

    # The final checkpoint loads into a fresh model as the weights that were evaluated.
    assert child_out["reloaded"] is True


def test_reid_evaluator_options_run_on_cpu(baseline_run):
    proc, out = baseline_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    options = json.loads((out / "child.json").read_text())["options"]
    for k in ("Rank-1", "mAP", "mINP"):
        assert np.isfinite(options[k]) and 0 <= options[k] <= 100
    for k in ("TPR@FPR=1e-04", "TPR@FPR=1e-03", "TPR@FPR=1e-02"):
        assert 0 <= options[k] <= 1


def test_environment_table_names_the_installed_fastreid(baseline_run):
    from importlib.metadata import version
    proc, out = baseline_run
    log = (out / "log.txt").read_text()
    row = next(line for line in log.splitlines() if line.startswith("fastreid"))
    assert row.split()[1] == version("fastreid"), row


if __name__ == "__main__":
    child(*sys.argv[1:])
