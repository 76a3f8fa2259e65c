"""Every image mode PIL documents becomes a correct 8-bit RGB image or is refused with its path
(`load_image`: training, evaluation and tools/check_dataset.py --decode read images through it)."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from cpcl_plugin.data import DatasetError, load_image
from cpcl_plugin.data.datasets import to_rgb

# Only IM stores I;16L; PIL deprecates the format but still opens it.
pytestmark = pytest.mark.filterwarnings("ignore:IM image format is deprecated")


def _blocks(values):
    """Each value an 8x8 block (8 x 48 pixels in all), so lossy codecs keep flat areas."""
    return np.repeat(np.repeat(np.asarray(values)[None], 8, axis=0), 8, axis=1)


def _gray(values):
    return np.stack([values] * 3, axis=-1)


def _on_white(rgb, alpha):
    a = alpha[..., None] / 255
    return rgb * a + 255 * (1 - a)


SIZE = (48, 8)
COLOURS = _blocks([[0, 0, 0], [255, 255, 255], [200, 30, 30], [30, 160, 60], [40, 70, 190],
                   [128, 128, 128]]).astype(np.uint8)
GRAYS = _blocks([0, 255, 60, 128, 200, 17]).astype(np.uint8)
ALPHA = _blocks([255, 0, 128, 255, 0, 64]).astype(np.uint8)  # opaque, transparent, in between
# 16-bit values and their 8-bit values: 65535 * 0.5 is mid gray, not white.
WIDE = _blocks([0, 65535, 32768, 257 * 60, 1000, 257 * 17])
WIDE_AS_8_BIT = _blocks([0, 255, 128, 60, 4, 17])
FLOATS = _blocks([0, 1, 0.5, 0.25, 0.01, 0.75]).astype(np.float32)

RGB = Image.fromarray(COLOURS)
PALETTE = RGB.quantize(colors=8)  # six colours: the palette holds them exactly


def _with_alpha(image):
    image = image.copy()
    image.putalpha(Image.fromarray(ALPHA))
    return image


def _raw(mode, values, dtype):
    return Image.frombytes(mode, SIZE, np.ascontiguousarray(values, dtype).tobytes())


# Every mode PIL documents (Image.MODES): an image in that mode, the 8-bit RGB it shows and the
# tolerance (PIL's own YCbCr, LAB and HSV round trips are a few levels off).
SOURCES = {
    "1": (lambda: Image.fromarray(GRAYS > 127), _gray((GRAYS > 127) * 255), 0),
    "L": (lambda: Image.fromarray(GRAYS), _gray(GRAYS), 0),
    "P": (lambda: PALETTE, COLOURS, 0),
    "RGB": (lambda: RGB, COLOURS, 0),
    "RGBX": (lambda: RGB.convert("RGBX"), COLOURS, 0),
    "CMYK": (lambda: RGB.convert("CMYK"), COLOURS, 0),
    "YCbCr": (lambda: RGB.convert("YCbCr"), COLOURS, 6),
    "LAB": (lambda: RGB.convert("LAB"), COLOURS, 6),
    "HSV": (lambda: RGB.convert("HSV"), COLOURS, 6),
    "LA": (lambda: _with_alpha(Image.fromarray(GRAYS)), _on_white(_gray(GRAYS), ALPHA), 1),
    "La": (lambda: _with_alpha(Image.fromarray(GRAYS)).convert("La"),
           _on_white(_gray(GRAYS), ALPHA), 2),
    "PA": (lambda: _with_alpha(PALETTE.convert("PA")), _on_white(COLOURS, ALPHA), 1),
    "RGBA": (lambda: _with_alpha(RGB), _on_white(COLOURS, ALPHA), 1),
    "RGBa": (lambda: _with_alpha(RGB).convert("RGBa"), _on_white(COLOURS, ALPHA), 2),
    "I;16": (lambda: Image.fromarray(WIDE.astype(np.uint16)), _gray(WIDE_AS_8_BIT), 0),
    "I;16L": (lambda: _raw("I;16L", WIDE, "<u2"), _gray(WIDE_AS_8_BIT), 0),
    "I;16B": (lambda: _raw("I;16B", WIDE, ">u2"), _gray(WIDE_AS_8_BIT), 0),
    "I;16N": (lambda: _raw("I;16N", WIDE, "=u2"), _gray(WIDE_AS_8_BIT), 0),
    "I": (lambda: Image.fromarray(WIDE.astype(np.int32)), _gray(WIDE_AS_8_BIT), 0),
    "F": (lambda: Image.fromarray(FLOATS), _gray(np.rint(FLOATS * 255)), 0),
}

# The formats that store each mode PIL opens from a file, without loss unless a tolerance says so.
FILE_CASES = [
    ("1", "PNG", 0), ("L", "PNG", 0), ("L", "JPEG", 4), ("P", "PNG", 0), ("P", "GIF", 0),
    ("RGB", "PNG", 0), ("RGB", "JPEG", 4), ("RGBA", "PNG", 0), ("LA", "PNG", 0), ("PA", "TIFF", 0),
    ("CMYK", "TIFF", 0), ("CMYK", "JPEG", 4), ("YCbCr", "TIFF", 0), ("LAB", "TIFF", 0),
    ("I;16", "PNG", 0), ("I;16", "TIFF", 0), ("I;16B", "TIFF", 0), ("I;16L", "IM", 0),
    ("I", "TIFF", 0), ("I", "PPM", 0), ("F", "TIFF", 0),
]
SAVE_OPTIONS = {"JPEG": dict(quality=100, subsampling=0)}


def _assert_shows(image, expected, tolerance):
    assert image.mode == "RGB" and image.size == SIZE
    error = np.abs(np.asarray(image, dtype=np.int64) - np.rint(expected).astype(np.int64))
    assert error.max() <= tolerance, f"off by up to {error.max()} levels"


def test_every_documented_mode_has_a_case():
    # A mode a new PIL documents fails here until someone decides how it converts.
    assert sorted(SOURCES) == sorted(Image.MODES)


@pytest.mark.parametrize("mode", sorted(SOURCES))
def test_each_documented_mode_becomes_the_rgb_it_shows(mode):
    make, expected, tolerance = SOURCES[mode]
    image = make()
    assert image.mode == mode
    _assert_shows(to_rgb(image, "in-memory.png"), expected, tolerance)


def _reopened_modes():
    """Mode that comes back -> {mode written}, for every documented mode saved in every format
    PIL writes (4 x 4 images)."""
    Image.init()
    found = {}
    for mode in Image.MODES:
        for fmt in sorted(Image.SAVE):
            buffer = io.BytesIO()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    Image.new(mode, (4, 4)).save(buffer, fmt)
                buffer.seek(0)
                with Image.open(buffer) as back:
                    back.load()
                    found.setdefault(back.mode, set()).add(mode)
            except Exception:  # this format does not store this mode
                continue
    return found


def test_file_cases_cover_every_mode_pil_opens():
    opened = _reopened_modes()
    assert {"I;16", "I", "F", "CMYK", "LAB"} <= set(opened)  # the probe itself works
    assert set(opened) <= {mode for mode, _, _ in FILE_CASES}


@pytest.mark.parametrize("mode, fmt, tolerance", FILE_CASES, ids=lambda v: str(v))
def test_images_on_disk_load_as_the_rgb_they_show(tmp_path, mode, fmt, tolerance):
    make, expected, conversion_tolerance = SOURCES[mode]
    path = str(tmp_path / f"image.{fmt.lower()}")
    make().save(path, fmt, **SAVE_OPTIONS.get(fmt, {}))
    with Image.open(path) as image:
        assert image.mode == mode  # the file really holds this mode
    _assert_shows(load_image(path), expected, max(tolerance, conversion_tolerance))


@pytest.mark.parametrize("mode, fmt, key, block", [
    ("P", "PNG", int(np.asarray(PALETTE)[0, 16]), 2),
    ("P", "GIF", int(np.asarray(PALETTE)[0, 16]), 2),
    ("L", "PNG", 60, 2),
    ("RGB", "PNG", (200, 30, 30), 2),
    ("I;16", "PNG", 32768, 2),
])
def test_a_transparent_colour_key_shows_white(tmp_path, mode, fmt, key, block):
    make, expected, _ = SOURCES[mode]
    path = str(tmp_path / f"keyed.{fmt.lower()}")
    make().save(path, fmt, transparency=key)
    expected = np.array(expected, dtype=np.float64)
    expected[:, 8 * block:8 * (block + 1)] = 255
    _assert_shows(load_image(path), expected, 0)


@pytest.mark.parametrize("values, reason", [
    (np.array([[0, 255]], np.float32), "PIL mode F: values from 0 to 255, outside the 0..1"),
    (np.array([[0.5, np.nan]], np.float32), "PIL mode F: NaN or infinite values"),
    (np.array([[0, 70000]], np.int32), "PIL mode I: values from 0 to 70000, outside the 0..65535"),
    (np.array([[-1, 3]], np.int32), "PIL mode I: values from -1 to 3, outside the 0..65535"),
], ids=["float 0..255", "float NaN", "int above 65535", "negative int"])
def test_values_without_an_8_bit_meaning_are_refused_with_the_path(tmp_path, values, reason):
    path = str(tmp_path / "wide.tif")
    Image.fromarray(values).save(path, "TIFF")
    with pytest.raises(DatasetError) as err:
        load_image(path)
    message = str(err.value)
    assert message.startswith(f"Cannot read image {path} ({reason}")
    assert "save it as an 8-bit RGB image" in message and "\n" not in message


def test_an_undocumented_mode_is_refused_not_guessed():
    class Unknown:  # what a future PIL mode looks like to to_rgb
        mode = "BGR;24"
    with pytest.raises(DatasetError, match=r"Cannot read image x.bmp \(PIL mode 'BGR;24', which "
                                           r"has no known conversion to 8-bit RGB\)"):
        to_rgb(Unknown(), "x.bmp")
