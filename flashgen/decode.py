"""Proof that a downloaded file is what it claims to be, before anything stores it.

A truncated or corrupt file still has a readable header, so reading its size proves
nothing. ``verify_output`` proves the whole file, in every form the model may return
(``output_schema.json``: ``image``/``images``, ``video``/``videos``):

- an image is decoded to its last pixel, every frame of it (animated GIF, APNG and WebP,
  multi-page TIFF: Pillow decodes only the first frame unless asked); formats whose
  decoder forgives a missing end check it themselves: a PNG must end in a whole ``IEND``
  chunk (its CRC included), a GIF's blocks must all be there up to its trailer, a BMP
  must be as long as its header says (Pillow reads a last row short of its padding);
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
        _png_whole(data)
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


def _png_whole(data: bytes) -> None:
    """Every chunk whole, with its CRC, up to and including ``IEND``."""
    at = len(_PNG)
    while True:
        if at + 12 > len(data):
            raise ValueError("the file ends inside a chunk, before IEND")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        end = at + 12 + length
        if end > len(data):
            raise ValueError(f"the file ends inside its {kind!r} chunk")
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[at + 4:end - 4]) != crc:
            raise ValueError(f"{kind!r} chunk fails its CRC")
        if kind == b"IEND":
            return
        at = end


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
