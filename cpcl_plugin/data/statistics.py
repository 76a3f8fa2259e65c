"""What a text-image dataset's captions and views look like, beside the real datasets' figures.

Pure functions over `ImageRecord`s (any dataset in the supported formats) and, for the preset
synthetic worlds, their ground truth (`world.json`, data/world.py):

- words per caption, vocabulary, captions per image, images per identity;
- the share of captions naming the gender;
- the share of same-person caption pairs that share no attribute (a gender, or a colour or kind of
  hair, garment, shoes, hat or bag);
- the lookalike rate: the share of people with another person of their split who has every coarse
  attribute captions name;
- the share of caption statements about what the image does not show (ground truth only);
- the caption ceiling: the test R1 of a perfect reader of the captions, who knows what every
  gallery image shows and ranks first the images that contradict the fewest of the caption's
  statements (ties in a random order). Synthetic sets only: it needs the ground truth.

Without ground truth, attributes are read from the caption text with a small lexicon (a colour word
before a garment noun, gendered words), an estimate marked as such. Identity labels are read here:
this is dataset inspection, never training.
"""
import itertools
import json
import os
import re
from collections import defaultdict

import numpy as np
from tabulate import tabulate

from ..utils.galleries import identity_groups
from .world import COARSE

__all__ = ["REAL_FIGURES", "STATISTICS", "caption_words", "text_mentions", "load_world",
           "dataset_statistics", "caption_ceiling", "statistics_table"]

# The real datasets' published figures (docs/design.md, section 3); None where none is
# published. ICFG-PEDES's caption length and vocabulary are not confirmed by its authors' pages.
REAL_FIGURES = {
    "CUHK-PEDES": {"words_per_caption": 23.5, "vocabulary": 9408, "captions_per_image": 2.0,
                   "images_per_identity": 3.1},
    "ICFG-PEDES": {"words_per_caption": 37.0, "vocabulary": 5500, "captions_per_image": 1.0,
                   "images_per_identity": 11.0},
    "RSTPReid": {"words_per_caption": 23.0, "vocabulary": 2204, "captions_per_image": 2.0,
                 "images_per_identity": 5.0},
}
# Statistic keys in the order they are printed, with their labels.
STATISTICS = {
    "words_per_caption": "words per caption (mean)",
    "vocabulary": "vocabulary (distinct words)",
    "captions_per_image": "captions per image",
    "images_per_identity": "images per identity",
    "no_shared_attribute": "same-person caption pairs sharing no attribute",
    "gender_named": "captions naming the gender",
    "lookalike_rate": "people with a lookalike in their split",
    "invisible_named": "statements about what the image does not show",
    "caption_ceiling_R1": "caption ceiling: a perfect reader's test R1",
}

GENDER_WORDS = {
    "woman": {"woman", "women", "lady", "girl", "female", "she", "her", "hers", "herself"},
    "man": {"man", "men", "guy", "boy", "male", "gentleman", "he", "his", "him", "himself"}}
COLOR_LEXICON = {"black", "white", "gray", "grey", "red", "blue", "green", "yellow", "orange",
                 "purple", "pink", "brown", "navy", "beige", "khaki", "blonde", "dark", "light"}
SLOT_NOUNS = {
    "upper": {"shirt", "t-shirt", "tee", "jacket", "coat", "sweater", "jumper", "pullover", "top",
              "blouse", "hoodie", "vest", "dress", "sweatshirt"},
    "lower": {"trousers", "pants", "jeans", "shorts", "skirt", "slacks", "leggings", "bottoms"},
    "shoes": {"shoes", "sneakers", "boots", "trainers", "sandals", "heels"},
    "bag": {"backpack", "bag", "handbag", "purse"},
    "hat": {"hat", "cap", "beanie"},
    "hair": {"hair"},
}
NOUN_SLOT = {noun: slot for slot, nouns in SLOT_NOUNS.items() for noun in nouns}


def caption_words(caption):
    """The lower-case words of a caption (hyphenated words count as one)."""
    return re.findall(r"[a-z0-9]+(?:[-'][a-z0-9]+)*", caption.lower())


def text_mentions(caption):
    """The attributes a caption states, read from its words: (slot, field, value) triples for the
    gender and for each colour named at most three words before a hair, garment, shoe, hat or bag
    noun (and the noun itself)."""
    words = caption_words(caption)
    out = set()
    for gender, vocabulary in GENDER_WORDS.items():
        if vocabulary.intersection(words):
            out.add(("gender", "is", gender))
    for i, word in enumerate(words):
        slot = NOUN_SLOT.get(word)
        if slot is None:
            continue
        out.add((slot, "type", word))
        for before in words[max(0, i - 3):i]:
            if before in COLOR_LEXICON:
                out.add((slot, "color", "gray" if before == "grey" else before))
    return out


def load_world(annotation_path):
    """The ground truth beside a synthetic preset world's annotation file, or None."""
    path = os.path.join(os.path.dirname(annotation_path), "world.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_key(record, image_root):
    return os.path.relpath(record.image_path, image_root).replace(os.sep, "/")


def _caption_mentions(records, world, image_root):
    """Per record, the attribute sets of its captions: the ground truth where there is one, the
    caption text otherwise."""
    if world is None:
        return [[text_mentions(c) for c in r.captions] for r in records]
    return [[{tuple(m) for m in mentions}
             for mentions in world["images"][_image_key(r, image_root)]["mentions"]]
            for r in records]


def _coarse_look(person):
    """What captions can say of a synthetic person (world.COARSE; the colour of a hat or a bag
    the person does not have is left out)."""
    absent = {"hat_color"} if not person["hat"] else set()
    absent |= {"bag_color"} if not person["bag"] else set()
    return json.dumps({k: person[k] for k in COARSE if k not in absent}, sort_keys=True)


def _lookalike_rate(records, splits, mentions, world):
    """Share of people with a lookalike in their split: from the ground truth's coarse attributes,
    or (without one) from the attributes stated by at least half of each person's captions."""
    by_split = defaultdict(dict)
    for r, split, per_caption in zip(records, splits, mentions):
        by_split[split].setdefault(r.pid, []).extend(per_caption)
    with_twin = total = 0
    for people in by_split.values():
        looks = {}
        for pid, caption_sets in people.items():
            if world is not None:
                looks[pid] = _coarse_look(world["people"][str(pid)])
                continue
            counts = defaultdict(int)
            for mention in itertools.chain.from_iterable(caption_sets):
                counts[mention] += 1
            common = frozenset(m for m, n in counts.items() if 2 * n >= len(caption_sets))
            looks[pid] = common if len(common) >= 3 else None  # too little said to compare
        shared = defaultdict(int)
        for look in looks.values():
            if look is not None:
                shared[look] += 1
        with_twin += sum(1 for look in looks.values() if look is not None and shared[look] > 1)
        total += len(looks)
    return with_twin / max(total, 1)


def caption_ceiling(records, world, image_root, ids_per_gallery=0):
    """R1 (%) of a perfect reader of the captions on `records` (one split: queries are its captions,
    the gallery its images), from the synthetic ground truth `world`; with `ids_per_gallery` > 0
    each caption searches only its group of people, as TEST.IDS_PER_GALLERY evaluates.

    The reader knows what each gallery image shows and ranks first the images that contradict the
    fewest of the caption's statements; among tied images the order is random, so a query counts
    the share of its person's images among the top-scoring ones."""
    fields = sorted({(s, f) for r in records
                     for s, f, _ in world["images"][_image_key(r, image_root)]["visible"]})
    column = {sf: j for j, sf in enumerate(fields)}
    codes = defaultdict(lambda: len(codes))
    shown = np.full((len(records), len(fields)), -1, dtype=np.int64)  # -1: not visible
    for i, r in enumerate(records):
        for s, f, v in world["images"][_image_key(r, image_root)]["visible"]:
            shown[i, column[(s, f)]] = codes[json.dumps(v)]
    pids = np.asarray([r.pid for r in records])
    of = identity_groups(pids, ids_per_gallery)
    gallery = np.asarray([of[p] for p in pids.tolist()])
    hits = []
    for i, r in enumerate(records):
        # Images outside the query's gallery are never among the best.
        outside = np.where(gallery == gallery[i], 0, len(fields) + 1)
        for mentions in world["images"][_image_key(r, image_root)]["mentions"]:
            contradicted = outside.copy()
            for s, f, v in mentions:
                j = column.get((s, f))
                if j is None:
                    continue
                value = codes[json.dumps(v)]
                contradicted += (shown[:, j] >= 0) & (shown[:, j] != value)
            best = contradicted == contradicted.min()
            hits.append(float(np.mean(pids[best] == r.pid)))
    return 100.0 * float(np.mean(hits))


def dataset_statistics(dataset, ids_per_gallery=0):
    """{statistic: value} (keys of STATISTICS) over every split of a `TextImageDataset`; the
    invisible statements and the ceiling need the ground truth of a synthetic preset world (None
    elsewhere), the rest work on any dataset; the ceiling searches galleries of `ids_per_gallery`
    people where it is > 0 (TEST.IDS_PER_GALLERY). Also returns "attributes_from": "ground truth"
    or "caption text"."""
    records_by_split = dataset.records
    world = load_world(dataset.annotation_path)
    image_root = os.path.join(os.path.dirname(dataset.annotation_path), dataset.image_dir)
    records = [r for recs in records_by_split.values() for r in recs]
    splits = [name for name, recs in records_by_split.items() for _ in recs]
    captions = [c for r in records for c in r.captions]
    words = [caption_words(c) for c in captions]
    mentions = _caption_mentions(records, world, image_root)
    by_person = defaultdict(list)
    for r, per_caption in zip(records, mentions):
        by_person[r.pid].extend(per_caption)
    pairs = disjoint = 0
    for caption_sets in by_person.values():
        for a, b in itertools.combinations(caption_sets, 2):
            pairs += 1
            disjoint += not (a & b)
    test = records_by_split.get("test") or []
    invisible = None
    if world is not None:
        stated = unseen = 0
        for image in world["images"].values():
            shown = {(s, f) for s, f, _ in image["visible"]}
            for statements in image["mentions"]:
                stated += len(statements)
                unseen += sum((s, f) not in shown for s, f, _ in statements)
        invisible = unseen / max(stated, 1)
    return {
        "words_per_caption": float(np.mean([len(w) for w in words])) if words else 0.0,
        "vocabulary": len(set(itertools.chain.from_iterable(words))),
        "captions_per_image": len(captions) / max(len(records), 1),
        "images_per_identity": len(records) / max(len(by_person), 1),
        "no_shared_attribute": disjoint / max(pairs, 1),
        "gender_named": float(np.mean([any(GENDER_WORDS["woman"].union(GENDER_WORDS["man"])
                                           .intersection(w)) for w in words])) if words else 0.0,
        "lookalike_rate": _lookalike_rate(records, splits, mentions, world),
        "invisible_named": invisible,
        "caption_ceiling_R1": (caption_ceiling(test, world, image_root, ids_per_gallery)
                               if world is not None and test else None),
        "attributes_from": "ground truth" if world is not None else "caption text",
        "ids_per_gallery": ids_per_gallery,
    }


def statistics_table(name, stats):
    """The statistics of dataset `name` beside the real datasets' published figures (Markdown)."""
    def shown(key, value):
        if value is None:
            return "–"
        if key in ("vocabulary",):
            return f"{value:,}"
        if key in ("no_shared_attribute", "gender_named", "lookalike_rate", "invisible_named"):
            return f"{100 * value:.1f}%"
        return f"{value:.1f}"
    rows = [[label, shown(key, stats[key])] + [shown(key, figures.get(key))
                                               for figures in REAL_FIGURES.values()]
            for key, label in STATISTICS.items()]
    note = (f"Attributes of the agreement and lookalike rows are read from the "
            f"{stats['attributes_from']}.")
    if stats.get("ids_per_gallery") and stats.get("caption_ceiling_R1") is not None:
        note += (f" The ceiling's captions search galleries of about {stats['ids_per_gallery']} "
                 f"test people (TEST.IDS_PER_GALLERY).")
    return tabulate(rows, headers=["statistic", name] + list(REAL_FIGURES), tablefmt="pipe",
                    disable_numparse=True) + "\n" + note
