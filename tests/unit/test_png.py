"""The PNG integrity check without decoding (engine.data.png) against PIL's full decode, on whole,
cut and damaged files: it must accept and refuse exactly what decoding accepts and refuses."""
from __future__ import annotations

import io
import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.data.dataset import InvalidRecord, check_image, check_image_header
from engine.data.png import SIGNATURE, png_complete, png_size


def decodes_with_pil(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files
        return False
    return True


def accepted(data: bytes) -> bool:
    try:
        check_image(data)
    except InvalidRecord:
        return False
    return True


@st.composite
def pngs(draw) -> bytes:
    mode = draw(st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "1", "I;16"]))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    pixels = draw(st.binary(min_size=4, max_size=4))
    image = Image.new("RGBA", (width, height), tuple(pixels))
    for k in range(draw(st.integers(0, 6))):  # some structure, so rows use different filters
        image.putpixel((k * 7 % width, k * 5 % height), (k * 40 % 256, 255 - k, k, 200))
    image = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=draw(st.integers(0, 9)))
    return out.getvalue()


@st.composite
def damaged(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["whole", "cut", "flip", "cut_and_flip"]))
    if how in ("cut", "cut_and_flip"):
        data = data[:draw(st.integers(0, len(data) - 1))]
    if how in ("flip", "cut_and_flip") and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return data


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_check_accepts_exactly_what_pil_decodes(data):
    png = data.draw(pngs())
    candidate = data.draw(damaged(png))
    assert accepted(candidate) == decodes_with_pil(candidate)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _rgb_png(rows: bytes, width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def test_image_data_with_valid_checksums_but_missing_rows_or_a_bad_filter_is_refused():
    whole = b"".join(b"\x00" + bytes(6) for _ in range(3))  # 2x3 RGB, filter type 0 on each row
    assert png_complete(_rgb_png(whole, 2, 3)) is True and decodes_with_pil(_rgb_png(whole, 2, 3))
    bad_filter = _rgb_png(b"\x09" + whole[1:], 2, 3)
    assert png_complete(bad_filter) is False and not decodes_with_pil(bad_filter)
    # Stricter than PIL: a complete zlib stream that holds a row too few decodes there, the missing
    # row left black; here it is refused, as the image is not what its header says.
    short = _rgb_png(whole[:-7], 2, 3)
    assert png_complete(short) is False and decodes_with_pil(short)


def test_formats_it_does_not_cover_are_left_to_pil():
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(out, format="JPEG")
    assert png_complete(out.getvalue()) is None
    assert accepted(out.getvalue()) and not accepted(out.getvalue()[:-30])


def test_huge_images_are_left_to_pil_and_its_decompression_bomb_rule():
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 2.7 GB of pixels if inflated
    png = SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _chunk(b"IEND", b"")
    assert png_complete(png) is None
    assert not accepted(png)


@settings(max_examples=200, deadline=None)
@given(pngs())
def test_the_header_check_reads_the_size_pil_reads(data):
    with Image.open(io.BytesIO(data)) as im:
        assert png_size(data) == im.size
    check_image_header(data)
    check_image_header(data[:40])  # the header alone: the pixels are not the header check's concern


def test_the_header_check_refuses_what_is_no_image_or_has_no_size():
    for bad in (b"not an image at all", SIGNATURE + b"\x00\x00\x00\x0dIHDR" + struct.pack(">II", 0, 7)):
        try:
            check_image_header(bad)
        except InvalidRecord as err:
            assert err.reason.startswith("image_undecodable")
        else:
            raise AssertionError(f"accepted {bad!r}")
    assert png_size(b"GIF89a" + bytes(20)) is None
