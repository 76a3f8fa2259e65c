"""Ranked-list pictures (cpcl_plugin.evaluation.visualization) and the benchmark plots' row labels."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

import quality  # benchmarks/quality.py, on the path by conftest
from cpcl_plugin.evaluation import visualization
from cpcl_plugin.evaluation.visualization import (COLORS, Tile, draw_query, font, label_font_size,
                                       new_picture_path, tile_lines, wrap_text,
                                       write_picture_index)

CAPTION = ("a woman in a red coat and red shorts with long brown hair, carrying a navy backpack "
           "and a black umbrella")


def _gallery(folder, n=8):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"img_{i:02d}.png")
        Image.new("RGB", (32, 64), (40 * i % 255, 80, 120)).save(path)
        paths.append(path)
    return paths


def test_captions_wrap_within_the_width_without_joining_words():
    f = font(14)
    for width in (120, 300, 900):
        lines = wrap_text(CAPTION, f, width)
        assert " ".join(lines) == CAPTION  # every space kept: no two words run together
        assert all(f.getlength(line) <= width for line in lines)
    long_word = "x" * 80
    lines = wrap_text(f"short {long_word} end", f, 100)
    assert lines[0] == "short" and "".join(lines[1:-1]) + lines[-1].split()[0] == long_word
    assert all(f.getlength(line) <= 100 for line in lines)


def test_the_text_grows_with_the_tile():
    small, large = font(label_font_size(96)), font(label_font_size(256))
    assert label_font_size(128) == 14
    assert large.getlength("rank 12") > 2 * small.getlength("rank 12")  # PIL's scalable font


def test_each_tile_names_its_file_and_its_identity_when_known():
    f = font(14)
    known = tile_lines(Tile("/data/cam1/0363004.jpg", 3, 0.5, True, 188), f, 138)
    assert known == ["#3  0.500", "0363004.jpg", "id 188"]
    unknown = tile_lines(Tile("/photos/IMG_20240101_123456789_portrait_mode.jpg", 12, 0.25), f,
                         138, ground_truth=True)
    assert unknown[0] == "rank 12  0.250" and not any(line.startswith("id ") for line in unknown)
    assert len(unknown) == 3 and unknown[-1].endswith("mode.jpg")  # two lines, the end kept


def test_a_query_picture_shows_its_ground_truth_ap_and_first_true_match(tmp_path):
    paths = _gallery(str(tmp_path))
    ids = np.array([0, 1, 2, 3, 1, 4, 5, 1])
    order = np.array([0, 2, 3, 5, 4, 6, 1, 7])  # identity 1 at ranks 5, 7 and 8
    scores = np.linspace(0.9, 0.2, 8)
    row = draw_query(CAPTION, order, scores, paths, str(tmp_path / "q.png"), 3, gallery_ids=ids,
                     query_id=1)
    assert row["first_true_match"] == 5 and float(row["AP"]) == pytest.approx(
        100 * (1 / 5 + 2 / 7 + 3 / 8) / 3, abs=0.01)
    assert "first true match at rank 5 (beyond the top 3)" in row["summary"]
    with Image.open(row["picture"]) as im:
        pixels = np.asarray(im.convert("RGB"))
    half = pixels.shape[0] // 2
    green = np.all(pixels == COLORS[True], axis=2)
    red = np.all(pixels == COLORS[False], axis=2)
    assert red[:half].any() and not green[:half].any()  # the top 3 are all wrong ...
    assert green[half:].any()                            # ... the ground truth below is right
    plain = draw_query(CAPTION, order[:3], scores[:3], paths, str(tmp_path / "p.png"), 3)
    assert plain["AP"] == "" and "unknown" in plain["summary"]
    with Image.open(plain["picture"]) as im:
        assert im.height < pixels.shape[0]  # no ground-truth row without the identity


def test_pictures_are_never_overwritten_and_the_index_lists_every_query(tmp_path):
    paths = _gallery(str(tmp_path / "gallery"), 3)
    out = str(tmp_path / "out")
    rows = []
    for query in ("a man in <b>blue</b>", "a woman, in red"):
        picture = new_picture_path(out)
        rows.append(draw_query(query, np.arange(3), np.ones(3), paths, picture, 3))
        write_picture_index(out, rows[-1:], append=True)  # one run per query
    assert [os.path.basename(r["picture"]) for r in rows] == ["query_001.png", "query_002.png"]
    with open(os.path.join(out, "index.csv"), newline="") as f:
        listed = list(csv.DictReader(f))
    assert [r["query"] for r in listed] == ["a man in <b>blue</b>", "a woman, in red"]
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert 'src="query_001.png"' in page and 'src="query_002.png"' in page
    assert "a man in &lt;b&gt;blue&lt;/b&gt;" in page  # query text is shown, not interpreted


def test_plot_labels_say_what_a_row_is():
    assert quality.plot_label("oracle", one_line=True) == "supervised upper bound"
    for row in quality.ROWS:
        label = quality.plot_label(row)
        assert row not in label.replace("\n", " ").split(), (row, label)


@pytest.mark.parametrize("words", [300, 2000])
def test_a_long_query_is_cut_to_a_few_lines_ending_in_an_ellipsis(tmp_path, words):
    paths = _gallery(str(tmp_path / "gallery"), 3)
    order, scores = np.arange(3), np.array([0.9, 0.5, 0.1])
    long_query = " ".join(["a woman in a red coat with a black backpack"] * (words // 10))
    short = draw_query(CAPTION, order, scores, paths, str(tmp_path / "s.png"), 3)
    cut = draw_query(long_query, order, scores, paths, str(tmp_path / "l.png"), 3)
    with Image.open(short["picture"]) as s, Image.open(cut["picture"]) as c:
        assert c.width == s.width and s.height < c.height < 1.5 * s.height
    f = font(round(1.3 * label_font_size(128)))
    lines = visualization._at_most(wrap_text(long_query, f, 500), 4, f, 500)
    assert len(lines) == 4 and lines[-1].endswith(" …")
    assert all(f.getlength(line) <= 500 for line in lines)
    assert visualization._at_most(["one", "two"], 4, f, 500) == ["one", "two"]


def test_names_in_other_scripts_are_drawn_or_marked_never_as_empty_boxes(tmp_path):
    from cpcl_plugin.evaluation.visualization import drawable, font_for
    size = label_font_size(128)
    cyrillic, greek = "фото_камера1.png", "εικόνα_2.png"
    for name in (cyrillic, greek, "plain_ascii.jpg"):
        f = font_for(name, size)
        if drawable(name, f) != name:
            pytest.skip("no font on this machine draws Cyrillic and Greek (DejaVu Sans)")
    # A character no font draws (private use) is marked "?", the rest drawn.
    f = font_for("a\U000F0001b", size)
    assert drawable("a\U000F0001b", f) == "a?b"
    # The picture of a gallery of such names, end to end.
    paths = []
    for i, name in enumerate((cyrillic, greek, "照片.png")):
        paths.append(str(tmp_path / name))
        Image.new("RGB", (32, 64), (40 * i, 80, 120)).save(paths[-1])
    row = draw_query("девушка в красном пальто", np.arange(3), np.array([0.9, 0.5, 0.1]),
                     paths, str(tmp_path / "q.png"), 3)
    with Image.open(row["picture"]) as im:
        assert im.height > 0
