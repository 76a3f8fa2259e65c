"""tools/retrieve.py, tools/export_features.py, ranked-list pictures and TensorBoard events, on a
model trained for one epoch of the tiny config."""
import importlib.util
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY, run_tool, run_train_net
from cpcl_plugin import CPCLTrainer, load_config
from cpcl_plugin.data import build_dataset
from cpcl_plugin.visualization import ranked_list_size


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """(config opts, checkpoint) of a tiny model trained for one epoch by tools/train_net.py."""
    out = str(tmp_path_factory.mktemp("trained"))
    opts = ["DATASETS.ROOT", data_root, "OUTPUT_DIR", out]
    proc = run_train_net("--config-file", TINY, *opts, "SOLVER.MAX_EPOCH", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return opts, os.path.join(out, "model_final.pth")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _retrieve(*args):
    return run_tool("retrieve.py", *args, timeout=300)


def _ranked(stdout):
    return re.findall(r"^\s+\d+\. (\d\.\d{4})  (\S+)", stdout, flags=re.M)


def test_retrieve_a_typed_query_on_the_test_split_and_reuse_the_index(trained, tmp_path,
                                                                       data_root):
    opts, weights = trained
    caption = build_dataset(load_config(TINY, opts), "SyntheticPedes").split("test")[0].captions[0]
    index = str(tmp_path / "gallery.npz")
    proc = _retrieve("--config-file", TINY, "--query", caption, "--split", "test", "--topk", "3",
                     "--save-index", index, "--output-dir", str(tmp_path / "pics"), *opts,
                     "MODEL.WEIGHTS", weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranked = _ranked(proc.stdout)
    assert len(ranked) == 3 and all(os.path.isfile(path) for _, path in ranked)
    assert proc.stdout.count("identity]") == 3  # the query is a split caption: identities known
    picture = re.search(r"picture: (\S+)", proc.stdout).group(1)
    with Image.open(picture) as im:
        assert im.size == ranked_list_size(3)

    again = _retrieve("--config-file", TINY, "--query", caption, "--index", index, "--topk", "3",
                      "--output-dir", str(tmp_path / "pics2"), *opts, "MODEL.WEIGHTS", weights)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _ranked(again.stdout) == ranked


def test_saved_index_ranks_like_a_fresh_one(trained, tmp_path):
    from cpcl_plugin.engine.checkpoint import load_trained_model
    from cpcl_plugin.retrieval import GalleryIndex, encode_queries
    opts, weights = trained
    cfg = load_config(TINY, opts + ["MODEL.WEIGHTS", weights])
    model = load_trained_model(cfg, "this test")
    records = build_dataset(cfg, "SyntheticPedes").split("test")
    queries = encode_queries(cfg, model, [r.captions[0] for r in records[:5]])
    fresh = GalleryIndex.build(cfg, model, [r.image_path for r in records], [r.pid for r in records])
    fresh.save(str(tmp_path / "g.npz"))
    loaded = GalleryIndex.load(str(tmp_path / "g.npz"), model)
    for a, b in zip(fresh.search(queries, 5), loaded.search(queries, 5)):
        assert np.array_equal(a, b)
    assert loaded.image_paths == fresh.image_paths and np.array_equal(loaded.pids, fresh.pids)
    # The same ranking as the evaluation's cosine similarity.
    from cpcl_plugin.evaluation import encode_captions_and_images
    _, image_f, _ = encode_captions_and_images(cfg, model, [], [r.image_path for r in records])
    expected = np.argsort(-(queries @ image_f.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(fresh.search(queries, 5)[1], expected)
    other = CPCLTrainer.build_model(cfg)  # other weights: the index must refuse them
    from cpcl_plugin import ConfigError
    with pytest.raises(ConfigError, match="built with other weights"):
        GalleryIndex.load(str(tmp_path / "g.npz"), other)


@pytest.mark.parametrize("case", ["empty query", "no images", "mismatched checkpoint"])
def test_retrieve_bad_input_is_one_sentence(trained, tmp_path, capsys, case):
    opts, weights = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    args = {"empty query": ["--query", "   ", "--split", "test"],
            "no images": ["--query", "a man", "--gallery-dir", str(tmp_path / "empty")],
            "mismatched checkpoint": ["--query", "a man", "--split", "test",
                                      "MODEL.CLIP.CONTEXT_LENGTH", "32"]}[case]
    expected = {"empty query": "Query 1 is empty",
                "no images": f"Gallery folder {tmp_path / 'empty'} has no images",
                "mismatched checkpoint": f"MODEL.WEIGHTS {weights} does not match the model this "
                                         f"config builds"}[case]
    code = _tool("retrieve").main(["--config-file", TINY, *args, *opts, "MODEL.WEIGHTS", weights])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {expected}") and "\n" not in err


def test_export_features(trained, tmp_path):
    opts, weights = trained
    out = str(tmp_path / "test.npz")
    assert _tool("export_features").main(["--config-file", TINY, "--split", "test", "--output",
                                          out, *opts, "MODEL.WEIGHTS", weights]) == 0
    data = np.load(out)
    records = build_dataset(load_config(TINY, opts), "SyntheticPedes").split("test")
    assert list(data["image_paths"]) == [r.image_path for r in records]
    assert len(data["captions"]) == sum(len(r.captions) for r in records)
    assert np.array_equal(data["caption_ids"], data["image_ids"][data["caption_image"]])
    assert np.allclose(np.linalg.norm(data["text_features"], axis=1), 1, atol=1e-5)
    assert data["image_features"].shape == (len(records), data["text_features"].shape[1])
    npy = str(tmp_path / "npy")
    assert _tool("export_features").main(["--config-file", TINY, "--split", "test", "--output",
                                          npy, "--format", "npy", *opts,
                                          "MODEL.WEIGHTS", weights]) == 0
    assert np.array_equal(np.load(os.path.join(npy, "text_features.npy")), data["text_features"])


def test_ranked_list_pictures_from_evaluation(trained, tmp_path):
    from cpcl_plugin.engine.checkpoint import load_trained_model
    opts, weights = trained
    cfg = load_config(TINY, opts + ["OUTPUT_DIR", str(tmp_path), "TEST.VIS_TOPK", "4",
                                    "TEST.VIS_QUERIES", "3", "MODEL.WEIGHTS", weights])
    model = load_trained_model(cfg, "this test")
    CPCLTrainer.test(cfg, model)
    pictures = sorted((tmp_path / "ranked_lists" / "SyntheticPedes").glob("query_*.png"))
    assert len(pictures) == 3
    with Image.open(pictures[0]) as im:
        assert im.size == ranked_list_size(4)


def test_tensorboard_events(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    opts, weights = trained
    events = EventAccumulator(os.path.dirname(weights))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("total_loss", "loss_itc", "lr", "temperature", "pseudo/image_clusters",
                "pseudo/text_outliers", "pseudo_quality/image_ari", "Rank-1", "mAP"):
        assert tag in tags, (tag, sorted(tags))
    # metrics.json has the evaluation too (FastReID's writers drop scalars put after a write).
    import json
    with open(os.path.join(os.path.dirname(weights), "metrics.json")) as f:
        assert any("Rank-1" in json.loads(line) for line in f)
