"""The colours, skin tones and garments both synthetic worlds draw people with, and the coarse
attributes of a person (what captions can name)."""
import re

__all__ = ["COLORS", "HAIR_COLORS", "SKIN_TONES", "UPPER_TYPES", "LOWER_TYPES", "BAG_TYPES",
           "HAT_TYPES", "SHOE_COLORS", "shade", "a_or_an", "sample_identity"]

COLORS = {
    "black": (25, 25, 28), "white": (235, 235, 235), "gray": (128, 128, 132),
    "red": (200, 30, 35), "blue": (35, 70, 190), "green": (40, 140, 60), "yellow": (230, 200, 40),
    "orange": (235, 125, 30), "purple": (120, 50, 150), "pink": (235, 140, 180),
    "brown": (115, 75, 40), "navy": (20, 30, 85),
}
HAIR_COLORS = {"black": (20, 18, 18), "brown": (95, 60, 30), "blonde": (215, 185, 110),
               "gray": (150, 150, 150)}
SKIN_TONES = [(250, 215, 185), (225, 180, 140), (180, 130, 95), (120, 85, 60)]
UPPER_TYPES = ["t-shirt", "shirt", "jacket", "coat", "sweater"]
LOWER_TYPES = ["trousers", "jeans", "shorts", "skirt"]
BAG_TYPES = ["backpack", "handbag", "shoulder bag"]
HAT_TYPES = ["cap", "beanie"]
SHOE_COLORS = ["black", "white", "brown", "red", "blue"]


def shade(color, factor):
    """`color` (RGB) made lighter (factor > 1) or darker."""
    return tuple(int(min(max(c * factor, 0), 255)) for c in color)


def a_or_an(words):
    """`words` after the right indefinite article: "a red coat", "an orange coat"."""
    return ("an " if re.match(r"[aeiou]", words) else "a ") + words


def sample_identity(rng, hat_share=0.3):
    """Draw one person's coarse attributes (and skin tone); `hat_share` of people wear a hat."""
    gender = "woman" if rng.random() < 0.5 else "man"
    palette = list(COLORS)
    ident = {
        "gender": gender,
        "hair_color": str(rng.choice(list(HAIR_COLORS))),
        "hair_long": bool(rng.random() < (0.7 if gender == "woman" else 0.15)),
        "hat": str(rng.choice(HAT_TYPES)) if rng.random() < hat_share else None,
        "hat_color": str(rng.choice(palette)),
        "upper": str(rng.choice(UPPER_TYPES)),
        "upper_color": str(rng.choice(palette)),
        "lower": str(rng.choice(LOWER_TYPES if gender == "woman" else LOWER_TYPES[:3])),
        "lower_color": str(rng.choice(palette)),
        "shoes_color": str(rng.choice(SHOE_COLORS)),
        "bag": str(rng.choice(BAG_TYPES)) if rng.random() < 0.6 else None,
        "bag_color": str(rng.choice(palette)),
        "skin": int(rng.integers(len(SKIN_TONES))),
    }
    return ident
