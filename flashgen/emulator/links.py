"""File links that may expire, signed like a pre-signed object-store URL.

    >>> links = LinkSigner(ttl=60)
    >>> query = links.query("/files/abc/0.png")
    >>> params = dict(p.split("=") for p in query.lstrip("?").split("&"))
    >>> links.valid("/files/abc/0.png", params["expires"], params["sig"])
    True

Without a ttl links carry no query and never expire. The secret is made per process,
so a link is only good at the emulator that minted it, as with a real signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable


class LinkSigner:
    def __init__(self, ttl: float | None, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._secret = secrets.token_bytes(32)

    def query(self, path: str) -> str:
        """The query string that makes ``path`` a valid link for ``ttl`` seconds from now."""
        if self.ttl is None:
            return ""
        # Milliseconds, so that two results fetched within one second get distinct links.
        expires = f"{self._clock() + self.ttl:.3f}"
        return f"?expires={expires}&sig={self._sign(path, expires)}"

    def valid(self, path: str, expires: str | None, sig: str | None) -> bool:
        if self.ttl is None:
            return True
        if not expires or not sig or not hmac.compare_digest(sig, self._sign(path, expires)):
            return False
        return float(expires) > self._clock()

    def _sign(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()
