"""No broken file is stored as good (issue 17.4): generated cases over every format and
form the model may return (``output_schema.json``: images, animated ones among them, and
videos), cut short at any byte or with bytes flipped anywhere."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, features

from flashgen.decode import verify_output
from flashgen.errors import CorruptDownloadError

EXAMPLES = 300

# name -> (Pillow format, save options, how many frames)
FORMATS = {
    "png": ("PNG", {}, 1), "apng": ("PNG", {}, 3),
    "jpeg": ("JPEG", {}, 1), "jpeg-progressive": ("JPEG", {"progressive": True}, 1),
    "webp": ("WEBP", {}, 1), "webp-lossless": ("WEBP", {"lossless": True}, 1),
    "webp-animated": ("WEBP", {}, 3),
    "gif": ("GIF", {}, 1), "gif-animated": ("GIF", {}, 3),
    "tiff": ("TIFF", {}, 1), "tiff-lzw": ("TIFF", {"compression": "tiff_lzw"}, 1),
    "tiff-pages": ("TIFF", {}, 3), "bmp": ("BMP", {}, 1),
}
if features.check("avif"):
    FORMATS["avif"] = ("AVIF", {}, 1)


def _image(name: str, width: int, height: int, seed: int) -> bytes:
    fmt, options, frames = FORMATS[name]
    rng = random.Random(seed)
    images = [Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
              for _ in range(frames)]
    out = io.BytesIO()
    if frames > 1:
        images[0].save(out, fmt, save_all=True, append_images=images[1:], **options)
    else:
        images[0].save(out, fmt, **options)
    return out.getvalue()


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _mp4(seed: int, media: int) -> bytes:
    """An ISO base media file's top-level structure: ftyp, moov (with a header), mdat."""
    rng = random.Random(seed)
    return (_box(b"ftyp", b"isom\0\0\2\0isomiso2mp41")
            + _box(b"moov", _box(b"mvhd", rng.randbytes(100)))
            + _box(b"mdat", rng.randbytes(media)))


images = st.tuples(st.sampled_from(sorted(FORMATS)), st.integers(1, 40), st.integers(1, 40),
                   st.integers(0, 2**32))


@settings(max_examples=EXAMPLES, deadline=None)
@given(image=images, data=st.data())
def test_an_image_cut_short_anywhere_is_never_good(image, data):
    name, width, height, seed = image
    whole = _image(name, width, height, seed)
    assert verify_output(whole, "image/png") == (width, height)
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    with pytest.raises(CorruptDownloadError) as caught:
        verify_output(whole[:cut], "image/png")
    assert caught.value.transient  # fetched again from the request_id, never resubmitted


def test_a_bmp_short_of_its_last_rows_padding_is_refused():
    """Found by the test above: Pillow decodes a BMP whose last row lacks its padding."""
    whole = _image("bmp", 30, 1, 0)  # one row of 90 bytes, padded to 92
    with pytest.raises(CorruptDownloadError, match="header says"):
        verify_output(whole[:-2], "image/bmp")


@settings(max_examples=EXAMPLES, deadline=None)
@given(image=images, data=st.data())
def test_an_image_with_flipped_bytes_decodes_whole_or_is_refused(image, data):
    """Formats without checksums may still decode (a flipped pixel is a pixel); nothing
    else may happen: no other exception, and what passes decodes again to the same size."""
    name, width, height, seed = image
    whole = bytearray(_image(name, width, height, seed))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        at = data.draw(st.integers(0, len(whole) - 1))
        whole[at] ^= data.draw(st.integers(1, 255))
    try:
        size = verify_output(bytes(whole), "image/png")
    except CorruptDownloadError:
        return
    assert size is not None and size[0] * size[1] > 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32), media=st.integers(0, 2000), data=st.data())
def test_a_video_cut_short_anywhere_is_never_good(seed, media, data):
    whole = _mp4(seed, media)
    assert verify_output(whole, "video/mp4") is None
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    with pytest.raises(CorruptDownloadError) as caught:
        verify_output(whole[:cut], "video/mp4")
    assert caught.value.transient


def test_a_video_flashgen_cannot_check_is_refused_for_good():
    webm = b"\x1aE\xdf\xa3" + b"\0" * 100
    with pytest.raises(CorruptDownloadError, match="cannot be verified") as caught:
        verify_output(webm, "video/webm")
    assert not caught.value.transient  # fetching it again would not help


# -- PNG: flashgen's own proof (flashgen.decode._Png) against Pillow's full decode -------

PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


def _png(mode: str, width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    image = image.convert(mode) if mode != "I;16" else Image.frombytes(
        "I;16", (width, height), rng.randbytes(2 * width * height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    found, at = [], 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        found.append((kind, png[at + 8:at + 8 + length]))
        at += 12 + length
    return found


def _rebuilt(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these chunks, each with a right CRC: damage that no CRC can see."""
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))
        for kind, body in chunks)


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size
    except Exception:
        return None


pngs = st.tuples(st.sampled_from(PNG_MODES), st.integers(1, 40), st.integers(1, 40),
                 st.integers(0, 2**32))


@settings(max_examples=EXAMPLES, deadline=None)
@given(png=pngs, data=st.data())
def test_a_png_in_any_mode_is_whole_and_cut_short_anywhere_is_never_good(png, data):
    mode, width, height, seed = png
    whole = _png(mode, width, height, seed)
    assert verify_output(whole, "image/png") == (width, height)
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    with pytest.raises(CorruptDownloadError):
        verify_output(whole[:cut], "image/png")


@settings(max_examples=EXAMPLES, deadline=None)
@given(png=pngs, data=st.data())
def test_a_png_written_wrong_with_right_crcs_passes_only_if_pillow_decodes_it(png, data):
    """The pixels inflated, cut, padded, or with bytes flipped before or after deflating,
    then every CRC made right again: flashgen's proof never takes what Pillow refuses."""
    mode, width, height, seed = png
    chunks = _chunks(_png(mode, width, height, seed))
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    damage = data.draw(st.sampled_from(["flip-raw", "flip-deflated", "cut", "pad",
                                        "no-adler"]), label="damage")
    at = data.draw(st.integers(0, len(pixels) - 1), label="at")
    raw = bytearray(pixels)
    if damage == "flip-raw":
        raw[at] ^= data.draw(st.integers(1, 255), label="xor")
    elif damage == "cut":
        del raw[at:]
    elif damage == "pad":
        raw += bytes(data.draw(st.integers(1, 50), label="pad"))
    deflated = bytearray(zlib.compress(bytes(raw)))
    if damage == "flip-deflated":
        deflated[at % len(deflated)] ^= data.draw(st.integers(1, 255), label="xor")
    elif damage == "no-adler":
        del deflated[-4:]
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    rest = [c for c in chunks if c[0] != b"IDAT"]
    damaged = _rebuilt(rest[:first] + [(b"IDAT", bytes(deflated))] + rest[first:])
    try:
        size = verify_output(damaged, "image/png")
    except CorruptDownloadError:
        return
    assert _pillow_size(damaged) == size == (width, height)
