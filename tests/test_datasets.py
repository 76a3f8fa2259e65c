"""The dataset formats (docs/design.md section 3), the custom JSON format, validation of bad input,
undecodable images, evaluation splits and tools/check_dataset.py."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, run_cli_in_process, run_tool, run_train_net
from cpcl_plugin import load_config
from cpcl_plugin.data import (CUHKPEDES, ICFGPEDES, CaptionsThenImages, DatasetError, RSTPReid,
                              TextImagePairs, build_dataset, load_image, parse_test_name)

UNICODE = "Una señora con abrigo rojo y bolso «negro», café — 穿红色外套的女人"


def _image(path, color=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (16, 32), color).save(path)


def write_dataset(folder, annotation_file, entries, image_key="file_path", image_dir="imgs",
                  make_images=True):
    """Writes `entries` (JSON list) and a small image for each, as the official files lie."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, annotation_file), "w", encoding="utf-8") as f:
        json.dump(entries, f, ensure_ascii=False)
    if make_images:
        for e in entries:
            _image(os.path.join(folder, image_dir, e[image_key]))
    return folder


def official_entries(image_key, splits=("train", "val", "test")):
    """Awkward but valid entries: 1-based ids, three captions, unicode text, nested folders."""
    entries = [
        {"id": 1, "split": "train", image_key: "CUHK01/0001001.png", "captions": ["a", "b", "c"]},
        {"id": 1, "split": "train", image_key: "CUHK01/0001002.png", "captions": ["d", "e"]},
        {"id": 2, "split": "train", image_key: "Market/0002_c1.jpg", "captions": [UNICODE, "f"]},
        {"id": 5, "split": "test", image_key: "test_query/p5_1.jpg", "captions": ["g", "h"]},
        {"id": 5, "split": "test", image_key: "test_query/p5_2.jpg", "captions": ["i", "j"]},
        {"id": 6, "split": "test", image_key: "test_query/p6_1.jpg", "captions": ["k", "l", "m"]},
    ]
    if "val" in splits:
        entries.append({"id": 3, "split": "val", image_key: "val/p3.jpg", "captions": ["n", "o"]})
    return entries


@pytest.mark.parametrize("cls, folder, annotation_file, image_key, splits", [
    (CUHKPEDES, "CUHK-PEDES", "reid_raw.json", "file_path", ("train", "val", "test")),
    (ICFGPEDES, "ICFG-PEDES", "ICFG-PEDES.json", "file_path", ("train", "test")),
    (ICFGPEDES, "ICFG-PEDES", "ICFG_PEDES.json", "file_path", ("train", "test")),
    (RSTPReid, "RSTPReid", "data_captions.json", "img_path", ("train", "val", "test")),
])
def test_official_formats_load_counts_splits_captions_and_ids(tmp_path, cls, folder,
                                                              annotation_file, image_key, splits):
    write_dataset(str(tmp_path / folder), annotation_file, official_entries(image_key, splits),
                  image_key=image_key)
    data = cls(root=str(tmp_path))
    train = data.split("train")
    assert [r.pid for r in train] == [1, 1, 2]  # ids kept as published (1-based)
    assert [len(r.captions) for r in train] == [3, 2, 2]
    assert train[2].captions[0] == UNICODE
    assert train[0].image_path == os.path.join(str(tmp_path), folder, "imgs", "CUHK01",
                                               "0001001.png")
    assert all(os.path.isfile(r.image_path) for s in splits for r in data.split(s))
    test = data.split("test")
    assert [r.pid for r in test] == [5, 5, 6] and sum(len(r.captions) for r in test) == 7
    if "val" in splits:
        assert [r.pid for r in data.split("val")] == [3]
    else:
        with pytest.raises(DatasetError, match="no 'val' entries; its splits are: train, test"):
            data.split("val")
    table = data.statistics_table()
    assert "| train   | 2       | 3          | 7" in table
    assert "| test    | 2       | 3          | 7" in table


def test_text_image_json_takes_its_keys_from_the_config(tmp_path):
    entries = [
        {"person": "alice", "part": "train", "img": "a1.jpg", "texts": ["a woman in red"]},
        {"person": "alice", "part": "train", "img": "a2.jpg", "texts": "she carries a bag"},
        {"person": "bob", "part": "train", "img": "b1.jpg", "texts": ["a man in blue"]},
        {"person": "7", "part": "test", "img": "c1.jpg", "texts": ["a child"]},
        {"person": "--5", "part": "test", "img": "c2.jpg", "texts": ["an odd id, still an id"]},
    ]
    write_dataset(str(tmp_path / "mine"), "labels.json", entries, image_key="img",
                  image_dir="pictures")
    cfg = load_config(TINY, ["DATASETS.ROOT", str(tmp_path),
                             "DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE", "mine/labels.json",
                             "DATASETS.TEXT_IMAGE_JSON.IMAGE_DIR", "pictures",
                             "DATASETS.TEXT_IMAGE_JSON.IMAGE_KEY", "img",
                             "DATASETS.TEXT_IMAGE_JSON.ID_KEY", "person",
                             "DATASETS.TEXT_IMAGE_JSON.SPLIT_KEY", "part",
                             "DATASETS.TEXT_IMAGE_JSON.CAPTIONS_KEY", "texts"])
    data = build_dataset(cfg, "TextImageJSON")
    train = data.split("train")
    assert train[1].captions == ("she carries a bag",)  # one string is one caption
    assert train[0].pid == train[1].pid != train[2].pid  # string ids: equal names, equal ids
    assert data.split("test")[0].pid == 7
    assert data.split("test")[1].pid not in {7, train[0].pid, train[2].pid}
    assert train[0].image_path == str(tmp_path / "mine" / "pictures" / "a1.jpg")

    empty = load_config(TINY, ["DATASETS.ROOT", str(tmp_path)])
    with pytest.raises(DatasetError, match="DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE"):
        build_dataset(empty, "TextImageJSON")


def _entry(**overrides):
    e = {"id": 1, "split": "train", "file_path": "1.jpg", "captions": ["a person"]}
    e.update(overrides)
    return {k: v for k, v in e.items() if v is not None}


# Each case: entries written (the second one is the bad one), expected message pattern.
BAD_ENTRIES = {
    "missing key": ([_entry(), _entry(file_path="2.jpg", captions=None)],
                    r"reid_raw.json, entry 1: missing key\(s\) captions"),
    "empty caption list": ([_entry(), _entry(file_path="2.jpg", captions=[])],
                           r"reid_raw.json, entry 1 \(2.jpg\): captions must be a non-empty list"),
    "empty caption": ([_entry(), _entry(file_path="2.jpg", captions=["ok", "  "])],
                      r"reid_raw.json, entry 1 \(2.jpg\): captions must be a non-empty list"),
    "unknown split": ([_entry(), _entry(file_path="2.jpg", split="training")],
                      r"reid_raw.json, entry 1: unknown split 'training'; expected one of train, "
                      r"val, test"),
    "bad id": ([_entry(), _entry(file_path="2.jpg", id=[3])],
               r"reid_raw.json, entry 1 \(2.jpg\): id must be an integer or a string"),
    "not an object": ([_entry(), ["1.jpg"]],
                      r"reid_raw.json, entry 1: expected an object with keys"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_entries_name_the_file_and_the_entry(tmp_path, case):
    entries, pattern = BAD_ENTRIES[case]
    folder = write_dataset(str(tmp_path / "CUHK-PEDES"), "reid_raw.json", [], make_images=False)
    with open(os.path.join(folder, "reid_raw.json"), "w") as f:
        json.dump(entries, f)
    _image(os.path.join(folder, "imgs", "1.jpg"))
    _image(os.path.join(folder, "imgs", "2.jpg"))
    with pytest.raises(DatasetError, match=pattern) as err:
        CUHKPEDES(root=str(tmp_path))
    assert os.path.join(folder, "reid_raw.json") in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=f"dataset folder {tmp_path / 'CUHK-PEDES'} does not "
                                           f"exist.*reid_raw.json.*licensed"):
        CUHKPEDES(root=str(tmp_path))
    folder = tmp_path / "CUHK-PEDES"
    folder.mkdir()
    with pytest.raises(DatasetError, match=f"no annotation file reid_raw.json in {folder}"):
        CUHKPEDES(root=str(tmp_path))
    (folder / "reid_raw.json").write_text('[{"id": 1,\n "split": }]')
    with pytest.raises(DatasetError, match=r"reid_raw.json is not valid JSON \(line 2, column 11"):
        CUHKPEDES(root=str(tmp_path))
    (folder / "reid_raw.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="reid_raw.json must hold a JSON list of image entries, "
                                           "found a JSON dict"):
        CUHKPEDES(root=str(tmp_path))
    with pytest.raises(DatasetError, match="ICFG-PEDES.json or ICFG_PEDES.json"):
        ICFGPEDES(root=str(tmp_path))
    write_dataset(str(tmp_path / "ICFG-PEDES"), "ICFG-PEDES.json", [_entry(split="val")])
    with pytest.raises(DatasetError, match="entry 0: unknown split 'val'; expected one of train, "
                                           "test"):
        ICFGPEDES(root=str(tmp_path))


def test_missing_images_are_named_or_skipped_and_counted(tmp_path):
    entries = [_entry(), _entry(file_path="sub/2.jpg"), _entry(file_path="3.jpg", id=2)]
    folder = write_dataset(str(tmp_path / "CUHK-PEDES"), "reid_raw.json", entries)
    os.remove(os.path.join(folder, "imgs", "sub", "2.jpg"))
    os.remove(os.path.join(folder, "imgs", "3.jpg"))
    with pytest.raises(DatasetError, match=r"reid_raw.json, entry 1: image .*imgs/sub/2.jpg does "
                                           r"not exist \(2 of 3 images are missing\)"):
        CUHKPEDES(root=str(tmp_path))
    data = CUHKPEDES(root=str(tmp_path), skip_bad_images=True)
    assert data.skipped_missing == 2 and len(data.split("train")) == 1


def _corrupt(path):
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_undecodable_images_are_reported_with_their_path_or_skipped(tmp_path):
    folder = write_dataset(str(tmp_path), "reid_raw.json",
                           [_entry(), _entry(file_path="2.jpg", id=2)])
    bad = os.path.join(folder, "imgs", "2.jpg")
    _corrupt(bad)
    with pytest.raises(DatasetError, match=f"Cannot read image {bad} .*DATASETS.SKIP_BAD_IMAGES"):
        load_image(bad)
    from cpcl_plugin.data.datasets import TextImageDataset
    records = TextImageDataset(root=folder).split("train")
    to_tensor = lambda im: torch.as_tensor(np.array(im.resize((8, 16)))).permute(2, 0, 1)  # noqa
    pairs = TextImagePairs(records, to_tensor, tokenizer=lambda c: torch.zeros(4))
    assert pairs[0]["valid"] == 1
    with pytest.raises(DatasetError, match=f"Cannot read image {bad}"):
        pairs[1]
    # In a DataLoader worker the error comes back as the same one sentence.
    loader = torch.utils.data.DataLoader(pairs, batch_size=2, num_workers=1)
    with pytest.raises(DatasetError) as err:
        next(iter(loader))
    assert str(err.value).startswith(f"Cannot read image {bad}") and "\n" not in str(err.value)

    skipping = TextImagePairs(records, to_tensor, lambda c: torch.zeros(4), skip_bad_images=True)
    item = skipping[1]
    assert item["valid"] == 0 and item["images"].shape == (3, 16, 8)
    gallery = CaptionsThenImages.for_evaluation(records, to_tensor, lambda c: torch.zeros(4),
                                                skip_bad_images=True)
    assert [gallery[i].get("valid") for i in range(len(gallery))] == [None, None, 1, 0]


def test_training_and_evaluation_skip_undecodable_images(tmp_path, tiny_cfg, caplog):
    """With SKIP_BAD_IMAGES, a corrupt training image becomes an outlier of the pseudo-label pass
    and leaves the batches, and a corrupt gallery image leaves the evaluation."""
    from fastreid.utils.events import EventStorage

    from cpcl_plugin import CPCLTrainer
    root = str(tmp_path / "data")
    cfg = tiny_cfg("DATASETS.ROOT", root, "DATASETS.SKIP_BAD_IMAGES", "True")
    train_records = build_dataset(cfg, "SyntheticPedes").split("train")
    test_records = build_dataset(cfg, "SyntheticPedes").split("test")
    _corrupt(train_records[3].image_path)
    _corrupt(test_records[0].image_path)

    trainer = CPCLTrainer(cfg)
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.epoch = 0
        trainer.pseudo_label_hook.trainer = trainer
        trainer.pseudo_label_hook.before_epoch()
        assert trainer.pseudo_label_hook.image_labels[3] == -1
        assert storage.latest()["pseudo/skipped_images"][0] == 1
        batch = {"valid": torch.tensor([1, 0, 1]), "indices": torch.tensor([4, 5, 6]),
                 "images": torch.zeros(3, 3, 2, 2)}
        kept = trainer._without_undecodable_images(batch)
        assert kept["indices"].tolist() == [4, 6] and trainer.skipped_pairs == 1
        with pytest.raises(DatasetError, match="Every image of a training batch"):
            trainer._without_undecodable_images({"valid": torch.tensor([0, 0])})
        with caplog.at_level(logging.WARNING, logger="cpcl_plugin"):
            CPCLTrainer.test(cfg, trainer.model)
    assert "Evaluation leaves out 1 undecodable gallery images" in caplog.text


def test_a_corrupt_image_stops_training_with_its_path(tmp_path):
    root = str(tmp_path / "data")
    opts = ["DATASETS.ROOT", root, "OUTPUT_DIR", str(tmp_path / "out"),
            "DATALOADER.NUM_WORKERS", "1"]
    cfg = load_config(TINY, opts)
    bad = build_dataset(cfg, "SyntheticPedes").split("train")[0].image_path
    _corrupt(bad)
    proc = run_train_net("--config-file", TINY, *opts)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Cannot read image {bad}") and "SKIP_BAD_IMAGES" in last
    assert "Traceback" not in proc.stderr + proc.stdout


# Every format as build_dataset reads it: folder, annotation file, image key, image folder,
# splits and the config options it needs.
ALL_SPLITS = ("train", "val", "test")
FORMATS = {
    "CUHKPEDES": ("CUHK-PEDES", "reid_raw.json", "file_path", "imgs", ALL_SPLITS, []),
    "ICFGPEDES": ("ICFG-PEDES", "ICFG-PEDES.json", "file_path", "imgs", ("train", "test"), []),
    "RSTPReid": ("RSTPReid", "data_captions.json", "img_path", "imgs", ALL_SPLITS, []),
    "TextImageJSON": ("mine", "labels.json", "img", "pictures", ALL_SPLITS,
                      ["DATASETS.TEXT_IMAGE_JSON.ANNOTATION_FILE", "mine/labels.json",
                       "DATASETS.TEXT_IMAGE_JSON.IMAGE_DIR", "pictures",
                       "DATASETS.TEXT_IMAGE_JSON.IMAGE_KEY", "img"]),
}


def _with_repeats(tmp_path, name, repeats):
    """Writes `name`'s official entries, then one entry per (split, image path) of `repeats`;
    returns (the first repeat's entry number, annotation file, image folder, config)."""
    folder, annotation, key, image_dir, splits, opts = FORMATS[name]
    entries = official_entries(key, splits)
    extra = [{"id": 9, "split": split, key: image, "captions": ["again"]}
             for split, image in repeats]
    write_dataset(str(tmp_path / folder), annotation, entries + extra, image_key=key,
                  image_dir=image_dir)
    cfg = load_config(TINY, ["DATASETS.ROOT", str(tmp_path), *opts])
    return (len(entries), str(tmp_path / folder / annotation), str(tmp_path / folder / image_dir),
            cfg)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_an_image_in_two_splits_is_refused_naming_it(tmp_path, name):
    # The first repeat spells the image another way: the same file all the same.
    n, annotation, images, cfg = _with_repeats(tmp_path, name, [("test", "CUHK01/./0001001.png"),
                                                                ("test", "Market/0002_c1.jpg")])
    with pytest.raises(DatasetError) as err:
        build_dataset(cfg, name)
    assert str(err.value) == (
        f"{annotation}: 2 image(s) appear in more than one split, e.g. "
        f"{os.path.join(images, 'CUHK01', '0001001.png')} (train: entry 0, test: entry {n}), "
        f"{os.path.join(images, 'Market', '0002_c1.jpg')} (train: entry 2, test: entry {n + 1}); "
        f"give each image one split, since a training image in a test or val gallery makes "
        f"evaluation wrong.")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_an_image_twice_within_a_split_is_counted_in_a_warning(tmp_path, name, caplog):
    n, annotation, images, cfg = _with_repeats(tmp_path, name, [("train", "Market//0002_c1.jpg"),
                                                                ("test", "./test_query/p5_1.jpg")])
    with caplog.at_level(logging.WARNING, logger="cpcl_plugin"):
        data = build_dataset(cfg, name)
    assert (f"{annotation}: 2 image(s) appear more than once within a split, e.g. "
            f"{os.path.join(images, 'Market', '0002_c1.jpg')} (train: entries 2 and {n}), "
            f"{os.path.join(images, 'test_query', 'p5_1.jpg')} (test: entries 3 and {n + 1}); "
            f"every entry is kept") in caplog.text
    assert len(data.split("train")) == 4 and len(data.split("test")) == 4


def test_tests_entries_name_a_split(tiny_cfg):
    assert parse_test_name("CUHKPEDES") == ("CUHKPEDES", "test")
    assert parse_test_name("CUHKPEDES:val") == ("CUHKPEDES", "val")
    with pytest.raises(DatasetError, match="'CUHKPEDES:train' names split 'train'"):
        parse_test_name("CUHKPEDES:train")
    from cpcl_plugin.data import build_text_image_test_loader
    cfg = tiny_cfg("DATASETS.SYNTHETIC.NUM_VAL_IDS", "3")
    val = build_dataset(cfg, "SyntheticPedes").split("val")
    _, num_query = build_text_image_test_loader(cfg, "SyntheticPedes:val")
    assert num_query == sum(len(r.captions) for r in val) == 3 * 2 * 2


def test_checkpoint_selected_on_val_and_reported_on_test(tmp_path, data_root):
    out = tmp_path / "out"
    proc = run_train_net("--config-file", TINY, "DATASETS.ROOT", data_root, "OUTPUT_DIR", str(out),
                         "DATASETS.SYNTHETIC.NUM_VAL_IDS", "3",
                         "DATASETS.TESTS", '("SyntheticPedes:val", "SyntheticPedes:test")')
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    table = log[log.rindex("Text-to-image results:"):]
    best = torch.load(out / "model_best.pth", map_location="cpu", weights_only=False)
    label = f"best on SyntheticPedes:val (epoch {best['epoch']})"  # 0-based, as model_0000.pth
    rows = [line for line in table.splitlines() if line.startswith(f"| {label}")]
    assert [r.split("|")[2].strip() for r in rows] == ["SyntheticPedes:val", "SyntheticPedes:test"]
    # Those rows are model_best's numbers: evaluate it here and compare.
    from fastreid.utils.checkpoint import Checkpointer

    from cpcl_plugin import CPCLTrainer
    cfg = load_config(TINY, ["DATASETS.ROOT", data_root, "DATASETS.SYNTHETIC.NUM_VAL_IDS", "3",
                             "DATASETS.TESTS", '("SyntheticPedes:test",)'])
    model = CPCLTrainer.build_model(cfg)
    Checkpointer(model).load(str(out / "model_best.pth"))
    expected = CPCLTrainer.test(cfg, model)
    assert rows[1].split("|")[3].strip() == f"{expected['Rank-1']:.2f}"
    assert rows[1].split("|")[6].strip() == f"{expected['mAP']:.2f}"


def test_resume_keeps_the_best_metric(tmp_path, tiny_cfg):
    """FastReID forgets the best metric on resume; model_best must only be replaced by a better
    checkpoint, so the trainer restores it from model_best.pth."""
    from fastreid.engine import hooks

    from cpcl_plugin import CPCLTrainer
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path))
    torch.save({"metric": 42.5, "epoch": 3}, tmp_path / "model_best.pth")
    trainer = CPCLTrainer(cfg)
    trainer.resume_or_load(resume=True)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic[0].best_metric == 42.5


def test_cuhk_config_without_the_dataset_says_where_and_how(tmp_path, capfd):
    # MODEL.DEVICE cpu: on a machine without a GPU that problem of the config is named first.
    proc = run_cli_in_process(capfd, "--config-file",
                              os.path.join(REPO, "configs", "CPCL", "cuhk.yml"),
                              "DATASETS.ROOT", str(tmp_path), "MODEL.DEVICE", "cpu")
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert str(tmp_path / "CUHK-PEDES") in message and "reid_raw.json" in message
    assert "imgs/" in message and "request it from its authors" in message


def _check_dataset(*args):
    return run_tool("check_dataset.py", *args, timeout=300)


def _check_dataset_here(capsys, *args):
    """(exit status, stdout, stderr) of tools/check_dataset.py run in this process (a fresh
    process costs ~10 s of imports)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("check_dataset",
                                                  os.path.join(REPO, "tools", "check_dataset.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    status = tool.main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_check_dataset_tool(tmp_path, capsys):
    write_dataset(str(tmp_path / "RSTPReid"), "data_captions.json", official_entries("img_path"),
                  image_key="img_path")
    # A 16-bit gray PNG: read at its 8-bit value, as training reads it (tests/test_image_modes.py).
    Image.fromarray(np.full((32, 16), 32768, np.uint16)).save(
        str(tmp_path / "RSTPReid" / "imgs" / "test_query" / "p5_1.jpg"), "PNG")
    proc = _check_dataset("RSTPReid", "--root", str(tmp_path), "--decode")
    assert proc.returncode == 0, proc.stderr
    assert "its 7 images exist" in proc.stdout and "Decoded 7 images" in proc.stdout
    assert "| train   | 2       | 3          | 7" in proc.stdout
    # --stats: the captions and views beside the real datasets' figures, read from the text
    status, out, _ = _check_dataset_here(capsys, "RSTPReid", "--root", str(tmp_path), "--stats")
    header = next(line for line in out.splitlines() if line.startswith("| statistic"))
    assert status == 0 and [c.strip() for c in header.split("|")[1:-1]] == [
        "statistic", "RSTPReid", "CUHK-PEDES", "ICFG-PEDES", "RSTPReid"]
    assert "| images per identity " in out and "read from the caption text" in out

    _corrupt(str(tmp_path / "RSTPReid" / "imgs" / "val" / "p3.jpg"))
    assert _check_dataset_here(capsys, "RSTPReid", "--root", str(tmp_path))[0] == 0  # exists
    status, out, err = _check_dataset_here(capsys, "RSTPReid", "--root", str(tmp_path), "--decode")
    assert status == 2 and "1 cannot be read" in out
    assert err.startswith("error: 1 images of RSTPReid cannot be read, e.g. ")

    # Float pixels outside 0..1 have no 8-bit meaning: --decode refuses them as training would.
    floats = str(tmp_path / "RSTPReid" / "imgs" / "test_query" / "p6_1.jpg")
    Image.fromarray(np.full((32, 16), 200, np.float32)).save(floats, "TIFF")
    status, out, err = _check_dataset_here(capsys, "RSTPReid", "--root", str(tmp_path), "--decode")
    assert status == 2 and "2 cannot be read" in out
    assert f"Cannot read image {floats} (PIL mode F: values from 200 to 200" in out

    status, _, err = _check_dataset_here(capsys, "CUHKPEDES", "--root", str(tmp_path))
    assert status == 2 and "CUHK-PEDES does not exist" in err


def test_check_dataset_help_gives_each_option_a_sentence_and_its_default(capsys):
    with pytest.raises(SystemExit):
        _check_dataset_here(capsys, "--help")
    text = " ".join(capsys.readouterr().out.split())
    body = text[text.index("positional arguments:"):]
    defaults = {"dataset": "(no default).", "opts": "(default: none).",
                "--root ROOT": "(default: DATASETS.ROOT, else $FASTREID_DATASETS, else datasets).",
                "--config-file CONFIG_FILE": "(default: none, the project's defaults).",
                "--decode": "(default: False, only check that images exist).",
                "--workers WORKERS": f"(default: {os.cpu_count() or 1}, the number of CPU cores)."}
    starts = sorted((body.index(f" {option} "), option) for option in defaults)
    ends = [start for start, _ in starts[1:]] + [len(body)]
    for (start, option), end in zip(starts, ends):
        assert defaults[option] in body[start:end], option
