"""Each FastReID compat patch: the broken path works after `import cpcl_plugin`, and each patch is
feature-detected (it reports nothing to do once the problem is gone)."""
import collections
import importlib
import logging
import sys
import warnings

import numpy as np
import pytest
import torch

from cpcl_plugin import compat


def test_collections_aliases_let_fastreid_import():
    assert collections.Mapping is collections.abc.Mapping
    from fastreid.evaluation.testing import flatten_results_dict
    assert flatten_results_dict({"a": {"b": 1.0}}) == {"a/b": 1.0}
    assert compat._patch_collections() is False  # already fixed: nothing to do


def test_torch_six_stand_in_serves_fastreid_collate():
    from fastreid.data.build import fast_batch_collator
    batch = fast_batch_collator([{"x": torch.ones(2), "path": "a"}, {"x": torch.zeros(2), "path": "b"}])
    assert batch["path"] == ["a", "b"]  # the string_classes branch from torch._six
    assert torch.equal(batch["x"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert compat._patch_torch_six() is False


def test_numpy_bool_patch_restores_the_alias(monkeypatch):
    monkeypatch.delattr(np, "bool", raising=False)
    assert compat._patch_numpy_bool() is True
    assert np.bool is bool
    assert compat._patch_numpy_bool() is False


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
    assert compat._patch_dataloaderx() is False


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
    assert launch_mod._distributed_worker is compat._distributed_worker
    assert compat._patch_launch() is False


def test_typed_storage_warning_is_silenced():
    from fastreid.data.transforms import ToTensor
    from PIL import Image
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        compat._quiet_typed_storage_warning()
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning exists only without CUDA")
def test_cuda_home_warning_is_quiet_on_cpu(caplog):
    assert "cuda_home_warning" in compat.applied()
    from fastreid.utils.collect_env import collect_env_info
    with caplog.at_level(logging.WARNING):
        assert "PyTorch" in collect_env_info()
    assert not [r for r in caplog.records if "No CUDA runtime" in r.getMessage()]
