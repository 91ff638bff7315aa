"""The token has one way out: the Authorization header to the API (issue 17.1).

Generated cases: token shapes (visible ASCII of any kind, wrapped in the whitespace a file
or a Kubernetes secret adds; or with a space, control or non-ASCII character inside)
× every place a server can put it (error messages, error ``detail`` and a failed job's
``error`` as keys and values at any depth, non-JSON bodies, result fields, submit
answers) × every form it can take there (as sent, ``b'Bearer …\\n'``, URL-quoted,
base64 at any alignment, JSON- and HTML-escaped). A real HTTP server on 127.0.0.1
echoes the header it received; everything the client gives back (return values,
exceptions with their tracebacks and attributes, every log record at DEBUG) must hold
no form of the token.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import re
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flashgen import timing
from flashgen.client import RunComfyClient
from flashgen.errors import FlashgenError, InputError
from flashgen.models import DEFAULT_MODEL
from flashgen.scrub import token_forms
from flashgen.settings import Settings, Token, normalise_token, resolve_token
from flashgen.timing import Backoff

EXAMPLES = 250

FORMS = {
    "as sent": lambda h: h,
    "token only": lambda h: h.removeprefix("Bearer "),
    "bytes repr": lambda h: repr(h.encode() + b"\n"),
    "unicode escape": lambda h: (h + "\n").encode("unicode_escape").decode(),
    "url-quoted": lambda h: quote(h, safe=""),
    "url-quoted lower": lambda h: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(),
                                         quote(h, safe="")),
    "quote_plus": lambda h: quote_plus(h),
    "base64": lambda h: base64.b64encode(h.encode()).decode(),
    "base64 shifted": lambda h: base64.b64encode(b"x:" + h.encode()).decode(),
    "base64 url": lambda h: base64.urlsafe_b64encode(b"?" + h.encode()).decode(),
    "json": lambda h: json.dumps(h),
    "html": lambda h: html.escape(h),
}


def _json(status: int, body: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


# Where the server puts the echo ``e``: (call, answer to every request).
PLACES = {
    "error message": ("status", lambda e: _json(500, {"message": e, "error_code": 500001})),
    "error detail key": ("result", lambda e: _json(
        422, {"message": "no", "detail": {e: [e, {"deep": {e: [[{e: e}]]}}]}})),
    "401 message": ("status", lambda e: _json(401, {"message": e, "detail": {e: e}})),
    "404 as key": ("cancel", lambda e: _json(404, {e: e, "message": {e: e}})),
    "text body": ("status", lambda e: (502, "text/plain", e.encode())),
    "malformed success": ("result", lambda e: (200, "text/plain", e.encode())),
    "job error": ("wait", lambda e: _json(
        200, {"status": "failed", "error": {e: {"deep": [[{e: e}]]}, "message": e}})),
    "result fields": ("result", lambda e: _json(
        200, {"status": "completed", "output": {"image": "https://files.test/" + quote(e)},
              e: {e: e}})),
    "submit answer": ("submit", lambda e: _json(200, {"request_id": "r-1", e: [e]})),
    "submit refusal": ("submit", lambda e: _json(400, {"message": e, "detail": {e: e}})),
    "submit 5xx": ("submit", lambda e: _json(503, {"message": e})),
}


class _Echo(BaseHTTPRequestHandler):
    """Answers every request by the current place and form, echoing its Authorization."""

    answer = None  # set by the test: header -> (status, content type, body)

    def _reply(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        status, kind, body = type(self).answer(self.headers.get("authorization", ""))
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply

    def log_message(self, *args: Any) -> None:  # the server's own log is not the client's
        pass


@pytest.fixture(scope="module")
def echo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + repr(record.args))


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), repr(vars(exc)), "".join(traceback.format_exception(exc))]


async def _call(base: str, token: str, call: str) -> list[str]:
    once = {name: Backoff(attempts=1, budget=1.0)
            for name in ("submit", "status", "result", "cancel", "download")}
    seen: list[str] = []
    async with RunComfyClient(token, base, retries=once) as client:
        try:
            if call == "submit":
                got: Any = await client.submit(DEFAULT_MODEL, {"prompt": "a fox"})
            elif call == "wait":
                got = await client.wait("r-1", timeout=1)
            else:
                got = await getattr(client, call)("r-1")
            seen += [repr(got), got.model_dump_json() if hasattr(got, "model_dump_json") else ""]
        except FlashgenError as exc:
            seen += _exception_texts(exc)
    return seen


visible_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=12,
                        max_size=48)
wrapping = st.sampled_from(["", "\n", "\r\n", " ", "\t", " \n", "\n\n"])


@settings(max_examples=EXAMPLES, deadline=None)
@given(token=visible_ascii, before=wrapping, after=wrapping,
       place=st.sampled_from(sorted(PLACES)), form=st.sampled_from(sorted(FORMS)))
def test_no_form_of_the_token_leaves_the_client(echo_server, token, before, after, place,
                                                 form):
    timing.set_testing()
    call, reply = PLACES[place]
    _Echo.answer = staticmethod(lambda header: reply(FORMS[form](header)))
    logs = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    try:
        seen = asyncio.run(_call(echo_server, before + token + after, call))
    finally:
        root.removeHandler(logs)
        root.setLevel(old_level)
    for text in seen + logs.lines:
        for leaked in token_forms(token):
            assert leaked not in text, (place, form, text[:300])


bad_inside = st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x7f", "\x1b", "\u00e9",
                              "\u2028", "\ufeff", "\U0001f511"])


@settings(max_examples=EXAMPLES, deadline=None)
@given(head=visible_ascii, bad=bad_inside, tail=visible_ascii,
       source=st.sampled_from(["RUNCOMFY_API_TOKEN", "the Prefect Secret block 'x'",
                               "the token passed to RunComfyClient"]))
def test_a_token_with_a_space_or_control_inside_is_refused_naming_its_source(head, bad, tail,
                                                                             source):
    def refusals(token: str) -> list[InputError]:
        errors = []
        for build in (lambda: normalise_token(token, source),
                      lambda: RunComfyClient(Token(token, source=source), "https://api.test")):
            with pytest.raises(InputError) as caught:
                build()
            errors.append(caught.value)
        return errors

    # A part that the texts hold whatever the token (a generated "RunComfyClie" is in the
    # traceback's source lines, "000000000000" in its addresses) proves nothing.
    benign = "".join(t for e in refusals("q" + bad + "q") for t in _exception_texts(e))
    for error in refusals(head + bad + tail):
        message = str(error)
        assert message.startswith(f"{source}: the API token has a space, control or non-ASCII")
        assert "\n" not in message  # one line
        for text in _exception_texts(error):
            assert head in benign or head not in text
            assert tail in benign or tail not in text


@settings(max_examples=50, deadline=None)
@given(token=visible_ascii, before=wrapping, after=wrapping)
def test_the_environment_token_is_stripped_where_it_is_read(token, before, after):
    settings_ = Settings(api_token=before + token + after, bucket="b")
    found = asyncio.run(resolve_token(settings_))
    assert found.get_secret_value() == token and found.source == "RUNCOMFY_API_TOKEN"
