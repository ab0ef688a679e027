"""A full integrity check of common PNG files without decoding their pixels.

Checking that an input image is complete used to mean decoding it with PIL: about 200 us for a
112x112 face, most of an input record's cost when a job reads FEA-20K JSONL. For the PNGs that
faces come as (8-bit grey, grey+alpha, RGB, RGBA; not interlaced) this reads the chunks, checks
every CRC, inflates the image data and checks that it holds exactly the rows the header promises,
each starting with a valid filter type. That refuses every cut or damaged file PIL's decoder refuses
(tests/unit/test_png.py checks this against PIL), and also image data a row short, which PIL decodes
with the row black, at a fraction of the cost. Anything else (other formats, palettes, 16-bit,
interlaced, huge) is left to PIL (`None`).
"""
from __future__ import annotations

import struct
import zlib

from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAMPLES_PER_PIXEL = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples (grey, RGB, grey+alpha, RGBA)
_MAX_FILTER_TYPE = 4


def png_complete(data: bytes) -> bool | None:
    """True: a whole, decodable PNG of the covered kinds. False: a damaged or cut PNG. None: not covered."""
    if not data.startswith(SIGNATURE):
        return None
    chunks = _chunks(data)
    if chunks is None:
        return False
    header, idat = chunks
    shape = _row_shape(header)
    if shape is None:
        return None
    rows, row_bytes = shape
    return _inflates_to_rows(idat, rows, row_bytes)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header (signature, then IHDR first), without reading further; None
    when `data` does not start like a PNG."""
    if not data.startswith(SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack_from(">II", data, 16)


def _chunks(data: bytes) -> tuple[bytes, bytes] | None:
    """(IHDR data, all IDAT data joined), or None when a chunk is cut or fails its CRC, or no IEND
    follows. As in PIL, the file may end once IEND's type is read (its CRC is not checked)."""
    pos, header, idat = len(SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return (header, b"".join(idat)) if header is not None and idat else None
        end = pos + 8 + length
        if end + 4 > len(data) or zlib.crc32(data[pos + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return None
        if header is None and kind != b"IHDR":
            return None
        if kind == b"IHDR":
            header = data[pos + 8:end]
        elif kind == b"IDAT":
            idat.append(data[pos + 8:end])
        pos = end + 4
    return None


def _row_shape(header: bytes) -> tuple[int, int] | None:
    """(rows, bytes per row without its filter byte) for the covered kinds, else None."""
    if len(header) != 13:
        return None
    width, height, depth, colour, compression, filter_method, interlace = struct.unpack(">IIBBBBB", header)
    if (depth != 8 or colour not in _SAMPLES_PER_PIXEL or compression or filter_method or interlace
            or not width or not height):
        return None
    if width * height > (Image.MAX_IMAGE_PIXELS or 0):  # PIL's decompression-bomb rule decides these
        return None
    return height, width * _SAMPLES_PER_PIXEL[colour]


def _inflates_to_rows(idat: bytes, rows: int, row_bytes: int) -> bool:
    """The image data holds every row, each led by a valid filter type. Like a decoder, it reads no
    further than the last row (bounded: a compression bomb stops there too)."""
    expected = rows * (row_bytes + 1)
    try:
        raw = zlib.decompressobj().decompress(idat, expected)
    except zlib.error:
        return False
    return len(raw) == expected and max(raw[::row_bytes + 1]) <= _MAX_FILTER_TYPE
