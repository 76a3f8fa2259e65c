"""The preset worlds shaped like the real datasets (data/world.py) and the dataset statistics
(data/statistics.py, tools/check_dataset.py --stats), on small samples."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REPO
from test_datasets import _check_dataset_here

from cpcl_plugin import ConfigError, load_config
from cpcl_plugin.config import CHOICES
from cpcl_plugin.data import CUHKPEDES, SyntheticSpec, generate_synthetic_dataset
from cpcl_plugin.data.statistics import caption_ceiling, dataset_statistics, text_mentions
from cpcl_plugin.data.world import (COARSE, PRESETS, make_cameras, render_view, sample_person,
                                    visible_attributes, write_caption)

SMALL = dict(num_train_ids=60, num_test_ids=30, image_size=(32, 16))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Each preset drawn once, small, as a CUHK-PEDES folder; (dataset, ground truth) by name."""
    out = {}
    for preset in PRESETS:
        root = tmp_path_factory.mktemp(preset)
        generate_synthetic_dataset(str(root / "CUHK-PEDES"), SyntheticSpec(**SMALL, preset=preset))
        data = CUHKPEDES(root=str(root))
        with open(root / "CUHK-PEDES" / "world.json") as f:
            out[preset] = data, json.load(f)
    return out


def test_presets_are_the_configs_choices():
    assert set(CHOICES["DATASETS.SYNTHETIC.PRESET"]) == {""} | set(PRESETS)


@pytest.mark.parametrize("preset, words, captions, views", [
    ("cuhk", (20, 28), 2, (2.6, 3.6)), ("icfg", (30, 42), 1, (10, 12)),
    ("rstp", (22, 30), 2, (5, 5))])
def test_presets_have_the_real_datasets_shape(worlds, preset, words, captions, views):
    stats = dataset_statistics(worlds[preset][0])
    assert words[0] <= stats["words_per_caption"] <= words[1]
    assert stats["captions_per_image"] == captions
    assert views[0] <= stats["images_per_identity"] <= views[1]
    # criterion (e) of docs/benchmarks.md: the gender nearly always, same-person captions agree
    assert stats["gender_named"] >= 0.95
    assert stats["no_shared_attribute"] <= 0.05
    assert stats["attributes_from"] == "ground truth"
    assert 0.15 <= stats["lookalike_rate"] <= 0.7
    assert 50 <= stats["caption_ceiling_R1"] <= 100
    assert stats["invisible_named"] == 0


def test_each_image_of_a_person_comes_from_another_camera(worlds):
    _, truth = worlds["rstp"]
    cameras = {}
    for image in truth["images"].values():
        cameras.setdefault(image["id"], []).append(image["camera"])
    assert all(len(set(c)) == len(c) == 5 for c in cameras.values())


def test_captions_name_only_what_their_image_shows(worlds):
    """Every statement of every caption is about something its image shows (wrong colours are
    still about a visible item), and the view rules hold."""
    checked = 0
    for _, truth in worlds.values():
        for image in truth["images"].values():
            visible = {(s, f) for s, f, _ in image["visible"]}
            for mentions in image["mentions"]:
                for slot, field, value in mentions:
                    assert (slot, field) in visible, (image, slot, field)
                    checked += 1
                    if image["view"] == "back":
                        assert slot != "glasses" and value != "logo"
                    if slot == "bag" and image["view"] == "front" and value == "backpack":
                        assert ["bag", "color"] not in [m[:2] for m in mentions]
    assert checked > 1000


def test_hidden_items_are_not_visible():
    person = sample_person(np.random.default_rng(0))
    person.update(bag="backpack", glasses=True, pattern="logo", bag_hand=1)
    front = visible_attributes(person, "front", hidden=("lower", "shoes"))
    back = visible_attributes(person, "back", hidden=())
    assert ("bag", "type") in front and ("bag", "color") not in front  # the straps only
    assert ("shoes", "color") not in front and ("lower", "type") not in front
    assert ("glasses", "worn") not in back and ("upper", "pattern") not in back
    assert back[("bag", "color")] == person["bag_color"]
    person["bag"] = "handbag"
    assert ("bag", "type") not in visible_attributes(person, "right", hidden=())
    assert ("bag", "type") in visible_attributes(person, "left", hidden=())


def test_two_annotators_word_one_image_differently():
    rng = np.random.default_rng(1)
    person = sample_person(rng)
    visible = visible_attributes(person, "front", hidden=())
    texts = {write_caption(visible, "front", rng)[0] for _ in range(20)}
    assert len(texts) >= 15


def test_lookalikes_share_the_coarse_look_and_differ_in_detail(worlds):
    _, truth = worlds["cuhk"]
    looks = {}
    for pid, person in truth["people"].items():
        looks.setdefault(json.dumps({k: person[k] for k in COARSE}), []).append(person)
    twins = [group for group in looks.values() if len(group) > 1]
    assert twins
    fine = ("pattern", "shades", "shoe_type", "glasses", "belt", "build")
    assert all(any(a[k] != b[k] for k in fine) for a, b, *_ in twins)


def test_caption_ceiling_counts_ties_among_lookalikes(tmp_path):
    """A perfect reader cannot tell two people apart whose images show the same; one who differs
    in a stated attribute is ranked below."""
    seen = {"a": [["gender", "is", "man"], ["upper", "color", "red"]],
            "b": [["gender", "is", "man"], ["upper", "color", "red"]],
            "c": [["gender", "is", "man"], ["upper", "color", "blue"]]}
    pids = {"a": 1, "b": 2, "c": 3}
    world = {"images": {f"{k}.jpg": {"id": pids[k], "visible": v,
                                     "mentions": [[["upper", "color", "red" if k != "c" else
                                                    "blue"]]]} for k, v in seen.items()}}
    records = [SimpleNamespace(image_path=str(tmp_path / f"{k}.jpg"), pid=pids[k]) for k in seen]
    # a and b tie (each found first half of the time), c is unique
    expected = 100 * (0.5 + 0.5 + 1) / 3
    assert caption_ceiling(records, world, str(tmp_path)) == pytest.approx(expected)
    # in galleries of one person each (TEST.IDS_PER_GALLERY 1) nothing is confused
    assert caption_ceiling(records, world, str(tmp_path), ids_per_gallery=1) == pytest.approx(100)
    # galleries {a, b} and {c}: a and b still tie
    assert caption_ceiling(records, world, str(tmp_path), ids_per_gallery=2) == pytest.approx(
        expected)


def test_statistics_of_a_dataset_without_ground_truth_read_the_captions(tmp_path, worlds):
    """Real datasets have no world.json: the attributes come from the caption text and the ceiling
    is not computed."""
    data, _ = worlds["cuhk"]
    root = os.path.dirname(data.annotation_path)
    target = tmp_path / "CUHK-PEDES"
    target.mkdir()
    os.symlink(os.path.join(root, "imgs"), target / "imgs")
    os.symlink(data.annotation_path, target / "reid_raw.json")
    stats = dataset_statistics(CUHKPEDES(root=str(tmp_path)))
    assert stats["attributes_from"] == "caption text" and stats["caption_ceiling_R1"] is None
    assert stats["invisible_named"] is None
    assert stats["gender_named"] >= 0.95 and stats["no_shared_attribute"] <= 0.05


def test_text_mentions_read_colours_and_garments():
    said = text_mentions("A woman in a dark grey coat and black pants, carrying a red backpack.")
    assert {("gender", "is", "woman"), ("upper", "type", "coat"), ("upper", "color", "gray"),
            ("lower", "color", "black"), ("bag", "type", "backpack"),
            ("bag", "color", "red")} <= said


def test_preset_settings_are_checked():
    with pytest.raises(ConfigError, match="PRESET must be one of cuhk, icfg, rstp"):
        SyntheticSpec(preset="market")
    with pytest.raises(ConfigError, match="set DATASETS.SYNTHETIC.DOMAIN street"):
        SyntheticSpec(preset="cuhk", domain="web")
    # the plain world's settings, hence its cached folders, do not change
    assert "preset" not in SyntheticSpec()


def test_plain_world_keys_are_refused_with_a_preset():
    with pytest.raises(ConfigError, match="IMAGES_PER_ID is set, but the cuhk preset draws"):
        load_config(os.path.join(REPO, "configs", "CPCL", "synthetic.yml"),
                    ["DATASETS.SYNTHETIC.IMAGES_PER_ID", "5"])


def test_check_dataset_prints_a_preset_worlds_statistics_and_ceiling(worlds, capsys):
    data, _ = worlds["cuhk"]
    root = os.path.dirname(os.path.dirname(data.annotation_path))
    status, out, _ = _check_dataset_here(capsys, "CUHKPEDES", "--root", root, "--stats")
    assert status == 0
    ceiling = next(line for line in out.splitlines() if line.startswith("| caption ceiling"))
    assert 50 <= float(ceiling.split("|")[2]) <= 100
    assert "read from the ground truth" in out


def test_low_resolution_cameras_lose_detail_and_keep_the_image_size():
    """World v2's cameras see at full, three-quarter or half resolution (then upscaled): the image
    keeps the requested size and loses fine detail (less energy between neighbouring pixels)."""
    cameras = make_cameras(60, np.random.default_rng(0))
    assert {c["resolution"] for c in cameras} == {1.0, 0.75, 0.5}
    person = sample_person(np.random.default_rng(1))

    def detail(resolution):
        camera = dict(cameras[0], resolution=resolution, blur=0.0)
        image = render_view(person, "front", (), camera, np.random.default_rng(2), (128, 64))
        assert image.size == (64, 128)
        pixels = np.asarray(image, dtype=np.float64)
        return np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean()
    sharp, three_quarters, half = detail(1.0), detail(0.75), detail(0.5)
    assert sharp > three_quarters > half


def test_test_lookalikes_are_paired_within_the_galleries_the_evaluation_searches(tmp_path):
    """TEST.IDS_PER_GALLERY: the test split's lookalike pairs fall within one gallery, and the
    training split is the same as without galleries."""
    from cpcl_plugin.utils.galleries import gallery_parts
    spec = dict(SMALL, num_train_ids=20, num_test_ids=40, preset="cuhk")
    truths = {}
    for ids_per_gallery in (0, 8):
        out = tmp_path / str(ids_per_gallery)
        generate_synthetic_dataset(str(out),
                                   SyntheticSpec(**spec, test_gallery_ids=ids_per_gallery))
        with open(out / "world.json") as f:
            truths[ids_per_gallery] = json.load(f)
        with open(out / "reid_raw.json") as f:
            truths[ids_per_gallery]["entries"] = json.load(f)
    train = [[e for e in truths[g]["entries"] if e["split"] == "train"] for g in (0, 8)]
    assert train[0] == train[1]
    people = truths[8]["people"]
    test_ids = sorted({e["id"] for e in truths[8]["entries"] if e["split"] == "test"})
    gallery = {pid: g for g, part in enumerate(gallery_parts(len(test_ids), 8))
               for pid in (test_ids[i] for i in part)}
    looks = {}
    for pid in test_ids:
        looks.setdefault(json.dumps({k: people[str(pid)][k] for k in COARSE}), []).append(pid)
    pairs = [group for group in looks.values() if len(group) > 1]
    assert pairs and all(len({gallery[p] for p in group}) == 1 for group in pairs)
