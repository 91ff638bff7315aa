"""Proof that a downloaded file is what it claims to be, before anything stores it.

A truncated or corrupt file still has a readable header, so reading its size proves
nothing. ``verify_output`` proves the whole file, in every form the model may return
(``output_schema.json``: ``image``/``images``, ``video``/``videos``):

- an image is decoded to its last pixel, every frame of it (animated GIF, APNG and WebP,
  multi-page TIFF: Pillow decodes only the first frame unless asked); formats whose
  decoder forgives a missing end check it themselves: a PNG must end in a whole ``IEND``
  chunk (its CRC included), a GIF's blocks must all be there up to its trailer, a BMP
  must be as long as its header says (Pillow reads a last row short of its padding);
- a still, non-interlaced PNG (what the model returns) is proved without Pillow, at a
  third of its cost (1.4 ms instead of 3.6 ms for the model's 1024 × 1024, the largest
  share of flashgen's own CPU per image after S3): its compressed pixels inflate, Adler-32
  checked, to exactly the bytes its header's size needs, and every row starts with a
  filter type PNG defines. Undoing the filters cannot fail after that, so the file
  decodes to its last pixel; and a row can only come out wrong if the file was written
  wrong *with* valid CRCs, which no transfer does. It is stricter than Pillow (which takes
  a stream without its checksum, or with rows to spare): ``tests/test_decode.py`` checks
  that it never accepts what Pillow refuses;
- a video (MP4 / QuickTime, the ISO base media format) must be whole: its top-level boxes
  tile the file exactly, with ``ftyp``, ``moov`` and ``mdat`` among them. flashgen has no
  video decoder, so a video in any other container cannot be proved and is refused.

A file that is not whole raises ``CorruptDownloadError``, transient: the job is paid, so the
caller fetches it again from its request_id, never resubmits. One that cannot be proved
(an unknown video container) raises it permanent: fetching again would not help.

    >>> import io; from PIL import Image
    >>> buffer = io.BytesIO(); Image.new("RGB", (4, 3)).save(buffer, "PNG")
    >>> verify_output(buffer.getvalue(), "image/png")
    (4, 3)
    >>> verify_output(buffer.getvalue()[:-1], "image/png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flashgen.errors.CorruptDownloadError: the image/png file does not decode: ...
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

from PIL import Image, ImageSequence

from flashgen.errors import CorruptDownloadError

# Far above any output of the model (1440 × 1440); refuses decompression bombs.
MAX_PIXELS = 64_000_000
MAX_FRAMES = 10_000  # of one animated image: each is decoded
_PNG = b"\x89PNG\r\n\x1a\n"
_GIF = (b"GIF87a", b"GIF89a")


def verify_output(data: bytes, content_type: str, *,
                  request_id: str | None = None) -> tuple[int, int] | None:
    """``(width, height)`` of an image that decodes completely; None for a whole video.

    Raises ``CorruptDownloadError`` when the bytes are not a whole image or video.
    """
    kind = content_type.lower()
    try:
        if kind.startswith("image/"):
            return _image(data)
        if kind.startswith("video/"):
            _video(data, kind.split(";")[0].strip())
            return None
    except _Unprovable as exc:
        raise CorruptDownloadError(f"the {content_type} file cannot be verified: {exc}",
                                   request_id=request_id, transient=False) from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError, …
        raise CorruptDownloadError(f"the {content_type} file does not decode: {exc}",
                                   request_id=request_id) from None
    raise CorruptDownloadError(f"{content_type!r} is neither an image nor a video",
                               request_id=request_id, transient=False)


class _Unprovable(Exception):
    """Whole or not, flashgen cannot tell (no decoder for it)."""


def _image(data: bytes) -> tuple[int, int]:
    if data.startswith(_PNG):
        png = _png_whole(data)
        if png.simple:
            return png.pixels_whole()
    elif data.startswith(_GIF):
        _gif_whole(data)
    elif data.startswith(b"BM") and len(data) >= 6:
        (size,) = struct.unpack("<I", data[2:6])
        if len(data) < size:
            raise ValueError(f"the file is {len(data)} bytes, its header says {size}")
    with warnings.catch_warnings():
        # Pillow warns, not raises, for some damage (a TIFF read short, corrupt EXIF, a
        # bomb): refuse it.
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{image.width}x{image.height} is too many pixels")
            image.verify()  # checksums (PNG chunk CRCs) and structure
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            for frames, frame in enumerate(ImageSequence.Iterator(image), start=1):
                if frames > MAX_FRAMES:  # every pixel of every frame, within reason
                    raise ValueError(f"more than {MAX_FRAMES} frames")
                frame.load()
            return size


def _png_whole(data: bytes) -> _Png:
    """Every chunk whole, with its CRC, up to and including ``IEND``; what it holds."""
    png = _Png()
    at = len(_PNG)
    while True:
        if at + 12 > len(data):
            raise ValueError("the file ends inside a chunk, before IEND")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        end = at + 12 + length
        if end > len(data):
            raise ValueError(f"the file ends inside its {kind!r} chunk")
        body = memoryview(data)[at + 8:end - 4]
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise ValueError(f"{kind!r} chunk fails its CRC")
        if kind == b"IEND":
            return png
        png.read(kind, body)
        at = end


# Bits per pixel of each PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey + alpha,
# 6 RGBA) per bit of depth, and the depths each allows.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_FILTERS = 4  # row filter types 0 (none) to 4 (Paeth)
_INFLATE_STEP = 1 << 16  # inflated a piece at a time: small buffers, and no bomb


class _Png:
    """A PNG's header and compressed pixels, as ``_png_whole`` reads them."""

    def __init__(self) -> None:
        self.header: tuple[int, ...] | None = None
        self.pixels: list[memoryview] = []
        self.animated = False

    def read(self, kind: bytes, body: memoryview) -> None:
        if kind == b"IHDR" and len(body) == 13 and self.header is None:
            self.header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            self.pixels.append(body)
        elif kind == b"acTL":
            self.animated = True

    @property
    def simple(self) -> bool:
        """A still image, not interlaced, with a header PNG allows: proved here, not by
        Pillow (an odd one, APNG or interlaced, is left to Pillow, which knows them)."""
        if self.header is None or self.animated:
            return False
        width, height, depth, colour, compression, filtering, interlace = self.header
        return (depth in _PNG_DEPTHS.get(colour, ()) and compression == filtering == 0
                and interlace == 0 and 0 < width < 2**31 and 0 < height < 2**31)

    def pixels_whole(self) -> tuple[int, int]:
        """``(width, height)`` once the pixels inflate to exactly the rows the header needs,
        each starting with a filter type PNG defines."""
        width, height, depth, colour, *_ = self.header or ()
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} is too many pixels")
        row = 1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8  # filter byte + pixels
        expected, done = row * height, 0
        inflate = zlib.decompressobj()
        for part in self.pixels:
            pending: bytes | memoryview = part
            while pending:
                piece = inflate.decompress(pending, _INFLATE_STEP)
                pending = inflate.unconsumed_tail
                if done + len(piece) > expected:
                    raise ValueError(f"more pixel data than {width}x{height} holds")
                filters = piece[-done % row::row]  # the filter bytes that fall in this piece
                if filters and max(filters) > _PNG_FILTERS:
                    raise ValueError(f"a row has filter type {max(filters)}, not 0-4")
                done += len(piece)
        if not inflate.eof:
            raise ValueError(f"the pixels end after {done} of {expected} bytes")
        if done != expected:
            raise ValueError(f"{done} bytes of pixels, {width}x{height} needs {expected}")
        return width, height


def _gif_whole(data: bytes) -> None:
    """Every block there, each image's data sub-blocks to their terminator, then ``;``."""
    def table(flags: int) -> int:
        return 3 * (2 << (flags & 7)) if flags & 0x80 else 0

    def sub_blocks(at: int) -> int:
        while True:
            size = data[at]  # IndexError past the end: the file is short
            at += 1 + size
            if size == 0:
                return at

    at = 13 + table(data[10])
    while True:
        block = data[at]
        if block == 0x3B:  # the trailer
            return
        if block == 0x21:  # an extension: label, then sub-blocks
            at = sub_blocks(at + 2)
        elif block == 0x2C:  # an image: descriptor, local colour table, LZW size, data
            at = sub_blocks(at + 10 + table(data[at + 9]) + 1)
        else:
            raise ValueError(f"unknown GIF block 0x{block:02x} at byte {at}")


_ISO_TYPES = ("video/mp4", "video/quicktime", "video/x-m4v", "video/3gpp")
_ISO_FIRST = (b"ftyp", b"wide", b"free", b"moov", b"mdat", b"skip")


def _video(data: bytes, content_type: str) -> None:
    """An ISO base media file (MP4, QuickTime) whose top-level boxes tile it exactly."""
    if content_type not in _ISO_TYPES and data[4:8] not in _ISO_FIRST:
        raise _Unprovable("only MP4 / QuickTime (ISO base media) videos can be checked")
    seen, at = set(), 0
    while at < len(data):
        if at + 8 > len(data):
            raise ValueError("the file ends inside a box header")
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        header = 8
        if size == 1:  # a 64-bit size follows
            if at + 16 > len(data):
                raise ValueError("the file ends inside a box header")
            (size,) = struct.unpack(">Q", data[at + 8:at + 16])
            header = 16
        elif size == 0:  # "to the end of the file": nothing can say it is whole
            raise ValueError(f"box {kind!r} has no size")
        if size < header or at + size > len(data):
            raise ValueError(f"box {kind!r} runs past the end of the file")
        seen.add(kind)
        at += size
    missing = {b"ftyp", b"moov", b"mdat"} - seen
    if missing:
        raise ValueError(f"no {', '.join(sorted(m.decode() for m in missing))} box")
