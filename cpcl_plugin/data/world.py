"""Preset worlds: synthetic targets shaped like CUHK-PEDES, ICFG-PEDES and RSTPReid.

The figures they copy are the real datasets' published ones (docs/design.md, section 3): views
per person, captions per image, caption length, cameras. Where the real data's
difficulty comes from, the world has it too:

- People are richer than the words. Besides the coarse attributes captions name (gender, hair,
  hat, each garment with its colour, shoes, what is carried), each person has fine details that
  images show and captions rarely name: a pattern or a logo, the shade of a garment, the shoe type,
  glasses, a belt, a body build. A share of people copy another person's coarse attributes and
  differ only in these details: lookalikes.
- Captions are written as annotators write them: each describes the whole visible person, in the
  annotator's own wording, order and sentence shape. Mentions are sometimes omitted and a few
  colours are wrong (a neighbouring colour). A caption names only what its image shows: from the
  front a backpack is its straps, a logo is not seen from the back, glasses not from behind, shoes
  not below a crop or an occluder.
- Each camera has its own background, floor, light, colour cast, noise and resolution; a person's
  images come from different cameras, in front, back and side views, with varying scale, crop,
  pose and occlusion.

The generator records its ground truth in `world.json` beside `reid_raw.json`: each person's
attributes, and per image its camera, view, what is visible and what each caption states. Training
never reads it: the statistics and the caption ceiling (data/statistics.py) do.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..utils.galleries import gallery_parts
from .palette import COLORS, HAIR_COLORS, SKIN_TONES, a_or_an, sample_identity, shade

__all__ = ["PRESETS", "sample_person", "lookalike_of", "visible_attributes", "write_caption",
           "render_view", "make_cameras", "draw_views", "generate_world", "COARSE"]

# Per preset: views per person as (count, weight) pairs, captions per image (by different
# annotators), cameras in the world and the captions' length style. CUHK-PEDES: about 3.1 images
# per person, 2 captions each, 23.5 words; ICFG-PEDES: about 11 images (MSMT17, 15 cameras), one
# caption of about 37 words; RSTPReid: exactly 5 images from different cameras, 2 captions each.
PRESETS = {
    "cuhk": dict(views=((2, 0.30), (3, 0.40), (4, 0.20), (5, 0.10)), captions_per_image=2,
                 cameras=10, style="short"),
    "icfg": dict(views=tuple((n, 1.0) for n in range(7, 16)), captions_per_image=1, cameras=15,
                 style="long"),
    "rstp": dict(views=((5, 1.0),), captions_per_image=2, cameras=15, style="short"),
}
# Bump when the drawing or the wording of the preset worlds changes (cached sets are redrawn).
WORLD_VERSION = "2"
# Share of people drawn as the lookalike of an earlier person of the same split who has none yet
# (lookalikes come in pairs, as chance makes them; about twice this share has one).
LOOKALIKE_SHARE = 0.2
# The attributes a caption can name (the rest are fine details, named rarely or never).
COARSE = ("gender", "hair_long", "hair_color", "hat", "hat_color", "upper", "upper_color",
          "lower", "lower_color", "shoes_color", "bag", "bag_color")
PATTERNS = ("plain", "stripes", "check", "logo")
SHOE_TYPES = ("sneakers", "boots", "leather shoes")


def sample_person(rng):
    """One person: the coarse attributes captions name and the fine details they rarely do."""
    person = sample_identity(rng, hat_share=0.25)
    person.update({
        "pattern": str(rng.choice(PATTERNS, p=[0.5, 0.2, 0.1, 0.2])),
        "pattern_color": str(rng.choice(["white", "black", "yellow", "red"])),
        "shades": [float(v) for v in rng.uniform(0.75, 1.2, size=3)],  # upper, lower, bag
        "shoe_type": str(rng.choice(SHOE_TYPES)),
        "glasses": bool(rng.random() < 0.25),
        "belt": bool(rng.random() < 0.3),
        "bag_hand": 1 if rng.random() < 0.5 else -1,  # the image side a handbag is carried on
        "build": [float(rng.uniform(0.85, 1.2)), float(rng.uniform(0.9, 1.04))],  # width, height
    })
    return person


def lookalike_of(person, rng):
    """A new person with `person`'s coarse attributes and fine details of their own."""
    other = sample_person(rng)
    other.update({k: person[k] for k in COARSE})
    return other


def draw_views(preset, rng):
    counts, weights = zip(*PRESETS[preset]["views"])
    return int(rng.choice(counts, p=np.asarray(weights) / sum(weights)))


# -- what an image shows --------------------------------------------------------------------------

def visible_attributes(person, view, hidden):
    """{(slot, field): value} of what an image of `person` in `view` shows; `hidden` names the
    slots an occluder or a crop hides ("lower", "shoes")."""
    out = {("gender", "is"): person["gender"], ("hair", "length"): "long" if person["hair_long"]
           else "short", ("hair", "color"): person["hair_color"],
           ("hat", "type"): person["hat"] or "none",
           ("upper", "type"): person["upper"], ("upper", "color"): person["upper_color"]}
    if person["hat"]:
        out[("hat", "color")] = person["hat_color"]
    if view != "back":  # glasses are seen from the front and the side
        out[("glasses", "worn")] = person["glasses"]
    if person["pattern"] != "logo" or view == "front":  # a logo is on the front only
        out[("upper", "pattern")] = person["pattern"]
    if "lower" not in hidden:
        out[("lower", "type")] = person["lower"]
        out[("lower", "color")] = person["lower_color"]
        if person["upper"] != "coat" and view != "back":
            out[("belt", "worn")] = person["belt"]
    if "shoes" not in hidden:
        out[("shoes", "color")] = person["shoes_color"]
        out[("shoes", "type")] = person["shoe_type"]
    bag = person["bag"]
    if bag is None:
        out[("bag", "type")] = "none"
    elif bag == "backpack" and view == "front":
        out[("bag", "type")] = "backpack"  # its straps; the colour is not seen
    elif bag == "handbag" and {"left": -1, "right": 1}.get(view) == person["bag_hand"]:
        pass  # carried on the far side: hidden behind the body
    else:
        out[("bag", "type")] = bag
        out[("bag", "color")] = person["bag_color"]
    return out


# -- captions, as annotators write them -----------------------------------------------------------

# Colours an annotator may name instead (light, shade and memory blur neighbouring colours).
NEIGHBOUR_COLORS = {
    "black": ["navy", "gray"], "white": ["gray"], "gray": ["black", "white"], "red": ["orange",
    "pink"], "blue": ["navy", "purple"], "green": ["blue"], "yellow": ["orange"], "orange":
    ["red", "yellow"], "purple": ["blue", "pink"], "pink": ["red", "purple"], "brown":
    ["black", "orange"], "navy": ["black", "blue"], "blonde": ["brown"]}
COLOR_WORDS = {"gray": ["gray", "grey"], "navy": ["navy", "dark blue", "navy blue"],
               "blonde": ["blonde", "light"]}
NOUNS = {"woman": ["woman", "lady", "girl", "young woman", "female"],
         "man": ["man", "guy", "young man", "male", "gentleman"]}
GARMENT_WORDS = {"t-shirt": ["t-shirt", "tee shirt", "short sleeved shirt"],
                 "shirt": ["shirt", "button up shirt", "collared shirt"],
                 "jacket": ["jacket", "zip up jacket"], "coat": ["coat", "long coat"],
                 "sweater": ["sweater", "jumper", "pullover"],
                 "trousers": ["trousers", "pants", "slacks"], "jeans": ["jeans", "denim pants"],
                 "shorts": ["shorts"], "skirt": ["skirt"],
                 "cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat"],
                 "backpack": ["backpack", "back pack"], "handbag": ["handbag", "purse"],
                 "shoulder bag": ["shoulder bag", "messenger bag"],
                 "sneakers": ["sneakers", "trainers"], "boots": ["boots"],
                 "leather shoes": ["leather shoes", "dress shoes"]}
PATTERN_WORDS = {"stripes": ["striped", "stripy"], "check": ["plaid", "checkered"]}
POSES = {"front": ["walking towards the camera", "walking forward", "standing"],
         "back": ["walking away from the camera", "walking away", "standing with the back to us"],
         "left": ["walking to the left", "walking sideways", "standing"],
         "right": ["walking to the right", "walking sideways", "standing"]}
# How often an annotator names what is visible, per slot: coarse items nearly always, fine details
# rarely. The "long" style (ICFG-PEDES) names more and says more about each item.
NAMED = {"short": {"hat_none": 0.15, "glasses": 0.3, "pattern": 0.35, "belt": 0.1,
                   "shoe_type": 0.3, "bag_none": 0.3, "omit": 0.06, "pose": 0.6},
         "long": {"hat_none": 0.4, "glasses": 0.6, "pattern": 0.6, "belt": 0.3,
                  "shoe_type": 0.6, "bag_none": 0.6, "omit": 0.04, "pose": 0.9}}
# Share of colour mentions that name a neighbouring colour instead.
WRONG_COLOR = 0.04


def _pick(rng, options):
    return str(options[int(rng.integers(len(options)))])


def _word(rng, value):
    return _pick(rng, COLOR_WORDS.get(value) or GARMENT_WORDS.get(value)
                 or PATTERN_WORDS.get(value) or [value])


PLURAL = {"trousers", "pants", "slacks", "jeans", "denim pants", "shorts", "bottoms", "sneakers",
          "trainers", "boots", "leather shoes", "dress shoes", "shoes"}


def write_caption(visible, view, rng, style="short"):
    """One annotator's caption of an image in `view` showing `visible` ({(slot, field): value}).

    Returns (text, mentions): mentions are the [slot, field, value] the caption states, wrong
    colours included, so a reader of the caption can be scored against the truth."""
    named = NAMED[style]
    mentions = []

    def say(slot, field, p=1.0):
        """The words naming what the image shows of (slot, field), or None: named with
        probability p less the annotator's omissions, sometimes as a neighbouring colour."""
        if (slot, field) not in visible or rng.random() >= p * (1 - named["omit"]):
            return None
        value = visible[(slot, field)]
        if field == "color" and value in NEIGHBOUR_COLORS and rng.random() < WRONG_COLOR:
            value = _pick(rng, NEIGHBOUR_COLORS[value])
        mentions.append([slot, field, value])
        return _word(rng, value)

    def thing(color, kind):
        words = " ".join(w for w in (color, kind) if w)
        return words if kind in PLURAL else a_or_an(words)

    v = visible
    gender = v[("gender", "is")]
    if rng.random() < 0.99:  # the gender is nearly always named
        mentions.append(["gender", "is", gender])
        subject, he, his = _pick(rng, NOUNS[gender]), *{"woman": ("she", "her"),
                                                         "man": ("he", "his")}[gender]
    else:
        subject, he, his = _pick(rng, ["person", "pedestrian"]), "they", "their"

    def garment(slot):
        if (slot, "type") not in v:
            return None
        color = say(slot, "color")
        pattern = None
        if v.get((slot, "pattern")) in PATTERN_WORDS:
            pattern = say(slot, "pattern", named["pattern"])
        kind = say(slot, "type") or ({"upper": "top", "lower": "bottoms"}[slot]
                                     if color or pattern else None)
        if kind is None:
            return None
        words = thing(" ".join(w for w in (color, pattern) if w), kind)
        if slot == "upper" and v.get((slot, "pattern")) == "logo" and say(slot, "pattern",
                                                                          named["pattern"]):
            words += _pick(rng, [" with a logo on the front", " with a print on it"])
        if style == "long":  # a clause more about the garment's cut or fit
            short = v[(slot, "type")] in ("t-shirt", "shorts", "skirt")
            words += _pick(rng, {"upper": [" with short sleeves" if short else
                                           " with long sleeves", " that fits loosely",
                                           " that looks new"],
                                 "lower": [" above the knees" if short else " down to the ankles",
                                           " of a plain cut", " that fit well"]}[slot])
        return words

    hair = None
    length, color = say("hair", "length"), say("hair", "color")
    if length or color:
        hair = " ".join(w for w in (length, color) if w) + " hair"
    extras = []
    if v[("hat", "type")] != "none":
        color, kind = say("hat", "color"), say("hat", "type")
        if kind:
            extras.append(thing(color, kind))
    elif say("hat", "type", named["hat_none"]):
        extras.append("no hat")
    if v.get(("glasses", "worn")) and say("glasses", "worn", named["glasses"]):
        extras.append("glasses")
    upper, lower = garment("upper"), garment("lower")
    if v.get(("belt", "worn")) and say("belt", "worn", named["belt"]):
        extras.append("a belt")
    shoes = None
    if ("shoes", "color") in v:
        color, kind = say("shoes", "color"), say("shoes", "type", named["shoe_type"])
        if color or kind:
            shoes = " ".join(w for w in (color, kind or "shoes") if w)
    bag = None
    kind = v.get(("bag", "type"))
    if kind == "none":
        if say("bag", "type", named["bag_none"]):
            bag = _pick(rng, ["is not carrying anything", "has nothing in hand",
                              "carries no bag"])
    elif kind == "backpack" and ("bag", "color") not in v:  # seen from the front: the straps
        if say("bag", "type", 0.5):
            bag = _pick(rng, [f"has backpack straps over {his} shoulders",
                              "wears a backpack, only its straps visible"])
    elif kind:
        color, word = say("bag", "color"), say("bag", "type")
        if word:
            item = thing(color, word)
            where = {"handbag": f"holds {item} in {his} hand",
                     "backpack": f"has {item} on {his} back"}.get(kind,
                                                                  f"has {item} over {his} shoulder")
            bag = _pick(rng, [f"is carrying {item}", f"carries {item}", where])
    pose = _pick(rng, POSES[view]) if rng.random() < named["pose"] else None

    wear = [w for w in (upper, lower, shoes) if w]
    sentences = []
    opening = _pick(rng, ["A", "The", "This"])
    shape = int(rng.integers(4))
    if shape == 0:    # "A woman with long black hair is walking. She is wearing ..."
        sentences.append(f"{opening} {subject}" + (f" with {hair} is {pose}" if hair and pose
                                                   else f" has {hair}" if hair
                                                   else f" is {pose or 'walking'}"))
        if wear:
            sentences.append(f"{he} is wearing {_join(wear)}")
        if extras:
            sentences.append(f"{he} also wears {_join(extras)}")
        if bag:
            sentences.append(f"{he} {bag}")
    elif shape == 1:  # "The man wears a blue jacket and black jeans. He has short hair and ..."
        sentences.append(f"{opening} {subject} " + (f"wears {_join(wear)}" if wear
                                                    else f"is {pose or 'walking'}"))
        rest = [r for r in (f"has {hair}" if hair else None, bag) if r]
        if rest:
            sentences.append(f"{he} {_join(rest)}")
        if extras:
            sentences.append(f"{he} also wears {_join(extras)}")
        if pose and wear:
            sentences.append(f"{he} is {pose}")
    elif shape == 2:  # "This girl is wearing ... and has long hair. She carries ..."
        sentences.append(f"{opening} {subject} is wearing "
                         + (_join(wear + extras) if wear or extras else "plain clothes")
                         + (f" and has {hair}" if hair else ""))
        if bag:
            sentences.append(f"{he} {bag}")
        if pose:
            sentences.append(f"{he} is {pose}")
    else:             # "Young woman, long brown hair, a red coat, black pants, carries a bag."
        sentences.append(", ".join([subject] + ([hair] if hair else []) + wear + extras
                                   + ([bag] if bag else [])))
        if pose:
            sentences.append(f"{he} is {pose}")
    return ". ".join(s[0].upper() + s[1:] for s in sentences) + ".", mentions


def _join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# -- cameras and drawing --------------------------------------------------------------------------

def make_cameras(count, rng):
    """`count` cameras, each with its own background, floor, structures, light, colour cast and
    resolution. CUHK-PEDES pools five re-id sets (CUHK03, Market-1501, SSM, VIPeR, CUHK01) whose
    cameras differ this much: dim and bright, tinted, and sharp or upscaled from far smaller crops
    (VIPeR's are 128x48), so each camera here sees at full size, three-quarters or half of it,
    drawn at random (WORLD_VERSION 2; version 1's cameras differed less than those sets' do)."""
    cameras = []
    for _ in range(count):
        outdoor = bool(rng.random() < 0.6)
        base = rng.uniform(60, 170)
        cameras.append({
            "outdoor": outdoor,
            "wall": [float(base + d) for d in rng.uniform(-25, 25, size=3)],
            "floor": [float(rng.uniform(50, 150) + d) for d in rng.uniform(-10, 10, size=3)],
            "floor_y": float(rng.uniform(90, 118)),
            "structures": [[float(rng.uniform(0, 64)), float(rng.uniform(3, 14)),
                            float(rng.uniform(40, 200))] for _ in range(int(rng.integers(0, 4)))],
            "light": float(rng.uniform(0.45, 1.35) if outdoor else rng.uniform(0.55, 1.1)),
            "cast": [float(c) for c in rng.uniform(0.8, 1.2, size=3)],
            "noise": float(rng.uniform(3, 14)),
            "resolution": float(rng.choice([1.0, 0.75, 0.5])),
            "blur": float(rng.uniform(0.0, 0.6)),
            "side_views": float(rng.uniform(0.15, 0.45)),
        })
    return cameras


def draw_view_and_damage(camera, rng):
    """The view of one image from `camera`, and which slots an occluder or a crop hides."""
    if rng.random() < camera["side_views"]:
        view = "left" if rng.random() < 0.5 else "right"
    else:
        view = "front" if rng.random() < 0.55 else "back"
    r = rng.random()
    hidden = ("lower", "shoes") if r < 0.05 else ("shoes",) if r < 0.18 else ()
    return view, hidden


def render_view(person, view, hidden, camera, rng, size):
    """One image (H, W) = size of `person` seen from `view` by `camera`; `hidden` slots are
    covered by an occluder or cut off by the crop."""
    ch, cw = 128, 64  # drawing units; resized at the end
    wall, floor = np.asarray(camera["wall"]), np.asarray(camera["floor"])
    fy = int(camera["floor_y"])
    canvas = np.empty((ch, cw, 3), np.float32)
    canvas[:fy] = wall
    canvas[fy:] = floor
    canvas += rng.normal(0, 6, canvas.shape)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for x, w, g in camera["structures"]:  # poles, doors, windows: fixed per camera
        draw.rectangle([x, 0, x + w, fy], fill=(int(g), int(g * 0.97), int(g * 0.93)))

    s = rng.uniform(0.65, 1.0)
    bw, bh = person["build"]
    cx = cw / 2 + rng.uniform(-8, 8)
    top = rng.uniform(2, 8) + (1 - s) * 40

    def Y(v):
        return top + v * s * bh

    def X(v):
        return cx + v * s * bw

    sh = person["shades"]
    skin = SKIN_TONES[person["skin"]]
    hair = HAIR_COLORS[person["hair_color"]]
    upper = shade(COLORS[person["upper_color"]], sh[0])
    lower = shade(COLORS[person["lower_color"]], sh[1])
    bag_c = shade(COLORS[person["bag_color"]], sh[2])
    shoes = COLORS[person["shoes_color"]]
    side = {"left": -1, "right": 1}.get(view, 0)  # facing direction in side views
    half = 7 if side else 11  # torso half-width
    leg = rng.uniform(0, 6)
    arm = rng.uniform(-5, 5)
    bag = person["bag"]

    if bag == "backpack" and side:  # sticks out behind the back
        xs = sorted((-side * half - side * 8, -side * half))
        draw.rectangle([X(xs[0]), Y(28), X(xs[1]), Y(56)], fill=bag_c)
    if bag == "backpack" and view == "front":
        draw.rectangle([X(-13), Y(28), X(13), Y(58)], fill=shade(bag_c, 0.8))
    if person["hair_long"]:
        xs = sorted((-8 * side, 0)) if side else (-8, 8)
        draw.rectangle([X(xs[0]), Y(10), X(xs[1]), Y(34)], fill=hair)
    # legs: (hip x0, hip x1, foot x0, foot x1), in stride
    if side:
        legs = [(-4, 4, -4 - leg, 4 - leg), (-4, 4, -4 + leg, 4 + leg)]
    else:
        legs = [(-half + 2, -1, -8 - leg, -2 - leg), (1, half - 2, 2 + leg, 8 + leg)]
    length = {"shorts": 82, "skirt": 86}.get(person["lower"], 112)
    if person["lower"] == "skirt":
        draw.polygon([(X(-half + 2), Y(62)), (X(half - 2), Y(62)), (X(half + 2), Y(86)),
                      (X(-half - 2), Y(86))], fill=lower)
    else:
        draw.rectangle([X(-half + 2), Y(62), X(half - 2), Y(70)], fill=lower)
    for h0, h1, f0, f1 in legs:
        if person["lower"] != "skirt":
            draw.polygon([(X(h0), Y(68)), (X(h1), Y(68)), (X(f1), Y(length)), (X(f0), Y(length))],
                         fill=lower)
        if length < 112:
            draw.rectangle([X(f0 + 1), Y(length), X(f1 - 1), Y(112)], fill=skin)
        toe = 3 * side
        top_shoe = 106 if person["shoe_type"] == "boots" else 111
        draw.rectangle([X(min(f0 - 1, f0 + toe)), Y(top_shoe), X(max(f1 + 1, f1 + toe)), Y(117)],
                       fill=shoes)
        if person["shoe_type"] == "sneakers":
            draw.line([X(f0 - 1), Y(117), X(f1 + 1), Y(117)], fill=(235, 235, 235), width=1)
    # torso
    bottom = 78 if person["upper"] == "coat" else 64
    draw.polygon([(X(-half), Y(26)), (X(half), Y(26)), (X(half - 1), Y(bottom)),
                  (X(-half + 1), Y(bottom))], fill=upper)
    pattern = person["pattern"]
    pc = COLORS[person["pattern_color"]] if person["pattern_color"] != person["upper_color"] \
        else shade(upper, 0.5)
    if pattern == "stripes":
        for yy in range(30, bottom, 6):
            draw.line([X(-half + 1), Y(yy), X(half - 1), Y(yy)], fill=pc, width=2)
    elif pattern == "check":
        for yy in range(30, bottom, 7):
            draw.line([X(-half + 1), Y(yy), X(half - 1), Y(yy)], fill=pc, width=1)
        for xx in range(-half + 3, half, 6):
            draw.line([X(xx), Y(27), X(xx), Y(bottom - 1)], fill=pc, width=1)
    elif pattern == "logo" and view == "front":
        draw.rectangle([X(-4), Y(34), X(4), Y(42)], fill=pc)
    if person["upper"] == "jacket" and view == "front":
        draw.line([X(0), Y(27), X(0), Y(63)], fill=shade(upper, 0.5), width=2)
    if person["upper"] == "shirt" and view == "front":
        draw.polygon([(X(-4), Y(26)), (X(4), Y(26)), (X(0), Y(33))], fill=(240, 240, 240))
    if person["belt"] and person["upper"] != "coat" and view != "back":
        draw.rectangle([X(-half + 1), Y(62), X(half - 1), Y(64)], fill=(30, 25, 20))
    sleeve = 36 if person["upper"] == "t-shirt" else 60
    if side:  # one arm, swinging
        draw.rectangle([X(-3 + arm), Y(28), X(3 + arm), Y(sleeve)], fill=shade(upper, 0.85))
        if sleeve < 60:
            draw.rectangle([X(-3 + arm), Y(sleeve), X(3 + arm), Y(60)], fill=skin)
    for arm_side in (() if side else (-1, 1)):
        x_out = 15 * arm_side
        draw.polygon([(X(11 * arm_side), Y(27)), (X(x_out), Y(28)),
                      (X(x_out + arm * arm_side), Y(sleeve)),
                      (X(11 * arm_side + arm * arm_side), Y(sleeve))], fill=shade(upper, 0.9))
        if sleeve < 60:
            draw.rectangle([X(min(x_out, 11 * arm_side) + arm * arm_side), Y(sleeve),
                            X(max(x_out, 11 * arm_side) + arm * arm_side), Y(60)], fill=skin)
    if bag == "backpack" and view == "back":
        draw.rectangle([X(-9), Y(30), X(9), Y(56)], fill=bag_c)
    elif bag == "backpack" and view == "front":
        for xx in (-6, 6):
            draw.line([X(xx), Y(27), X(xx), Y(48)], fill=bag_c, width=2)
    elif bag == "handbag" and side != person["bag_hand"]:  # on the far side it is hidden
        hand = person["bag_hand"]
        reach = (2 * side + arm) if side else (14 + arm) * hand
        draw.rectangle([X(reach - 4), Y(58), X(reach + 4), Y(70)], fill=bag_c)
    elif bag == "shoulder bag":
        draw.line([X(-half), Y(27), X(half), Y(56)], fill=shade(bag_c, 0.7), width=2)
        draw.rectangle([X(half - 4), Y(52), X(half + 4), Y(64)], fill=bag_c)
    # head
    draw.rectangle([X(-3), Y(20), X(3), Y(27)], fill=skin)
    face_x = 2 * side
    draw.ellipse([X(-7 + face_x), Y(4), X(7 + face_x), Y(22)],
                 fill=hair if view == "back" else skin)
    draw.chord([X(-7), Y(3), X(7), Y(17)], 180, 360, fill=hair)
    if side:  # the back of the head is hair
        draw.rectangle([X(min(-7 * side, -2 * side)), Y(8), X(max(-7 * side, -2 * side)), Y(18)],
                       fill=hair)
    if person["glasses"] and view != "back":
        if side:
            draw.line([X(2 * side), Y(12), X(7 * side + face_x), Y(12)], fill=(20, 20, 20),
                      width=2)
        else:
            draw.line([X(-5), Y(12), X(5), Y(12)], fill=(20, 20, 20), width=2)
    if person["hat"] == "cap":
        hc = COLORS[person["hat_color"]]
        draw.chord([X(-8), Y(1), X(8), Y(15)], 180, 360, fill=hc)
        brim = (X(-2), X(11)) if view == "front" or side > 0 else (X(-11), X(2))
        if view != "back":
            draw.rectangle([brim[0], Y(7), brim[1], Y(9)], fill=hc)
    elif person["hat"] == "beanie":
        draw.chord([X(-8), Y(-1), X(8), Y(17)], 180, 360, fill=COLORS[person["hat_color"]])

    # what hides the legs: a low wall, a car, a passer-by; or the crop ends at the knees
    if "lower" in hidden:
        oy = int(rng.uniform(58, 66) * s + top)
        draw.rectangle([0, oy, cw, ch], fill=COLORS[_pick(rng, list(COLORS))])
    elif "shoes" in hidden:
        if rng.random() < 0.5:
            oy = int(Y(rng.uniform(96, 104)))
            draw.rectangle([0, oy, cw, ch], fill=shade(COLORS[_pick(rng, list(COLORS))], 0.7))
        else:  # cropped above the feet: drawn, then cut off and stretched
            img = img.crop((0, 0, cw, int(Y(100)))).resize((cw, ch), Image.BILINEAR)
    if rng.random() < 0.1:  # a pole or a passer-by's shoulder at one side, hiding little
        ox = 0 if rng.random() < 0.5 else cw - 8
        draw = ImageDraw.Draw(img)
        draw.rectangle([ox, int(rng.uniform(20, 90)), ox + 8, ch],
                       fill=COLORS[_pick(rng, list(COLORS))])
    arr = np.asarray(img, dtype=np.float32)
    light = camera["light"] * rng.uniform(0.9, 1.1) * np.asarray(camera["cast"])
    arr = np.clip(arr * light[None, None, :] + rng.normal(0, camera["noise"], arr.shape), 0, 255)
    out = Image.fromarray(arr.astype(np.uint8))
    if rng.random() < camera["blur"]:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    H, W = size
    if camera["resolution"] < 1:  # a low-resolution camera: detail lost, then upscaled
        small = (max(1, int(W * camera["resolution"])), max(1, int(H * camera["resolution"])))
        out = out.resize(small, Image.BILINEAR)
    if out.size != (W, H):
        out = out.resize((W, H), Image.BILINEAR)
    return out


def generate_world(out_dir, spec):
    """Draw the preset world `spec` into `out_dir`/imgs; returns (entries of reid_raw.json, the
    ground truth for world.json)."""
    preset = PRESETS[spec["preset"]]
    rng = np.random.default_rng(spec["seed"])
    cameras = make_cameras(preset["cameras"], rng)
    entries, people, images = [], {}, {}
    pid = 0
    for split in ("train", "val", "test"):
        n_ids = spec[f"num_{split}_ids"]
        os.makedirs(os.path.join(out_dir, "imgs", split), exist_ok=True)
        # Lookalikes of the evaluated splits are paired within the galleries the evaluation
        # searches (TEST.IDS_PER_GALLERY), so that each has the split's lookalike rate.
        ids_per_gallery = spec.get("test_gallery_ids", 0) if split != "train" else 0
        gallery_starts = {int(part[0]) for part in gallery_parts(n_ids, ids_per_gallery)
                          if len(part)}
        single = []  # people of this split (or of this gallery) without a lookalike yet
        for i in range(n_ids):
            if i in gallery_starts:
                single = []
            pid += 1  # CUHK-PEDES ids are 1-based
            if single and rng.random() < LOOKALIKE_SHARE:  # pairs: a twin of one without
                person = lookalike_of(people[single.pop(int(rng.integers(len(single))))], rng)
            else:
                person = sample_person(rng)
                single.append(pid)
            people[pid] = person
            n_views = draw_views(spec["preset"], rng)
            seen_by = rng.choice(len(cameras), size=n_views, replace=n_views > len(cameras))
            for k, cam in enumerate(seen_by):
                view, hidden = draw_view_and_damage(cameras[cam], rng)
                rel = f"{split}/{pid:05d}_{k}.jpg"
                render_view(person, view, hidden, cameras[cam], rng, spec["image_size"]).save(
                    os.path.join(out_dir, "imgs", rel), quality=92)
                visible = visible_attributes(person, view, hidden)
                written = [write_caption(visible, view, rng, preset["style"])
                           for _ in range(preset["captions_per_image"])]
                entries.append({"split": split, "captions": [text for text, _ in written],
                                "file_path": rel, "id": pid})
                images[rel] = {"id": pid, "camera": int(cam), "view": view,
                               "visible": [[s, f, v] for (s, f), v in visible.items()],
                               "mentions": [m for _, m in written]}
    return entries, {"preset": spec["preset"], "people": people, "images": images,
                     "cameras": cameras}
