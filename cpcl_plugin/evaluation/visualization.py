"""Ranked-list pictures, for tools/retrieve.py and the evaluator (TEST.VIS_TOPK).

One picture per query: the query caption; a summary line (the query's identity, its AP and the
rank of its first true match, when the identity is known); its top-k gallery images, best first,
framed green (same identity), red (another) or grey (unknown); and, when the identity is known,
its ground-truth images with their ranks. Under each image: rank, score, file name and identity
(when known). The text is PIL's bundled font at a size that follows the tile width. A folder of
pictures has an index.csv and an index.html listing its queries.
"""
import csv
import functools
import importlib.util
import html
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..data.datasets import load_image
from ..errors import DatasetError
from .metrics import average_precision, positive_ranks

__all__ = ["Tile", "draw_ranked_list", "draw_query", "wrap_text", "font", "font_for", "drawable",
           "label_font_size",
           "tile_lines", "new_picture_path", "write_picture_index", "THUMB_WIDTH",
           "INDEX_COLUMNS"]

THUMB_WIDTH = 128   # pixels; images are drawn twice as tall (pedestrians are tall)
# A query's text above the images; longer ones end in "…" (the encoder reads ~70 words anyway).
MAX_CAPTION_LINES = 4
COLORS = {True: (20, 160, 20), False: (210, 30, 30), None: (150, 150, 150)}
INDEX_COLUMNS = ("picture", "query", "identity", "AP", "first_true_match", "top1")


@dataclass
class Tile:
    """One gallery image in a picture."""
    image_path: str
    rank: int                        # 1-based rank in the whole gallery
    score: float                     # cosine similarity to the query
    correct: Optional[bool] = None   # same identity as the query; None: unknown
    identity: Optional[int] = None   # None: unknown


@functools.lru_cache(maxsize=None)
def font(size):
    """PIL's bundled font at `size` pixels: Pillow >= 10.1 with FreeType scales it. Without those,
    PIL's fixed bitmap font (about 11 pixels): the layout still follows `size`, the letters
    stay small. No font file is read, so this works on any machine."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


# Fonts tried in order for characters the bundled one lacks (file names and queries in other
# scripts), where the machine has them: DejaVu Sans (Latin, Greek, Cyrillic, Arabic, Hebrew, ...),
# then fonts with Chinese, Japanese and Korean. PIL finds a bare name in the system's font folders.
FALLBACK_FONTS = ("DejaVuSans.ttf", "NotoSansCJK-Regular.ttc", "NotoSansCJKsc-Regular.otf",
                  "wqy-microhei.ttc", "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf")
_NO_GLYPH = "\U000F0000"  # a private-use character: every font draws its "missing" box for it


def _font_files():
    files = list(FALLBACK_FONTS)
    matplotlib = importlib.util.find_spec("matplotlib")  # ships DejaVu Sans (the bench extra)
    if matplotlib and matplotlib.origin:
        files.insert(1, os.path.join(os.path.dirname(matplotlib.origin), "mpl-data", "fonts",
                                     "ttf", "DejaVuSans.ttf"))
    return files


@functools.lru_cache(maxsize=None)
def _fonts(size):
    """The bundled font at `size`, then every fallback font this machine has."""
    fonts = [font(size)]
    for name in _font_files():
        try:
            fonts.append(ImageFont.truetype(name, size))
        except OSError:  # not on this machine
            continue
    return fonts


def _drawing(f, ch):
    mask = f.getmask(ch)
    return mask.size, bytes(mask)


@functools.lru_cache(maxsize=None)
def _has_glyph(f, ch):
    return ch.isspace() or _drawing(f, ch) != _drawing(f, _NO_GLYPH)


def font_for(text, size):
    """The first font at `size` (bundled, then FALLBACK_FONTS) that draws every character of
    `text`; else the one that draws the most of them."""
    fonts = _fonts(size)
    chars = set(text)
    return max(fonts, key=lambda f: (sum(_has_glyph(f, c) for c in chars), -fonts.index(f)))


def drawable(text, f):
    """`text` with each character that font `f` cannot draw as "?" (rather than an empty box)."""
    return "".join(c if _has_glyph(f, c) else "?" for c in text)


def label_font_size(thumb_width):
    """Pixel size of the text under a tile `thumb_width` wide: 14 at the default 128."""
    return max(10, round(thumb_width / 9))


def _line_height(f):
    left, top, right, bottom = f.getbbox("Hgjy|")
    return int(bottom - min(top, 0) + max(2, (bottom - top) // 4))


def wrap_text(text, f, width):
    """Lines of `text` at most `width` pixels wide in font `f`. Words stay whole, separated by one
    space, never joined; only a word wider than a whole line is split across lines."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if f.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        if f.getlength(word) > width:  # wider than a whole line: split between characters
            *full, word = _split_chars(word, f, width)
            lines.extend(full)
        line = word
    if line:
        lines.append(line)
    return lines or [""]


def _at_most(lines, max_lines, f, width):
    """`lines` cut to `max_lines`, the last one ending in "…" (within `width`) when cut."""
    if len(lines) <= max_lines:
        return lines
    last = lines[max_lines - 1]
    while last and f.getlength(last + " …") > width:
        last = last[:-1]
    return lines[:max_lines - 1] + [last.rstrip() + " …"]


def _fit_name(name, f, width, max_lines=2):
    """A file name on at most `max_lines` lines of `width` pixels, split between characters; one
    too long keeps its start and its end (with the extension) around an ellipsis."""
    lines = wrap_text(name, f, width) if " " in name else _split_chars(name, f, width)
    if len(lines) <= max_lines:
        return lines
    tail = ""
    for ch in reversed(name):  # the longest end that fits after the ellipsis
        if f.getlength("…" + ch + tail) > width:
            break
        tail = ch + tail
    return lines[:max_lines - 1] + ["…" + tail]


def _split_chars(text, f, width):
    lines, line = [], ""
    for ch in text:
        if line and f.getlength(line + ch) > width:
            lines.append(line)
            line = ""
        line += ch
    return lines + [line] if line else lines or [""]


def tile_lines(tile, f, width, ground_truth=False):
    """The text under a tile: rank and score, the file name, the identity when known (in font
    `f`; see tile_font)."""
    rank = f"rank {tile.rank}" if ground_truth else f"#{tile.rank}"
    name = drawable(os.path.basename(tile.image_path), f)
    lines = [f"{rank}  {tile.score:.3f}"] + _fit_name(name, f, width)
    if tile.identity is not None:
        lines.append(f"id {tile.identity}")
    return lines


def tile_font(tile, size):
    """The font for a tile's text: one that draws its file name."""
    return font_for(os.path.basename(tile.image_path), size)


def _thumbnail(path, size):
    """The image as the model reads it (load_image: EXIF orientation, every PIL mode as 8-bit
    RGB), fitted into `size` without distortion (padded), or a grey box if unreadable."""
    try:
        return ImageOps.pad(load_image(path), size, color=(235, 235, 235))
    except DatasetError:
        return Image.new("RGB", size, (200, 200, 200))


def draw_ranked_list(caption, tiles, path, summary="", ground_truth=(), ground_truth_title="",
                     thumb_width=THUMB_WIDTH):
    """Write the picture of one query to `path` (PNG) and return `path`: the caption, the
    `summary` line, the `tiles` (top-k, best first) and, if any, the `ground_truth` tiles under
    `ground_truth_title`. Every size, the text's included, follows `thumb_width`."""
    w = thumb_width
    label_font = font(label_font_size(w))
    caption_font = font_for(caption, round(1.3 * label_font_size(w)))
    caption = drawable(caption, caption_font)
    # Line heights of the bundled fonts, whichever font draws a text: one grid for every picture.
    lh, ch = _line_height(label_font), _line_height(font(round(1.3 * label_font_size(w))))
    gap, border = max(6, w // 16), max(3, w // 25)
    tile_w, tile_h = w + 2 * border, 2 * w + 2 * border
    rows = [(f"top {len(tiles)}", list(tiles), False)]
    if ground_truth:
        rows.append((ground_truth_title, list(ground_truth), True))
    cols = max(len(r[1]) for r in rows)
    width = max(gap + cols * (tile_w + gap), 30 * label_font_size(w))
    text_w = width - 2 * gap
    caption_lines = _at_most(wrap_text(caption, caption_font, text_w), MAX_CAPTION_LINES,
                             caption_font, text_w)
    summary_lines = wrap_text(summary, label_font, text_w) if summary else []
    titles = [wrap_text(title, label_font, text_w) for title, _, _ in rows]
    tile_fonts = [[tile_font(t, label_font_size(w)) for t in row] for _, row, _ in rows]
    labels = [[tile_lines(t, f, tile_w, gt) for t, f in zip(row, fonts)]
              for (_, row, gt), fonts in zip(rows, tile_fonts)]
    label_h = [max(len(ls) for ls in row) * lh if row else 0 for row in labels]
    height = gap + len(caption_lines) * ch + len(summary_lines) * lh + gap
    height += sum(len(t) * lh + tile_h + h + gap for t, h in zip(titles, label_h))

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for line in caption_lines:
        draw.text((gap, y), line, fill=(0, 0, 0), font=caption_font)
        y += ch
    for line in summary_lines:
        draw.text((gap, y), line, fill=(60, 60, 60), font=label_font)
        y += lh
    y += gap
    for (_, row, _), title, row_labels, fonts, h in zip(rows, titles, labels, tile_fonts,
                                                        label_h):
        for line in title:
            draw.text((gap, y), line, fill=(60, 60, 60), font=label_font)
            y += lh
        for i, (tile, lines, tile_f) in enumerate(zip(row, row_labels, fonts)):
            left = gap + i * (tile_w + gap)
            draw.rectangle([left, y, left + tile_w - 1, y + tile_h - 1], fill=COLORS[tile.correct])
            canvas.paste(_thumbnail(tile.image_path, (w, 2 * w)), (left + border, y + border))
            for j, line in enumerate(lines):
                draw.text((left, y + tile_h + 1 + j * lh), line, fill=(0, 0, 0), font=tile_f)
        y += tile_h + h + gap
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def _ranks_text(ranks, limit=10):
    shown = ", ".join(str(r) for r in ranks[:limit])
    return shown + (f" and {len(ranks) - limit} more" if len(ranks) > limit else "")


def draw_query(caption, order, scores, image_paths, path, topk, gallery_ids=None, query_id=None,
               max_ground_truth=None, thumb_width=THUMB_WIDTH):
    """Draw one query's picture from its ranking and return its index row (INDEX_COLUMNS, and
    "summary": the identity / AP / first-true-match line written on the picture).

    `order`: gallery rows, best first; `scores`: their similarities, in that order. With the
    identities (`gallery_ids` per row, -1 where unknown, and `query_id`) `order` must be the whole
    gallery: the picture then adds the ground truth (up to `max_ground_truth`, default `topk`,
    best ranked first), the query's AP and the rank of its first true match."""
    order, scores = np.asarray(order), np.asarray(scores)
    ids = None if gallery_ids is None else np.asarray(gallery_ids)

    def tile(position):
        row = int(order[position])
        identity = None if ids is None or ids[row] < 0 else int(ids[row])
        correct = None if query_id is None or identity is None else identity == query_id
        return Tile(image_paths[row], position + 1, float(scores[position]), correct, identity)

    top = [tile(i) for i in range(min(topk, len(order)))]
    ranks, ap, truth, truth_title = np.zeros(0, int), None, [], ""
    if query_id is None:
        summary = "identity of the query unknown: grey frames"
    elif ids is None or not (ids >= 0).any():
        summary = f"identity {query_id}; the gallery's identities are unknown: grey frames"
    else:
        ranks = positive_ranks(order, ids, query_id)
        ap = average_precision(ranks)
        if len(ranks):
            beyond = f" (beyond the top {topk})" if ranks[0] > topk else ""
            summary = (f"identity {query_id}: AP {ap:.1f}%, first true match at rank "
                       f"{ranks[0]}{beyond} of {len(order)}")
            truth = [tile(r - 1) for r in ranks[:max_ground_truth or topk]]
            plural = "s" if len(ranks) > 1 else ""
            shown = f", best {len(truth)} shown" if len(truth) < len(ranks) else ""
            truth_title = (f"ground truth: {len(ranks)} image{plural} of identity {query_id} at "
                           f"rank{plural} {_ranks_text(ranks.tolist())}{shown}")
        else:
            summary = f"identity {query_id}: none of the {len(order)} gallery images has it"
    draw_ranked_list(caption, top, path, summary, truth, truth_title, thumb_width)
    return {"picture": path, "query": caption, "summary": summary,
            "identity": "" if query_id is None else query_id,
            "AP": "" if ap is None else f"{ap:.2f}",
            "first_true_match": int(ranks[0]) if len(ranks) else "",
            "top1": top[0].image_path if top else ""}


def new_picture_path(folder, prefix="query_"):
    """`folder`/`prefix`NNN.png with the next number free in `folder`, created (empty) here, so
    that no later query, in this run, another run or a concurrent one, overwrites a picture."""
    os.makedirs(folder, exist_ok=True)
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.png")
    taken = [int(m.group(1)) for m in map(pattern.fullmatch, os.listdir(folder)) if m]
    n = max(taken, default=0) + 1
    while True:
        path = os.path.join(folder, f"{prefix}{n:03d}.png")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # not 0o777
            return path
        except FileExistsError:
            n += 1


def _read_index(path):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
                return []  # another layout: start a new list (the pictures stay on disk)
            return list(reader)
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def write_picture_index(folder, rows, append=True):
    """Write `folder`/index.csv (INDEX_COLUMNS, one row per picture; `rows` added to the rows
    already there with `append`, replacing them otherwise) and `folder`/index.html (the same
    list, with the pictures). Returns the path of index.html."""
    os.makedirs(folder, exist_ok=True)
    csv_path, html_path = os.path.join(folder, "index.csv"), os.path.join(folder, "index.html")
    rows = [{k: row[k] for k in INDEX_COLUMNS} for row in rows]
    for row in rows:  # relative to the folder: the folder can be moved or served as it is
        row["picture"] = os.path.relpath(os.path.abspath(row["picture"]), os.path.abspath(folder))
    everything = (_read_index(csv_path) if append else []) + rows
    with open(csv_path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(everything)
    os.replace(csv_path + ".tmp", csv_path)
    items = []
    for row in everything:
        e = {k: html.escape(str(v), quote=True) for k, v in row.items()}
        facts = [f"identity {e['identity']}" if e["identity"] else "identity unknown"]
        if e["AP"]:
            facts.append(f"AP {e['AP']}%, first true match at rank {e['first_true_match']}")
        items.append(f'<li><p><b>{e["query"]}</b><br>{"; ".join(facts)}. '
                     f'<a href="{e["picture"]}">{e["picture"]}</a></p>'
                     f'<img src="{e["picture"]}" alt="{e["query"]}"></li>')
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Ranked lists</title>"
            "<style>body{font-family:sans-serif} img{max-width:100%}</style></head><body>\n"
            f"<h1>Ranked lists: {len(everything)} queries</h1>\n<p>The same list as "
            "<a href=\"index.csv\">index.csv</a>. Frames: green, same identity as the query; "
            "red, another; grey, unknown.</p>\n<ol>\n" + "\n".join(items) +
            "\n</ol>\n</body></html>\n")
    with open(html_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(html_path + ".tmp", html_path)
    return html_path
