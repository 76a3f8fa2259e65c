"""tools/retrieve.py, tools/export_features.py, their progress lines, ranked-list pictures and
TensorBoard events, on a model trained for one epoch of the tiny config."""
import csv
import importlib.util
import logging
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY, run_tool
from cpcl_plugin import CPCLTrainer, load_config
from cpcl_plugin.data import build_dataset


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory, data_root):
    """(config opts, checkpoint) of the tiny model trained by tools/train_net.py (the session's
    shared run); the tools write into a folder of this module's."""
    opts = ["DATASETS.ROOT", data_root, "OUTPUT_DIR", str(tmp_path_factory.mktemp("tools"))]
    return opts, str(trained_run.out / "model_final.pth")


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
                                                                       data_root, capsys):
    opts, weights = trained
    caption = build_dataset(load_config(TINY, opts), "SyntheticPedes").split("test")[0].captions[0]
    index, pics = str(tmp_path / "gallery.npz"), str(tmp_path / "pics")
    proc = _retrieve("--config-file", TINY, "--query", caption, "--split", "test", "--topk", "3",
                     "--save-index", index, "--output-dir", pics, *opts, "MODEL.WEIGHTS", weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranked = _ranked(proc.stdout)
    assert len(ranked) == 3 and all(os.path.isfile(path) for _, path in ranked)
    assert proc.stdout.count("identity]") == 3  # the query is a split caption: identities known
    assert re.search(r"identity \d+: AP \d+\.\d%, first true match at rank \d+", proc.stdout)
    # Progress of the long steps on stderr (stdout keeps the results).
    assert re.search(r"building the gallery index: encoding 8 images: 8/8 images in \d:\d\d:\d\d",
                     proc.stderr), proc.stderr
    assert "building the gallery index" not in proc.stdout
    first = re.search(r"picture: (\S+)", proc.stdout).group(1)

    # The saved index, queried in this process (the command line itself is checked above).
    capsys.readouterr()
    code = _tool("retrieve").main(["--config-file", TINY, "--query", caption, "--index", index,
                                   "--topk", "3", "--output-dir", pics, *opts,
                                   "MODEL.WEIGHTS", weights])
    again = capsys.readouterr()
    assert code == 0, again.err[-3000:]
    assert _ranked(again.out) == ranked
    second = re.search(r"picture: (\S+)", again.out).group(1)
    assert [os.path.basename(p) for p in (first, second)] == ["query_001.png", "query_002.png"]
    for picture in (first, second):  # the second query left the first one's picture alone
        with Image.open(picture) as im:
            assert im.format == "PNG" and im.width > 300
    with open(os.path.join(pics, "index.csv"), newline="") as f:
        listed = list(csv.DictReader(f))
    assert [r["picture"] for r in listed] == ["query_001.png", "query_002.png"]
    assert listed[0]["AP"] and not listed[1]["AP"]  # --index without --query-id: identity unknown
    assert "query_002.png" in open(os.path.join(pics, "index.html"), encoding="utf-8").read()


def test_saved_index_ranks_like_a_fresh_one(trained, tmp_path):
    from cpcl_plugin.modeling import load_trained_model
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


@pytest.mark.parametrize("case", ["empty query", "no images", "mismatched checkpoint",
                                  "strict without folder"])
def test_retrieve_bad_input_is_one_sentence(trained, tmp_path, capsys, case):
    opts, weights = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    args = {"empty query": ["--query", "   ", "--split", "test"],
            "no images": ["--query", "a man", "--gallery-dir", str(tmp_path / "empty")],
            "mismatched checkpoint": ["--query", "a man", "--split", "test",
                                      "MODEL.CLIP.CONTEXT_LENGTH", "32"],
            "strict without folder": ["--query", "a man", "--split", "test", "--strict"]}[case]
    expected = {"empty query": "Query 1 is empty",
                "no images": f"Gallery folder {tmp_path / 'empty'} has no images",
                "mismatched checkpoint": f"MODEL.WEIGHTS {weights} does not match the model this "
                                         f"config builds",
                "strict without folder": "--strict applies to --gallery-dir only"}[case]
    code = _tool("retrieve").main(["--config-file", TINY, *args, *opts, "MODEL.WEIGHTS", weights,
                                   "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    # Log lines may come first (loading the model); the error is the last line, one sentence.
    assert code == 2 and err.splitlines()[-1].startswith(f"error: {expected}"), err
    assert "Traceback" not in err and err.count("error:") == 1
    assert "WEIGHTS_PARTIAL" not in err  # it starts a training; a tool only reads the model


def test_a_trained_model_is_loaded_without_claiming_random_weights(trained, caplog):
    from cpcl_plugin.modeling import load_trained_model
    opts, weights = trained
    with caplog.at_level("INFO", logger="cpcl_plugin"):
        load_trained_model(load_config(TINY, opts + ["MODEL.WEIGHTS", weights]), "this test")
    assert "random initialisation" not in caplog.text
    assert f"Model weights from MODEL.WEIGHTS {weights}" in caplog.text


def _photo_folder(tmp_path, opts):
    """A --gallery-dir: three test images, one file that is not an image, one that is no image
    at all (ignored)."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    records = build_dataset(load_config(TINY, opts), "SyntheticPedes").split("test")
    for i, r in enumerate(records[:3]):
        shutil.copy(r.image_path, folder / ("sub" if i else "") / f"person_{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.txt").write_text("ignored")
    return folder, records[0].captions[0]


def test_retrieve_skips_unreadable_gallery_files_with_one_warning_unless_strict(trained, tmp_path,
                                                                                capsys):
    opts, weights = trained
    folder, caption = _photo_folder(tmp_path, opts)
    base = ["--config-file", TINY, "--query", caption, "--gallery-dir", str(folder), "--topk", "5",
            "--output-dir", str(tmp_path / "out"), *opts, "MODEL.WEIGHTS", weights]
    assert _tool("retrieve").main(base) == 0
    out, err = capsys.readouterr()
    assert len(_ranked(out)) == 3 and "broken.jpg" not in out
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1, err
    assert f"Skipped 1 of 4 files in {folder} that cannot be read as images: " \
           f"{folder / 'broken.jpg'} (UnidentifiedImageError" in warnings[0]
    assert "Add --strict" in warnings[0] and "SKIP_BAD_IMAGES" not in err

    assert _tool("retrieve").main(base + ["--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: 1 of 4 files in {folder} cannot be read as images: "
                          f"{folder / 'broken.jpg'} (UnidentifiedImageError")
    # It names the way out that is not already taken.
    assert err.endswith("run without --strict to skip them.") and "Add --strict" not in err


def test_export_features(trained, tmp_path, capsys):
    opts, weights = trained
    out = str(tmp_path / "test.npz")
    assert _tool("export_features").main(["--config-file", TINY, "--split", "test", "--output",
                                          out, *opts, "MODEL.WEIGHTS", weights]) == 0
    out_text, err = capsys.readouterr()
    assert re.search(r"exporting SyntheticPedes test: encoding 16 captions and 8 images: "
                     r"24/24 items in ", err), err
    assert out_text.startswith("SyntheticPedes test: 8 images, 16 captions")
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
    from cpcl_plugin.modeling import load_trained_model
    opts, weights = trained
    cfg = load_config(TINY, opts + ["OUTPUT_DIR", str(tmp_path), "TEST.VIS_TOPK", "4",
                                    "TEST.VIS_QUERIES", "3", "MODEL.WEIGHTS", weights])
    model = load_trained_model(cfg, "this test")
    CPCLTrainer.test(cfg, model)
    folder = tmp_path / "ranked_lists" / "SyntheticPedes"
    pictures = sorted(folder.glob("query_*.png"))
    assert len(pictures) == 3
    with open(folder / "index.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    assert [r["picture"] for r in listed] == [p.name for p in pictures]
    for row in listed:  # split captions: identity, AP and first true match are known
        assert row["identity"] and 0 < float(row["AP"]) <= 100 and int(row["first_true_match"]) >= 1
    assert (folder / "index.html").is_file()


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


def test_progress_lines_come_at_a_bounded_rate_in_one_form(caplog):
    from cpcl_plugin.utils.progress import Progress
    now = [0.0]
    with caplog.at_level(logging.INFO, logger="cpcl_plugin.progress"):
        with Progress("encoding 5000 images", 5000, "images", clock=lambda: now[0]) as p:
            for _ in range(5000):  # 0.01 s per image: 50 s in all
                now[0] += 0.01
                p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encoding 5000 images: 0/5000 images"
    assert lines[1] == "encoding 5000 images: 500/5000 images (100 images/s, eta 0:00:45)"
    assert lines[-1] == "encoding 5000 images: 5000/5000 images in 0:00:50 (100 images/s)"
    assert len(lines) == 11  # start, nine tenths, end: not one line per update
    caplog.clear()
    now[0] = 0.0
    with caplog.at_level(logging.INFO, logger="cpcl_plugin.progress"):
        with Progress("clustering", 10, "images", clock=lambda: now[0]) as p:
            now[0] += 65  # a slow first unit ...
            p.update()
            now[0] += 31  # ... and no tenth for more than MAX_INTERVAL: a line anyway
            p.update(0)
    assert [r.getMessage() for r in caplog.records][1:3] == [
        "clustering: 1/10 images (0.0154 images/s, eta 0:09:45)",
        "clustering: 1/10 images (0.0104 images/s, eta 0:14:24)"]


def test_queries_longer_than_the_context_are_named_with_what_is_read(tiny_cfg, caplog):
    from cpcl_plugin.data.tokenizer import build_tokenizer
    from cpcl_plugin.retrieval import warn_long_queries
    tokenizer = build_tokenizer(tiny_cfg())
    context = tokenizer.context_length  # 48 in the tiny config
    fits = "a man in a blue coat!!!"  # "!" is token 0, like the padding
    long_ones = [" ".join(["a woman in a red coat"] * 20), "x" * 5000 + " shoes",
                 "穿红色外套背着黑色背包的女人" * 3]  # 42 characters, each several tokens
    for query in [fits] + long_ones:  # the count is what the tokenizer would read untruncated
        n = tokenizer.num_tokens(query)
        assert (n <= context) == (query == fits), query
        assert int(tokenizer(query).nonzero().max()) + 1 == min(n, context)
    with caplog.at_level("WARNING", logger="cpcl_plugin.retrieval"):
        warn_long_queries([fits, *long_ones], tokenizer)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    n = tokenizer.num_tokens(long_ones[0])
    assert warnings[0] == (f'Query 2 ("{long_ones[0][:60].rstrip()}…") is {n - 2} tokens long; '
                           f"the text encoder reads only its first {context - 2} "
                           f"(MODEL.CLIP.CONTEXT_LENGTH {context}) and ignores the rest.")
    assert warnings[1].startswith('Query 3 ("xxx')


def test_a_gallery_folder_is_read_through_linked_folders_once(tmp_path):
    from cpcl_plugin.retrieval import list_images
    gallery, elsewhere = tmp_path / "gallery", tmp_path / "elsewhere"
    (gallery / "cam1").mkdir(parents=True)
    elsewhere.mkdir()
    for folder, name in ((gallery / "cam1", "a.jpg"), (elsewhere, "b.PNG"), (elsewhere, "c.txt")):
        (folder / name).write_bytes(b"x")
    (gallery / "cam2").symlink_to(elsewhere, target_is_directory=True)  # a linked folder
    (gallery / "cam2-again").symlink_to(elsewhere, target_is_directory=True)
    (gallery / "cam1" / "up").symlink_to(gallery, target_is_directory=True)  # a loop
    found = list_images(str(gallery))
    assert [os.path.relpath(p, gallery) for p in found] == ["cam1/a.jpg", "cam2/b.PNG"]


def test_a_queries_file_saved_with_a_byte_order_mark_reads_clean_queries(trained, tmp_path,
                                                                          capsys):
    opts, weights = trained
    queries = tmp_path / "queries.txt"
    queries.write_bytes("\ufeffa woman in a red coat\r\n\r\nun homme en manteau bleu\n"
                        .encode("utf-8"))
    code = _tool("retrieve").main(["--config-file", TINY, "--queries-file", str(queries),
                                   "--split", "test", "--topk", "2", "--output-dir",
                                   str(tmp_path / "pics"), *opts, "MODEL.WEIGHTS", weights])
    assert code == 0, capsys.readouterr().err[-2000:]
    with open(tmp_path / "pics" / "index.csv", newline="", encoding="utf-8") as f:
        listed = [row["query"] for row in csv.DictReader(f)]
    assert listed == ["a woman in a red coat", "un homme en manteau bleu"]
    for name in os.listdir(tmp_path / "pics"):  # pictures and index are not executable
        assert not os.stat(tmp_path / "pics" / name).st_mode & 0o111, name
