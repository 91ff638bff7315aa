"""Proof that a downloaded file is what it claims to be, before anything stores it.

A truncated or corrupt PNG still has a readable header, so reading its size proves
nothing: ``verify_output`` decodes every pixel. A file that does not decode raises a
``CorruptDownloadError`` (transient): the job is paid for, so the caller fetches it again from its
request_id, never resubmits.

    >>> import io; from PIL import Image
    >>> buffer = io.BytesIO(); Image.new("RGB", (4, 3)).save(buffer, "PNG")
    >>> verify_output(buffer.getvalue(), "image/png")
    (4, 3)
    >>> verify_output(buffer.getvalue()[:-20], "image/png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flashgen.errors.CorruptDownloadError: the image/png file does not decode: ...
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from flashgen.errors import CorruptDownloadError

# Far above any output of the model (1440 × 1440); refuses decompression bombs.
MAX_PIXELS = 64_000_000


def verify_output(data: bytes, content_type: str, *,
                  request_id: str | None = None) -> tuple[int, int] | None:
    """``(width, height)`` of an image that decodes completely; None for non-images (video).

    Raises ``CorruptDownloadError`` when the bytes are not a whole image.
    """
    if not content_type.lower().startswith("image/"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ValueError(f"{image.width}x{image.height} is too many pixels")
                image.verify()  # checksums (PNG chunk CRCs) and structure
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # every pixel: a truncated stream fails here
                return image.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, …
        raise CorruptDownloadError(f"the {content_type} file does not decode: {exc}",
                                   request_id=request_id) from None
