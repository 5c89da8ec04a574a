"""Tests for image decoding: gzip by magic, formats, EXIF, JPEG masks (fissure.data.image)."""

import contextlib
import gzip
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pairs import png_bytes
from PIL import Image

from fissure.data import decode_image, decode_mask
from fissure.data.image import image_stem
from fissure.errors import DataError


def test_gzip_is_detected_by_magic_not_name():
    raw = png_bytes(np.zeros((4, 5, 3), np.uint8))
    assert decode_image(gzip.compress(raw), "x.png").shape == (4, 5, 3)
    assert decode_image(raw, "plain-named.gz").shape == (4, 5, 3)


def test_image_stem_strips_gz():
    assert image_stem("a/b/001.png.gz") == "001"
    assert image_stem("001.jpg") == "001"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"not an image at all", "not a readable image"),
        (gzip.compress(b"\x89PNG garbage", mtime=0), "not a readable image"),
        (gzip.compress(png_bytes(np.zeros((8, 8, 3), np.uint8)), mtime=0)[:-12], "truncated gzip"),
        (png_bytes(np.zeros((64, 64, 3), np.uint8))[:60], "not a readable image"),
    ],
    # readable ids that are the same in every process (pytest-xdist compares them)
    ids=["empty", "text", "gzip-garbage", "truncated-gzip", "truncated-png"],
)
def test_bad_bytes_give_a_data_error_naming_the_file(data, reason):
    with pytest.raises(DataError) as info:
        decode_image(data, "dir/bad.png.gz")
    assert str(info.value).startswith("dir/bad.png.gz: ")
    assert reason in str(info.value)


def test_channel_and_depth_conversions():
    gray = png_bytes(np.full((4, 4), 200, np.uint8))
    rgba = png_bytes(np.full((4, 4, 4), 200, np.uint8))
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    for data in (gray, rgba, buf.getvalue()):
        out = decode_image(data, "x")
        assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert decode_image(buf.getvalue(), "x").max() == 255


def test_float_images_in_0_1_are_intensities():
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")  # mode F
    out = decode_image(buf.getvalue(), "ramp.tif")
    assert out[0, 0, 0] == 0 and out[3, 3, 0] == 255
    assert not (out[..., 0] == 0).all()


def test_unknown_format_names_no_python_object():
    with pytest.raises(DataError) as info:
        decode_image(b"GIF89a not really", "._IMG_0001.jpg")
    assert str(info.value) == "._IMG_0001.jpg: not a readable image (unknown format)"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_over_the_pixel_limit_are_refused_before_decoding(monkeypatch):
    # Pillow itself refuses only twice Image.MAX_IMAGE_PIXELS and warns in between.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = png_bytes(np.zeros((12, 12, 3), np.uint8))  # 144 px: between 1x and 2x the limit
    with pytest.raises(DataError) as info:
        decode_image(data, "big.png")
    assert str(info.value).startswith("big.png: image too large (12x12 px")


def test_exif_orientation_is_applied():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), "x.jpg").shape == (20, 10, 3)


def test_jpeg_masks_are_binarised_at_127():
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    decoded = decode_mask(png_bytes(mask, "JPEG", quality=50), "m.jpg")
    assert decoded.dtype == bool
    assert decoded[6:10, 6:10].all() and not decoded[:2, :2].any()
    assert decode_mask(png_bytes(np.array([[127, 128]], np.uint8)), "m").tolist() == [[False, True]]


def test_colour_masks_take_their_brightest_channel():
    """A crack drawn in pure red (luminance 76) is a crack, in RGB and in a palette PNG;
    a white-on-black RGB mask reads as its grey twin."""
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, :, 0] = 255
    assert decode_mask(png_bytes(rgb), "red.png")[1].all()
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert decode_mask(buf.getvalue(), "red_p.png").sum() == 4
    grey = np.zeros((4, 4), np.uint8)
    grey[2, 1:3] = 200
    assert (decode_mask(png_bytes(np.stack([grey] * 3, axis=2)), "rgb.png")
            == decode_mask(png_bytes(grey), "grey.png")).all()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_never_crashes_on_garbage(data):
    for decode in (decode_image, decode_mask):
        try:
            decode(data, "fuzz.png")
        except DataError as exc:
            assert str(exc).startswith("fuzz.png: ")


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 2000))
def test_decoder_survives_damaged_real_files(noise, cut):
    import gzip
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, format="PNG")
    for blob in (buf.getvalue(), gzip.compress(buf.getvalue())):
        damaged = blob[:cut] + noise + blob[cut + len(noise):]
        with contextlib.suppress(DataError):
            decode_image(damaged, "x.png")


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    from pathlib import Path

    from fissure.data.image import read_bytes

    target = tmp_path / "x.png"
    target.write_bytes(b"x")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="x.png: cannot read \\(Permission denied\\)"):
        read_bytes(target)

