"""The token blanked out of everything a server or a library says.

An API may echo the request's ``Authorization`` header anywhere: in an error message, as
a value or a key of a job's ``error`` object, nested at any depth, URL-quoted in a link,
escaped in a ``repr`` (``b'Bearer …'``), base64-encoded in a blob. ``Scrubber`` replaces
every such form of the token with ``[token]`` in strings, and in the keys and values of
dicts, lists and tuples, to any depth::

    >>> scrub = Scrubber("s3cr3t/t0ken+x")
    >>> scrub({"Bearer s3cr3t/t0ken+x": ["s3cr3t%2Ft0ken%2Bx", "czNjcjN0L3Qwa2VuK3g="]})
    {'Bearer [token]': ['[token]', '[token]g=']}

The client passes every server string through it before the string reaches an exception,
a model, a log line or a caller; the tests look for ``token_forms`` in every output.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MARK", "Scrubber", "token_forms"]

MARK = "[token]"
# Below this many characters a base64 core would match ordinary text by chance.
_MIN_BASE64_CORE = 8


def token_forms(token: str) -> list[str]:
    """Every form in which ``token`` may be written, longest first.

    The token as it is; escaped as ``repr``, ``unicode_escape``, JSON and HTML write it;
    URL-quoted (both cases of hex digits); and the part of its base64 (standard and
    URL-safe) that is the same whatever text comes before it, at each of the three
    alignments a base64 encoder may meet it at.
    """
    forms = {token, repr(token)[1:-1], repr(token.encode())[2:-1],
             token.encode("unicode_escape").decode("ascii"), json.dumps(token)[1:-1],
             html.escape(token), html.escape(token, quote=False)}
    for quoted in (quote(token, safe=""), quote(token), quote_plus(token)):
        forms |= {quoted, _lower_hex(quoted)}
    raw = token.encode()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw).decode("ascii")
            # Characters whose 6 bits all come from the token's bytes.
            core = text[-(-8 * shift // 6):(8 * (shift + len(raw))) // 6]
            if len(core) >= _MIN_BASE64_CORE:
                forms.add(core)
    return sorted((form for form in forms if form), key=len, reverse=True)


def _lower_hex(quoted: str) -> str:
    """``%2F`` as ``%2f``: servers differ in the case of their percent-escapes."""
    parts = quoted.split("%")
    return parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:])


class Scrubber:
    """Call it on any value: strings lose every form of the token; containers are rebuilt."""

    def __init__(self, token: str) -> None:
        self._forms = token_forms(token)

    def __repr__(self) -> str:
        return "Scrubber([token])"

    def text(self, value: str) -> str:
        for form in self._forms:
            if form in value:
                value = value.replace(form, MARK)
        return value

    def __call__(self, value: Any) -> Any:
        """``value`` with the token scrubbed from every string in it, keys included.

        Iterative, so a body nested deeper than Python's recursion limit is no crash.
        """
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, dict | list | tuple):
            return value
        root: list[Any] = [None]
        # (container to fill, where in it, the original there); tuples are filled as lists
        # and frozen at the end, innermost first.
        stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]
        tuples: list[tuple[Any, Any]] = []
        while stack:
            parent, slot, original = stack.pop()
            if isinstance(original, str):
                parent[slot] = self.text(original)
            elif isinstance(original, dict):
                parent[slot] = copy = {}
                for key, item in original.items():
                    key = self.text(key) if isinstance(key, str) else key
                    copy[key] = None
                    stack.append((copy, key, item))
            elif isinstance(original, list | tuple):
                parent[slot] = items = [None] * len(original)
                stack += [(items, i, item) for i, item in enumerate(original)]
                if isinstance(original, tuple):
                    tuples.append((parent, slot))
            else:
                parent[slot] = original
        for parent, slot in reversed(tuples):
            parent[slot] = tuple(parent[slot])
        return root[0]
