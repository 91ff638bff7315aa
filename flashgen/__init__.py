"""flashgen: prompts in, images in S3, through RunComfy's Model API and Prefect.

::

    import flashgen

    result = flashgen.generate(["a red fox at dawn"], bucket="my-images")
    result.items[0].images[0].url      # opens the image

``generate`` / ``agenerate`` and their result types live in ``flashgen.api``; they are
loaded on first use, so ``import flashgen`` (and the ``flashgen`` command's ``--help``)
stays quick. Every error flashgen raises is a ``FlashgenError`` (``flashgen.errors``).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from flashgen.errors import (
    AccountError,
    AmbiguousSubmissionError,
    ApiError,
    AuthenticationError,
    BatchFailedError,
    BudgetError,
    DownloadError,
    FlashgenError,
    InputError,
    JobError,
    StorageError,
)

if TYPE_CHECKING:
    from flashgen.api import BatchResult, ItemResult, StoredImage, agenerate, generate

try:
    __version__ = version("flashgen")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

_API = ("BatchResult", "ItemResult", "StoredImage", "agenerate", "generate")

__all__ = [
    "BatchResult",
    "ItemResult",
    "StoredImage",
    "agenerate",
    "generate",
    "AccountError",
    "AmbiguousSubmissionError",
    "ApiError",
    "AuthenticationError",
    "BatchFailedError",
    "BudgetError",
    "DownloadError",
    "FlashgenError",
    "InputError",
    "JobError",
    "StorageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module("flashgen.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flashgen' has no attribute {name!r}")
