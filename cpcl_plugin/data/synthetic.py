"""A procedurally drawn pedestrian dataset with captions, written in the CUHK-PEDES on-disk format.

Two kinds of world. With DATASETS.SYNTHETIC.PRESET ("cuhk", "icfg", "rstp") the world is shaped
like that real dataset (data/world.py). Without a preset it is the plain world described here:

Each identity is a set of attributes (gender, hair, hat, upper and lower clothing, shoes, bag).
Each of its images draws that person with another pose, scale, position, background, light and
sometimes an occluder; each caption describes a random subset of the attributes in varied wording.
A caption that names only some attributes matches several identities, which is what makes
prototypes (many captions and images of one person pooled together) useful.

Two domains share the world's attributes but not its look or its language, as CLIP's web data
differ from a pedestrian dataset:
- "street" (the target, CUHK-PEDES-like): muted street scenes with clutter, uneven and often dim
  light, blur, occluders and back views; captions in full sentences ("A lady dressed in a red coat
  and carrying a black backpack.") with pedestrian-dataset wording.
- "web" (the pretraining corpus, the synthetic world's "web"): clean, saturated, evenly lit
  product-photo backgrounds, people facing the camera, no occluders; captions in alt-text style
  ("a photo of a woman: long black hair, red coat, black pants.") with other nouns and no verbs,
  and narrower coverage: they name the person, the hair and the clothes, never hats, shoes or
  bags, which the photos show all the same. A model pretrained there must learn those three from
  the target's captions.

The generator is deterministic: the same settings and seed write byte-identical annotation files
and images. `ensure_synthetic_dataset` generates into a folder named by a hash of the settings,
once, atomically (a temporary folder renamed into place), and reuses it afterwards.
"""
import hashlib
import json
import logging
import os
import re
import shutil

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..config import CHOICES
from ..errors import ConfigError
from ..utils.workdirs import make_work_folder, remove_leftover_work_folders
from .palette import COLORS, HAIR_COLORS, SKIN_TONES, sample_identity, shade
from .world import PRESETS, WORLD_VERSION, generate_world

_logger = logging.getLogger(__name__)

__all__ = ["SyntheticSpec", "generate_synthetic_dataset", "ensure_synthetic_dataset",
           "sample_identity", "describe_identity"]

# Attribute names a caption can mention.
ATTRIBUTES = ("gender", "hair", "hat", "upper", "lower", "shoes", "bag")
# The looks and languages of the synthetic world (see the module docstring), and the attributes
# each domain's captions talk about: web alt text never mentions hats, shoes or bags, though its
# photos show them (the target's captions then teach what pretraining could not).
DOMAINS = CHOICES["DATASETS.SYNTHETIC.DOMAIN"]
DESCRIBED = {"street": ATTRIBUTES, "web": ("gender", "hair", "upper", "lower")}


class SyntheticSpec(dict):
    """Settings of one synthetic dataset; a plain dict so it hashes and serialises simply."""

    def __init__(self, num_train_ids=1000, num_val_ids=0, num_test_ids=100, images_per_id=2,
                 captions_per_image=1, attributes_per_caption=(3, 5), image_size=(128, 64),
                 seed=0, domain="street", preset="", test_gallery_ids=0):
        lo, hi = (int(v) for v in attributes_per_caption)
        if preset and preset not in PRESETS:
            raise ConfigError(f"DATASETS.SYNTHETIC.PRESET must be one of {', '.join(PRESETS)} or "
                              f"\"\" (the plain street or web world), got {preset!r}.")
        if preset and domain != "street":
            raise ConfigError(f"DATASETS.SYNTHETIC.PRESET {preset!r} is a target world; set "
                              f"DATASETS.SYNTHETIC.DOMAIN street (the web domain has no presets).")
        if domain not in DOMAINS:
            raise ConfigError(f"DATASETS.SYNTHETIC.DOMAIN must be one of {', '.join(DOMAINS)}, "
                              f"got {domain!r}.")
        if not 1 <= lo <= hi <= len(DESCRIBED[domain]):
            raise ConfigError(f"DATASETS.SYNTHETIC.ATTRIBUTES_PER_CAPTION must be (min, max) with "
                              f"1 <= min <= max <= {len(DESCRIBED[domain])} (the attributes "
                              f"{domain} captions describe), got {[lo, hi]}.")
        if min(num_train_ids, num_test_ids) < 1 or num_val_ids < 0:
            raise ConfigError("DATASETS.SYNTHETIC needs at least one train and one test identity.")
        if images_per_id < 1 or captions_per_image < 1:
            raise ConfigError("DATASETS.SYNTHETIC.IMAGES_PER_ID and CAPTIONS_PER_IMAGE must be >= 1.")
        super().__init__(num_train_ids=int(num_train_ids), num_val_ids=int(num_val_ids),
                         num_test_ids=int(num_test_ids), images_per_id=int(images_per_id),
                         captions_per_image=int(captions_per_image),
                         attributes_per_caption=[lo, hi],
                         image_size=[int(v) for v in image_size], seed=int(seed),
                         domain=str(domain))
        if preset:  # plain worlds' specs, without these keys, keep their digests and folders
            self.update(preset=str(preset), world_version=WORLD_VERSION)
            if test_gallery_ids > 0:  # absent at 0: earlier worlds keep their folders
                self.update(test_gallery_ids=int(test_gallery_ids))

    @classmethod
    def from_cfg(cls, cfg):
        s = cfg.DATASETS.SYNTHETIC
        return cls(s.NUM_TRAIN_IDS, s.NUM_VAL_IDS, s.NUM_TEST_IDS, s.IMAGES_PER_ID,
                   s.CAPTIONS_PER_IMAGE, s.ATTRIBUTES_PER_CAPTION, s.IMAGE_SIZE, s.SEED, s.DOMAIN,
                   s.PRESET, cfg.TEST.IDS_PER_GALLERY)

    def digest(self):
        blob = json.dumps(self, sort_keys=True).encode() + GENERATOR_VERSION.encode()
        return hashlib.sha1(blob).hexdigest()[:10]


# Bump when the drawing or the wording changes, so cached datasets are regenerated.
GENERATOR_VERSION = "3"


def _phrases(ident, rng):
    """One phrase per attribute, with the wording varied."""
    g = ident["gender"]
    noun = str(rng.choice({"woman": ["woman", "lady", "girl", "female pedestrian"],
                           "man": ["man", "guy", "male pedestrian", "gentleman"]}[g]))
    hair = f"{'long' if ident['hair_long'] else 'short'} {ident['hair_color']} hair"
    wear = str(rng.choice(["wearing", "dressed in", "in", "who wears"]))
    out = {
        "gender": noun,
        "hair": str(rng.choice([f"with {hair}", f"who has {hair}"])),
        "hat": (f"{wear} a {ident['hat_color']} {ident['hat']}" if ident["hat"]
                else str(rng.choice(["with no hat", "without a hat"]))),
        "upper": f"{wear} a {ident['upper_color']} {ident['upper']}",
        "lower": (f"{wear} {ident['lower_color']} {ident['lower']}" if ident["lower"] != "skirt"
                  else f"{wear} a {ident['lower_color']} skirt"),
        "shoes": str(rng.choice([f"with {ident['shoes_color']} shoes",
                                 f"wearing {ident['shoes_color']} shoes"])),
        "bag": (str(rng.choice([f"carrying a {ident['bag_color']} {ident['bag']}",
                                f"with a {ident['bag_color']} {ident['bag']}"]))
                if ident["bag"] else str(rng.choice(["carrying nothing", "with no bag"]))),
    }
    return out


def _web_caption(ident, rng, chosen):
    """Alt-text style: a noun and bare attribute phrases, other nouns than the street's."""
    noun = ident["gender"] if "gender" in chosen else "person"
    lower = "pants" if ident["lower"] == "trousers" and rng.random() < 0.5 else ident["lower"]
    phrases = {
        "hair": f"{'long' if ident['hair_long'] else 'short'} {ident['hair_color']} hair",
        "upper": f"{ident['upper_color']} {ident['upper']}",
        "lower": f"{ident['lower_color']} {lower}",
    }
    rest = [phrases[a] for a in DESCRIBED["web"] if a in chosen and a != "gender"]
    rng.shuffle(rest)
    if rng.random() < 0.5:
        return f"a photo of a {noun}: {', '.join(rest)}." if rest else f"a photo of a {noun}."
    return ", ".join([noun] + rest)


def describe_identity(ident, rng, num_attributes, domain="street"):
    """A caption naming `num_attributes` randomly chosen attributes of `ident`, in the wording of
    `domain`."""
    if domain == "web":
        chosen = list(rng.choice(list(DESCRIBED["web"]), size=num_attributes, replace=False))
        return _web_caption(ident, rng, chosen)
    phrases = _phrases(ident, rng)
    chosen = list(rng.choice(list(ATTRIBUTES), size=num_attributes, replace=False))
    subject = phrases["gender"] if "gender" in chosen else str(rng.choice(["person", "pedestrian"]))
    rest = [phrases[a] for a in ATTRIBUTES if a in chosen and a != "gender"]
    rng.shuffle(rest)
    opening = str(rng.choice(["A", "The", "This is a"]))
    if not rest:
        return f"{opening} {subject} walking."
    if len(rest) == 1:
        body = rest[0]
    else:
        body = ", ".join(rest[:-1]) + " and " + rest[-1]
    text = re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", f"{opening} {subject} {body}.")
    return text[0].upper() + text[1:]


# How each domain photographs people (see the module docstring). Ranges are (low, high).
LOOKS = {
    "street": dict(saturated_background=False, clutter=(0, 4), scale=(0.8, 1.0), shift=6,
                   back_view=0.3, occluder=0.2, light=(0.8, 1.2), tint=0.05, noise=4, blur=0.3),
    "web": dict(saturated_background=True, clutter=(0, 1), scale=(0.9, 1.0), shift=2,
                back_view=0.1, occluder=0.0, light=(0.95, 1.15), tint=0.03, noise=2, blur=0.0),
}


def render_person(ident, rng, size, domain="street"):
    """Draw one image of `ident` (H, W) = size with random pose, framing, background and light,
    in the look of `domain`."""
    look = LOOKS[domain]
    H, W = size
    # Draw at a fixed canvas of 128x64 units and resize, so the drawing code has one scale.
    ch, cw = 128, 64
    if look["saturated_background"]:
        # Web photos: a flat, saturated backdrop of any colour, nearly even light.
        bg = rng.uniform(40, 235, size=3).astype(np.float32)
        grad = np.linspace(rng.uniform(0.9, 1.0), rng.uniform(1.0, 1.1), ch)[:, None, None]
        canvas = np.clip(bg[None, None, :] * grad + rng.normal(0, 3, (ch, cw, 3)), 0, 255)
    else:
        # Street-like backgrounds: muted, slightly tinted grays, so that clothing colours are the
        # salient colours (as in real pedestrian crops) rather than the scene.
        bg = rng.uniform(50, 190) + rng.uniform(-20, 20, size=3).astype(np.float32)
        grad = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.3), ch)[:, None, None]
        canvas = np.clip(bg[None, None, :] * grad + rng.normal(0, 12, (ch, cw, 3)), 0, 255)
    img = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(*look["clutter"]))):  # background clutter
        x0, y0 = rng.integers(0, cw), rng.integers(0, ch)
        gray = int(rng.uniform(40, 210))
        draw.rectangle([x0, y0, x0 + rng.integers(4, 20), y0 + rng.integers(4, 30)],
                       fill=(gray, gray + int(rng.integers(-15, 15)), gray))

    s = rng.uniform(*look["scale"])
    cx = cw / 2 + rng.uniform(-look["shift"], look["shift"])
    top = rng.uniform(2, 10) + (1 - s) * 40

    def Y(v):
        return top + v * s

    def X(v):
        return cx + v * s

    skin = SKIN_TONES[ident["skin"]]
    hair = HAIR_COLORS[ident["hair_color"]]
    upper = COLORS[ident["upper_color"]]
    lower = COLORS[ident["lower_color"]]
    shoes = COLORS[ident["shoes_color"]]
    back_view = rng.random() < look["back_view"]
    leg = rng.uniform(0, 6)
    arm = rng.uniform(-5, 5)

    if ident["bag"] == "backpack" and back_view:
        pass  # drawn over the torso below
    elif ident["bag"] == "backpack":
        draw.rectangle([X(-13), Y(28), X(13), Y(58)], fill=shade(COLORS[ident["bag_color"]], 0.8))
    if ident["hair_long"]:
        draw.rectangle([X(-8), Y(10), X(8), Y(34)], fill=hair)
    # legs and lower clothing
    if ident["lower"] == "skirt":
        draw.polygon([(X(-9), Y(62)), (X(9), Y(62)), (X(13), Y(86)), (X(-13), Y(86))], fill=lower)
        draw.rectangle([X(-6 - leg), Y(86), X(-2 - leg), Y(112)], fill=skin)
        draw.rectangle([X(2 + leg), Y(86), X(6 + leg), Y(112)], fill=skin)
    else:
        length = 82 if ident["lower"] == "shorts" else 112
        draw.rectangle([X(-9), Y(62), X(9), Y(70)], fill=lower)
        draw.polygon([(X(-9), Y(68)), (X(-1), Y(68)), (X(-2 - leg), Y(length)),
                      (X(-8 - leg), Y(length))], fill=lower)
        draw.polygon([(X(1), Y(68)), (X(9), Y(68)), (X(8 + leg), Y(length)),
                      (X(2 + leg), Y(length))], fill=lower)
        if length < 112:
            draw.rectangle([X(-7 - leg), Y(length), X(-3 - leg), Y(112)], fill=skin)
            draw.rectangle([X(3 + leg), Y(length), X(7 + leg), Y(112)], fill=skin)
    draw.rectangle([X(-9 - leg), Y(111), X(-1 - leg), Y(117)], fill=shoes)
    draw.rectangle([X(1 + leg), Y(111), X(9 + leg), Y(117)], fill=shoes)
    # torso and arms
    coat = ident["upper"] == "coat"
    bottom = 78 if coat else 64
    draw.polygon([(X(-11), Y(26)), (X(11), Y(26)), (X(10), Y(bottom)), (X(-10), Y(bottom))],
                 fill=upper)
    if ident["upper"] == "jacket":
        draw.line([X(0), Y(27), X(0), Y(63)], fill=shade(upper, 0.5), width=2)
    if ident["upper"] == "shirt":
        draw.polygon([(X(-4), Y(26)), (X(4), Y(26)), (X(0), Y(33))], fill=(240, 240, 240))
    sleeve = 36 if ident["upper"] == "t-shirt" else 60
    for side in (-1, 1):
        x_out = 15 * side
        draw.polygon([(X(11 * side), Y(27)), (X(x_out), Y(28)), (X(x_out + arm * side), Y(sleeve)),
                      (X(11 * side + arm * side), Y(sleeve))], fill=shade(upper, 0.9))
        if sleeve < 60:
            draw.rectangle([X(min(x_out, 11 * side) + arm * side), Y(sleeve),
                            X(max(x_out, 11 * side) + arm * side), Y(60)], fill=skin)
    if ident["bag"] == "backpack" and back_view:
        draw.rectangle([X(-9), Y(30), X(9), Y(56)], fill=COLORS[ident["bag_color"]])
    elif ident["bag"] == "backpack":
        draw.line([X(-6), Y(27), X(-6), Y(48)], fill=COLORS[ident["bag_color"]], width=2)
        draw.line([X(6), Y(27), X(6), Y(48)], fill=COLORS[ident["bag_color"]], width=2)
    elif ident["bag"] == "handbag":
        side = 1 if rng.random() < 0.5 else -1
        draw.rectangle([X(14 * side + arm * side - 4), Y(58), X(14 * side + arm * side + 4), Y(70)],
                       fill=COLORS[ident["bag_color"]])
    elif ident["bag"] == "shoulder bag":
        draw.line([X(-10), Y(27), X(10), Y(56)], fill=shade(COLORS[ident["bag_color"]], 0.7),
                  width=2)
        draw.rectangle([X(7), Y(52), X(15), Y(64)], fill=COLORS[ident["bag_color"]])
    # head, hair, hat
    draw.rectangle([X(-3), Y(20), X(3), Y(27)], fill=skin)
    draw.ellipse([X(-7), Y(4), X(7), Y(22)], fill=hair if back_view else skin)
    draw.chord([X(-7), Y(3), X(7), Y(17)], 180, 360, fill=hair)
    if ident["hat"] == "cap":
        draw.chord([X(-8), Y(1), X(8), Y(15)], 180, 360, fill=COLORS[ident["hat_color"]])
        draw.rectangle([X(-2), Y(7), X(11), Y(9)], fill=COLORS[ident["hat_color"]])
    elif ident["hat"] == "beanie":
        draw.chord([X(-8), Y(-1), X(8), Y(17)], 180, 360, fill=COLORS[ident["hat_color"]])

    if rng.random() < look["occluder"]:  # occluder: a passer-by's shoulder, a pole, a car
        ox = rng.choice([0, cw - rng.integers(10, 22)])
        oy = rng.integers(40, 100)
        draw.rectangle([ox, oy, ox + rng.integers(10, 22), ch],
                       fill=COLORS[str(rng.choice(list(COLORS)))])
    arr = np.asarray(img, dtype=np.float32)
    light = rng.uniform(*look["light"]) * rng.uniform(1 - look["tint"], 1 + look["tint"], size=3)
    arr = np.clip(arr * light[None, None, :] + rng.normal(0, look["noise"], arr.shape), 0, 255)
    out = Image.fromarray(arr.astype(np.uint8))
    if rng.random() < look["blur"]:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    if (H, W) != (ch, cw):
        out = out.resize((W, H), Image.BILINEAR)
    return out


def generate_synthetic_dataset(out_dir, spec):
    """Write `imgs/` and `reid_raw.json` (CUHK-PEDES format) for `spec` into `out_dir`; a preset
    world also writes its ground truth, `world.json` (data/world.py)."""
    if spec.get("preset"):
        entries, truth = generate_world(out_dir, spec)
        with open(os.path.join(out_dir, "world.json"), "w", encoding="utf-8") as f:
            json.dump(truth, f)
    else:
        entries = _plain_world_entries(out_dir, spec)
    with open(os.path.join(out_dir, "reid_raw.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=0)
    with open(os.path.join(out_dir, "spec.json"), "w") as f:
        json.dump(dict(spec, generator_version=GENERATOR_VERSION), f, indent=1)
    return out_dir


def _plain_world_entries(out_dir, spec):
    """Draw the plain (street or web) world into `out_dir`/imgs; returns its annotation entries."""
    rng = np.random.default_rng(spec["seed"])
    counts = [("train", spec["num_train_ids"]), ("val", spec["num_val_ids"]),
              ("test", spec["num_test_ids"])]
    lo, hi = spec["attributes_per_caption"]
    entries = []
    pid = 0
    for split, n_ids in counts:
        os.makedirs(os.path.join(out_dir, "imgs", split), exist_ok=True)
        for _ in range(n_ids):
            pid += 1  # CUHK-PEDES ids are 1-based
            ident = sample_identity(rng)
            for k in range(spec["images_per_id"]):
                rel = f"{split}/{pid:05d}_{k}.jpg"
                render_person(ident, rng, spec["image_size"], spec["domain"]).save(
                    os.path.join(out_dir, "imgs", rel), quality=92)
                captions = [describe_identity(ident, rng, int(rng.integers(lo, hi + 1)),
                                              spec["domain"])
                            for _ in range(spec["captions_per_image"])]
                entries.append({"split": split, "captions": captions, "file_path": rel, "id": pid})
    return entries


def ensure_synthetic_dataset(parent_dir, spec, logger=None):
    """The folder of the dataset for `spec` under `parent_dir`, generated there on first use.

    Safe when several processes call it at once: each generates into its own temporary folder and
    the first rename wins.
    """
    final = os.path.join(parent_dir, f"SyntheticPedes-{spec.digest()}")
    if os.path.isfile(os.path.join(final, "reid_raw.json")):
        return final
    os.makedirs(parent_dir, exist_ok=True)
    remove_leftover_work_folders(parent_dir, ".synthetic-", (logger or _logger).info)
    if logger:
        logger.info(f"Generating the synthetic dataset into {final} (once; reused afterwards)")
    tmp = make_work_folder(parent_dir, ".synthetic-")
    try:
        generate_synthetic_dataset(tmp, spec)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "reid_raw.json")):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final
