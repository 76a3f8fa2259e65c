"""Synthetic generator, tokenizer and samplers (the dataset formats: test_datasets.py)."""
import json
import os

from cpcl_plugin.data import (CaptionTokenizer, EpochPairSampler, KindAwareBatchSampler,
                              SyntheticSpec, ensure_synthetic_dataset, generate_synthetic_dataset)

SMALL = dict(num_train_ids=5, num_val_ids=2, num_test_ids=3, images_per_id=2, captions_per_image=2,
             image_size=(64, 32))


def test_synthetic_is_deterministic_and_in_cuhk_format(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), SyntheticSpec(**SMALL, seed=3))
    b = generate_synthetic_dataset(str(tmp_path / "b"), SyntheticSpec(**SMALL, seed=3))
    ja = open(os.path.join(a, "reid_raw.json"), "rb").read()
    assert ja == open(os.path.join(b, "reid_raw.json"), "rb").read()
    entries = json.loads(ja)
    for e in entries:
        assert set(e) == {"split", "captions", "file_path", "id"}
        assert open(os.path.join(a, "imgs", e["file_path"]), "rb").read() == \
            open(os.path.join(b, "imgs", e["file_path"]), "rb").read()
    ids = {s: {e["id"] for e in entries if e["split"] == s} for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])
    assert min(ids["train"]) == 1  # 1-based, as CUHK-PEDES
    assert len(entries) == 10 * 2 and all(len(e["captions"]) == 2 for e in entries)
    c = generate_synthetic_dataset(str(tmp_path / "c"), SyntheticSpec(**SMALL, seed=4))
    assert open(os.path.join(c, "reid_raw.json"), "rb").read() != ja


def test_synthetic_loads_through_the_cuhk_loader_and_is_reused(tmp_path):
    spec = SyntheticSpec(**SMALL)
    folder = ensure_synthetic_dataset(str(tmp_path), spec)
    stamp = os.path.getmtime(os.path.join(folder, "reid_raw.json"))
    assert ensure_synthetic_dataset(str(tmp_path), spec) == folder
    assert os.path.getmtime(os.path.join(folder, "reid_raw.json")) == stamp
    from cpcl_plugin.data.datasets import TextImageDataset  # the CUHK-PEDES reader, at that folder
    loaded = TextImageDataset(root=folder)
    assert len(loaded.split("train")) == 10 and len(loaded.split("test")) == 6
    assert all(os.path.isfile(r.image_path) for r in loaded.split("test"))


def test_long_captions_keep_the_end_of_text_token():
    tok = CaptionTokenizer("CPCL-Tiny", 16)
    ids = tok("a person " * 40)
    assert ids.shape == (16,)
    eot = tok._tokenizer.eot_token_id
    assert ids[-1].item() == eot and ids.argmax().item() == 15
    short = tok("a red coat")
    assert short[short.argmax()].item() == eot and short[-1].item() == 0


def test_epoch_sampler_is_seeded_by_epoch_and_splits_ranks(monkeypatch):
    from fastreid.utils import comm
    orders = {}
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        s = EpochPairSampler(103, batch_size_per_rank=5, seed=1)
        assert len(s) == 50  # 103 // 10 batches of 5 per rank
        s.set_epoch(0)
        e0 = list(s)
        assert e0 == list(s)  # same epoch, same order
        s.set_epoch(1)
        assert list(s) != e0
        orders[rank] = e0
    assert not set(orders[0]) & set(orders[1])


def test_eval_batches_never_mix_captions_and_images():
    s = KindAwareBatchSampler(size=23, num_query=10, batch_size=4)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert all(max(b) < 10 or min(b) >= 10 for b in batches)
