"""Each FastReID compat patch: the broken path works after `import cpcl_plugin`, and each patch is
feature-detected (it reports nothing to do once the problem is gone)."""
import collections
import importlib
import logging
import os
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import market1501_reference
from cpcl_plugin import compat


def test_collections_aliases_let_fastreid_import():
    assert collections.Mapping is collections.abc.Mapping
    from fastreid.evaluation.testing import flatten_results_dict
    assert flatten_results_dict({"a": {"b": 1.0}}) == {"a/b": 1.0}
    assert compat.stack._patch_collections() is False  # already fixed: nothing to do


def test_torch_six_stand_in_serves_fastreid_collate():
    from fastreid.data.build import fast_batch_collator
    batch = fast_batch_collator([{"x": torch.ones(2), "path": "a"}, {"x": torch.zeros(2), "path": "b"}])
    assert batch["path"] == ["a", "b"]  # the string_classes branch from torch._six
    assert torch.equal(batch["x"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert compat.stack._patch_torch_six() is False


def test_numpy_bool_patch_restores_the_alias(monkeypatch):
    monkeypatch.delattr(np, "bool", raising=False)
    assert compat.stack._patch_numpy_bool() is True
    assert np.bool is bool
    assert compat.stack._patch_numpy_bool() is False


def test_cuhk03_metric_path_uses_np_bool_and_runs():
    from fastreid.evaluation.rank import evaluate_rank
    rng = np.random.default_rng(0)
    dist = rng.random((6, 12))
    q, g = np.arange(6) % 3, np.arange(12) % 3
    cmc, mAP = evaluate_rank(dist, q, g, np.zeros(6, int), np.ones(12, int), max_rank=5,
                             use_metric_cuhk03=True, use_cython=False)
    assert len(cmc) == 3 and cmc[-1] == 1.0 and 0 < mAP <= 1  # 3 gallery ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path of DataLoaderX")
def test_dataloaderx_runs_without_cuda():
    assert "dataloaderx_cpu" in compat.applied()
    from fastreid.data.build import fast_batch_collator
    from fastreid.data.data_utils import DataLoaderX
    data = [{"x": torch.full((2,), float(i))} for i in range(10)]
    loader = DataLoaderX(0, dataset=data, batch_size=4, collate_fn=fast_batch_collator)
    batches = [b["x"][:, 0].tolist() for b in loader]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(b["x"]) for b in loader] == [4, 4, 2]  # a second pass works too
    assert compat.loop._patch_dataloaderx() is False


def _all_reduce_worker(out_dir):
    import os
    import torch.distributed as dist
    from fastreid.utils import comm
    t = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(t)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}"), "w") as f:
        f.write(f"{dist.get_backend()} {t.item()} {comm.get_local_size()}")


def test_launch_uses_gloo_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CPCL_DEVICE", "cpu")
    assert compat.dist_backend() == "gloo"
    from fastreid.engine import launch
    launch(_all_reduce_worker, 2, dist_url="auto", args=(str(tmp_path),))
    for r in range(2):
        assert (tmp_path / f"rank{r}").read_text() == "gloo 3.0 2"
    launch_mod = importlib.import_module("fastreid.engine.launch")
    assert launch_mod._distributed_worker is compat.launching._distributed_worker
    assert compat.launching._patch_launch() is False


def test_typed_storage_warning_is_silenced():
    from fastreid.data.transforms import ToTensor
    from PIL import Image
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        compat.stack._quiet_typed_storage_warning()
        t = ToTensor()(Image.new("RGB", (4, 2), (255, 0, 0)))
    assert t.shape == (3, 2, 4) and t[0].max() == 255  # FastReID keeps 0-255 pixels
    assert not [w for w in caught if "TypedStorage" in str(w.message)]


def test_import_without_fastreid_says_how_to_install(tmp_path):
    import subprocess
    code = ("import importlib.util, sys; real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'fastreid' else real(n, *a)\n"
            "import cpcl_plugin")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), env={"PYTHONPATH": compat.__file__.rsplit("/cpcl_plugin", 1)[0]})
    assert proc.returncode != 0
    assert "pip install --no-deps fastreid==1.4.0" in proc.stderr


@pytest.mark.parametrize("missing", [("torch",), ("torch", "fastreid")])
def test_import_from_an_interpreter_without_torch_points_to_the_environment(tmp_path, missing):
    # An interpreter outside .venv has neither: installing FastReID alone would not help.
    import subprocess
    code = ("import importlib.util, sys; real = importlib.util.find_spec\n"
            f"importlib.util.find_spec = lambda n, *a: None if n in {missing!r} else real(n, *a)\n"
            "import cpcl_plugin")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=str(tmp_path), env={"PYTHONPATH": compat.__file__.rsplit("/cpcl_plugin", 1)[0]})
    assert proc.returncode != 0 and "--no-deps" not in proc.stderr
    assert f"which this interpreter ({sys.executable}) does not have: run the project with " \
           f".venv/bin/python" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning exists only without CUDA")
def test_cuda_home_warning_is_quiet_on_cpu(caplog):
    assert "cuda_home_warning" in compat.applied()
    from fastreid.utils.collect_env import collect_env_info
    with caplog.at_level(logging.WARNING):
        assert "PyTorch" in collect_env_info()
    assert not [r for r in caplog.records if "No CUDA runtime" in r.getMessage()]


def _sgd_cfg():
    from fastreid.config import get_cfg
    cfg = get_cfg()
    cfg.SOLVER.OPT = "SGD"
    cfg.SOLVER.BASE_LR = 0.1
    return cfg


def test_contiguous_params_optimizer_updates_the_weights():
    """FastReID's default build_optimizer (ContiguousParams) trains exactly like the plain one;
    unpatched, torch >= 2 leaves the weights unchanged."""
    from fastreid.solver import build_optimizer
    weights = {}
    for contiguous in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        # DefaultTrainer's call (ContiguousParams), and the plain one
        optimizer, _ = build_optimizer(_sgd_cfg(), model, **({} if contiguous else
                                                              {"contiguous": False}))
        start = model[0].weight.detach().clone()
        for step in range(3):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
        assert not torch.equal(model[0].weight, start)
        weights[contiguous] = model[0].weight.detach().clone()
    assert torch.allclose(weights[True], weights[False], atol=1e-6)
    assert compat.reid_projects._patch_contiguous_params() is False


def test_amp_trainer_trains_a_cpu_model_in_float32(caplog):
    from fastreid.engine.train_loop import AMPTrainer
    from fastreid.solver import build_optimizer
    from fastreid.utils.events import EventStorage

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 1)

        def forward(self, batch):
            return {"loss": (self.fc(batch["x"]) - batch["y"]).pow(2).mean()}

    torch.manual_seed(0)
    model = Model()
    data = [{"x": torch.randn(8, 4), "y": torch.zeros(8, 1)}] * 3
    optimizer, params = build_optimizer(_sgd_cfg(), model)
    trainer = AMPTrainer(model, data, optimizer, params)
    start = model.fc.weight.detach().clone()
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING):
        for i in range(2):
            storage.iter = trainer.iter = i
            trainer.run_step()
    assert not torch.equal(model.fc.weight, start)
    assert model.fc.weight.dtype == torch.float32
    assert [r for r in caplog.records if "trains in float32" in r.getMessage()]
    assert compat.reid_projects._patch_amp_trainer() is False


def test_default_trainers_ddp_takes_a_cpu_model(tmp_path):
    import torch.distributed as dist
    from fastreid.engine import defaults
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        # what DefaultTrainer.__init__ does when the world is larger than one process
        ddp = defaults.DistributedDataParallel(torch.nn.Linear(3, 2), device_ids=[0])
        ddp(torch.ones(4, 3)).sum().backward()
        assert ddp.module.weight.grad is not None
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    finally:
        compat.leave_process_group()
    assert compat.reid_projects._patch_ddp_device_ids() is False


def test_python_rank_evaluation_handles_a_short_gallery():
    """Fewer gallery items than max_rank, queries losing different numbers of same-camera items:
    FastReID's Python evaluation raised (ragged CMC rows); it now equals a plain computation,
    with the CMC flat at its last value past the end of a query's list."""
    from fastreid.evaluation.rank import evaluate_rank
    rng = np.random.default_rng(3)
    q_pids, g_pids = np.array([1, 2, 3, 4]), np.array([1, 1, 1, 2, 2, 3, 3, 5, 5, 0, 0, 4])
    q_cams, g_cams = np.zeros(4, int), np.array([0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1])
    dist = rng.random((4, 12)).astype(np.float32)
    cmc, all_ap, all_inp = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, use_cython=False)
    assert len(cmc) == 12 and np.all(np.diff(cmc) >= 0) and cmc[-1] == 1.0
    ranks = (1, 2, 5, 9, 10, 12)
    ref_cmc, ref_map, ref_minp = market1501_reference(dist, q_pids, g_pids, q_cams, g_cams, ranks)
    np.testing.assert_allclose([cmc[k - 1] for k in ranks], ref_cmc, atol=1e-6)
    assert np.mean(all_ap) == pytest.approx(ref_map) and np.mean(all_inp) == pytest.approx(ref_minp)
    assert compat.reid_projects._patch_rank_short_gallery() is False


def test_python_rank_evaluation_is_fastreids_on_a_full_gallery():
    """Where FastReID's own Python loop works (every list at least max_rank long), the patched
    one gives its numbers exactly."""
    import importlib.util
    import fastreid
    path = os.path.join(os.path.dirname(fastreid.__file__), "evaluation", "rank.py")
    spec = importlib.util.spec_from_file_location("fastreid_rank_unpatched", path)
    unpatched = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec.loader.exec_module(unpatched)  # a fresh copy of FastReID's module, not rebound
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 20, 30), rng.integers(0, 20, 200)
    q_cams, g_cams = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    dist = rng.random((30, 200)).astype(np.float32)
    ours = compat.eval_market1501(dist, q_pids, g_pids, q_cams, g_cams, 50)
    theirs = unpatched.eval_market1501(dist, q_pids, g_pids, q_cams, g_cams, 50)
    assert np.array_equal(ours[0], theirs[0])
    assert np.array_equal(ours[1], theirs[1]) and np.array_equal(ours[2], theirs[2])
    assert compat.reid_projects._short_gallery_breaks(unpatched.eval_market1501)


def test_rerank_jaccard_distance_runs_on_cpu():
    if "jaccard_cpu" not in compat.applied():
        pytest.skip("CUDA and faiss-GPU are here: FastReID's GPU search is used")
    from fastreid.utils.compute_dist import build_dist, compute_jaccard_distance
    torch.manual_seed(0)
    q, g = torch.randn(5, 8), torch.randn(9, 8)
    dist = build_dist(q, g, metric="jaccard", k1=4, k2=2)  # ReidEvaluator's TEST.RERANK call
    full = compute_jaccard_distance(torch.cat([q, g]), k1=4, k2=2, search_option=3)
    assert dist.shape == (5, 9) and np.array_equal(dist, full[:5, 5:])
    assert ((dist >= 0) & (dist <= 1)).all()
    assert compat.reid_projects._patch_jaccard_cpu() is False


def test_verify_results_raises_instead_of_exiting():
    from fastreid.config import get_cfg
    from fastreid.evaluation import verify_results
    cfg = get_cfg()
    cfg.TEST.EXPECTED_RESULTS = [["Market1501", "mAP", 80.0, 1.0]]
    assert verify_results(cfg, {"Market1501": {"mAP": 80.5}}) is True
    with pytest.raises(compat.ResultsVerificationError):
        verify_results(cfg, {"Market1501": {"mAP": 50.0}})
    assert compat.reid_projects._patch_verify_results() is False


def test_environment_table_shows_the_installed_fastreid():
    from importlib.metadata import version
    import fastreid
    from fastreid.utils.collect_env import collect_env_info
    assert fastreid.__version__ == version("fastreid")
    row = next(line for line in collect_env_info().splitlines() if line.startswith("fastreid"))
    assert row.split()[1] == version("fastreid")
    assert compat.loop._patch_fastreid_version() is False


def test_metric_printer_written_twice_at_one_iteration_prints_once(caplog):
    """PeriodicWriter writes after a step and after the epoch; with one-iteration epochs that is
    the same iteration, where FastReID's printer divided by zero."""
    from fastreid.utils.events import CommonMetricPrinter, EventStorage
    printer = CommonMetricPrinter(max_iter=10)
    with caplog.at_level("INFO", logger="fastreid.utils.events"), EventStorage(0) as storage:
        storage.epoch = 0
        storage.put_scalar("lr", 0.1)
        printer.write()
        printer.write()
        storage.iter = 1
        printer.write()
    assert [r.getMessage().count("epoch/iter") for r in caplog.records] == [1, 1]
    assert compat.loop._patch_metric_printer() is False
