"""Ranked-list pictures: a query caption above its top-k gallery images, each bordered green
(same identity), red (another identity) or grey (identity unknown), with rank and score."""
import os
import textwrap

from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_ranked_list", "ranked_list_size", "THUMB_SIZE"]

THUMB_SIZE = (96, 192)   # width, height of each gallery image (pedestrians are tall)
GAP = 8                  # pixels between and around images
BORDER = 5               # width of the correct / incorrect frame
TEXT_LINES = 3           # the caption is wrapped to at most this many lines
LINE_HEIGHT = 14
LABEL_HEIGHT = 16        # rank and score under each image
COLORS = {True: (20, 160, 20), False: (210, 30, 30), None: (150, 150, 150)}


def ranked_list_size(k):
    """(width, height) of the picture of a top-`k` list."""
    width = GAP + k * (THUMB_SIZE[0] + 2 * BORDER + GAP)
    height = GAP + TEXT_LINES * LINE_HEIGHT + GAP + THUMB_SIZE[1] + 2 * BORDER + LABEL_HEIGHT + GAP
    return max(width, 320), height


def draw_ranked_list(caption, image_paths, scores, correct, path):
    """Write the picture of one ranked list to `path` (PNG). `correct[i]` is True, False or None
    for the i-th image. Images that cannot be read are drawn as a grey box."""
    k = len(image_paths)
    width, height = ranked_list_size(k)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    chars_per_line = max(20, (width - 2 * GAP) // 6)
    lines = textwrap.wrap(caption, chars_per_line) or [""]
    if len(lines) > TEXT_LINES:
        lines = lines[:TEXT_LINES]
        lines[-1] = lines[-1][:chars_per_line - 3] + "..."
    for i, line in enumerate(lines):
        draw.text((GAP, GAP + i * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    top = GAP + TEXT_LINES * LINE_HEIGHT + GAP
    for i, (image_path, score, ok) in enumerate(zip(image_paths, scores, correct)):
        left = GAP + i * (THUMB_SIZE[0] + 2 * BORDER + GAP)
        draw.rectangle([left, top, left + THUMB_SIZE[0] + 2 * BORDER - 1,
                        top + THUMB_SIZE[1] + 2 * BORDER - 1], fill=COLORS[ok])
        try:
            with Image.open(image_path) as im:
                thumb = im.convert("RGB").resize(THUMB_SIZE)
        except (OSError, ValueError):
            thumb = Image.new("RGB", THUMB_SIZE, (200, 200, 200))
        canvas.paste(thumb, (left + BORDER, top + BORDER))
        draw.text((left, top + THUMB_SIZE[1] + 2 * BORDER + 2), f"#{i + 1}  {score:.3f}",
                  fill=(0, 0, 0), font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)
    return path
