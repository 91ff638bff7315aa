"""Outputs are fetched only from where outputs live (issue 17.7).

Generated cases, decided without connecting anywhere: addresses drawn from every kind of
network (public, loopback, private, link-local and the metadata service, carrier NAT,
multicast, reserved, unspecified, IPv4 inside IPv6), written as literals or behind names
that resolve to several addresses, × schemes and URL shapes × the networks configuration
allows. The expected answer comes from the range each address was drawn from, not from
the code under test. Then the client: a result or a redirect naming a refused URL fails
the download, and the refused URL is never requested (the fake transport records all).
"""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest
from client_fakes import API, TOKEN, Script, answer
from hypothesis import given, settings
from hypothesis import strategies as st

from flashgen.client import RunComfyClient
from flashgen.errors import DownloadError
from flashgen.outputs import OutputPolicy, RefusedOutput, parse_networks, system_resolver

EXAMPLES = 400

# (range to draw from, public?, how to write it: "v4", "v6", "mapped" (::ffff:v4), "6to4")
RANGES = [
    ("8.8.0.0/16", True, "v4"), ("93.184.0.0/16", True, "v4"), ("1.1.1.0/24", True, "v4"),
    ("2606:4700::/32", True, "v6"), ("2001:4860::/32", True, "v6"),
    ("127.0.0.0/8", False, "v4"), ("10.0.0.0/8", False, "v4"), ("172.16.0.0/12", False, "v4"),
    ("192.168.0.0/16", False, "v4"), ("169.254.0.0/16", False, "v4"),
    ("100.64.0.0/10", False, "v4"), ("0.0.0.0/8", False, "v4"), ("224.0.0.0/4", False, "v4"),
    ("240.0.0.0/4", False, "v4"), ("::1/128", False, "v6"), ("fe80::/10", False, "v6"),
    ("fc00::/7", False, "v6"), ("ff00::/8", False, "v6"), ("::/128", False, "v6"),
    ("127.0.0.0/8", False, "mapped"), ("169.254.0.0/16", False, "mapped"),
    ("10.0.0.0/8", False, "6to4"), ("8.8.0.0/16", True, "mapped"),
]


@st.composite
def addresses(draw):
    """(address as text, the range it was drawn from, public?)"""
    cidr, public, form = draw(st.sampled_from(RANGES))
    net = ipaddress.ip_network(cidr)
    address = net[draw(st.integers(0, net.num_addresses - 1))]
    if form == "mapped":
        address = ipaddress.IPv6Address(f"::ffff:{address}")
    elif form == "6to4":
        address = ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80))
    return str(address), cidr, public


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@settings(max_examples=EXAMPLES, deadline=None)
@given(resolved=st.lists(addresses(), min_size=1, max_size=3), literal=st.booleans(),
       scheme=st.sampled_from(["https", "http"]), port=st.sampled_from(["", ":8188", ":443"]),
       allowed=st.lists(st.sampled_from([cidr for cidr, public, _ in RANGES if not public]),
                        unique=True, max_size=3))
def test_a_url_is_fetched_only_when_every_address_is_public_or_allowed(resolved, literal,
                                                                       scheme, port, allowed):
    if literal:
        resolved = resolved[:1]
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return [address for address, _, _ in resolved]

    host = _host(resolved[0][0]) if literal else "files.example"
    policy = OutputPolicy(networks=parse_networks(allowed), resolve=resolve)
    ok = [public or cidr in allowed for _, cidr, public in resolved]
    in_networks = [cidr in allowed for _, cidr, _ in resolved]
    expect = all(ok) and (scheme == "https" or all(in_networks))
    url = f"{scheme}://{host}{port}/files/a.png?sig=secret"
    if expect:
        assert asyncio.run(policy.check(url)) == httpx.URL(url)
    else:
        with pytest.raises(RefusedOutput) as caught:
            asyncio.run(policy.check(url))
        assert "secret" not in str(caught.value)  # signatures are never quoted
    assert asked == ([] if literal else ["files.example"])  # literals are not looked up


@settings(max_examples=EXAMPLES, deadline=None)
@given(url=st.sampled_from([
    "file:///etc/passwd", "file://localhost/etc/passwd", "/v1/requests/r-1/result",
    "files/a.png", "//files.example/a.png", "ftp://files.example/a.png",
    "data:image/png;base64,iVBORw0KGgo=", "gopher://files.example/", "", " ", "https://",
    "https:///a.png", "javascript:alert(1)", "HTTPS://[::1]/a.png", "http://[::ffff:127.0.0.1]/",
]), allowed=st.sampled_from(["", "127.0.0.0/8", "0.0.0.0/0,::/0"]))
def test_a_url_that_is_not_absolute_http_is_never_fetched(url, allowed):
    """Whatever the configuration allows: never resolved against the API's origin."""
    policy = OutputPolicy(networks=parse_networks(allowed), resolve=lambda h, p: ["8.8.8.8"])
    if (url.startswith("http://[::ffff:127") and allowed) or (
            url.startswith("HTTPS://[::1]") and "::/0" in allowed):
        asyncio.run(policy.check(url))  # loopback, allowed by configuration
        return
    with pytest.raises(RefusedOutput):
        asyncio.run(policy.check(url))


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1",
                                  "localhost", "0", "[::1]", "[::ffff:7f00:1]"])
def test_other_spellings_of_loopback_resolve_to_loopback_and_are_refused(host):
    """The system resolver reads these without the network (numbers, /etc/hosts); a
    spelling that does not parse or resolve is refused as well."""
    policy = OutputPolicy(resolve=system_resolver)
    with pytest.raises(RefusedOutput, match="loopback|unspecified|does not (parse|resolve)"):
        asyncio.run(policy.check(f"https://{host}/a.png"))


def test_a_name_that_does_not_resolve_is_refused():
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    with pytest.raises(RefusedOutput, match="does not resolve"):
        asyncio.run(OutputPolicy(resolve=fail).check("https://nowhere.example/a.png"))


def test_the_setting_refuses_what_is_not_a_network():
    with pytest.raises(ValueError, match="'loopback' is not a network"):
        parse_networks("127.0.0.0/8, loopback")


# --- the client: results and redirects ------------------------------------------------

NAMES = {"cdn.test": ["93.184.215.14"], "metadata.test": ["169.254.169.254"],
         "inside.test": ["10.1.2.3"], "both.test": ["93.184.215.14", "127.0.0.1"]}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 50
REFUSED = ["http://169.254.169.254/latest/meta-data/", "https://metadata.test/x",
           "https://inside.test/a.png", "https://both.test/a.png", "file:///etc/passwd",
           "/v1/requests/r-1/result", "http://cdn.test/a.png", "https://[::ffff:10.0.0.1]/a",
           "https://127.0.0.1:8188/files/r-1/0.png"]


def _client(script: Script) -> RunComfyClient:
    policy = OutputPolicy(resolve=lambda host, port: NAMES.get(host, []))
    return RunComfyClient(TOKEN, API, transport=script.transport, outputs=policy)


def _requested(script: Script) -> list[str]:
    return [str(request.url) for request in script.requests]


@settings(max_examples=60, deadline=None)
@given(target=st.sampled_from([url for url in REFUSED if "://" in url]), hops=st.integers(0, 3),
       status=st.sampled_from([301, 302, 303, 307, 308]))
def test_a_redirect_is_checked_like_the_first_url(target, hops, status):
    def host(request: httpx.Request) -> httpx.Response:
        step = int(request.url.params.get("hop", "0"))
        if step < hops:
            return answer(status, headers={"location": f"/next.png?hop={step + 1}"})
        if request.url.path.startswith("/next") or hops == 0:
            return answer(status, headers={"location": target})
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    script = Script(host)

    async def go() -> None:
        async with _client(script) as client:
            await client.download("https://cdn.test/a.png")

    with pytest.raises(DownloadError, match="refused") as caught:
        asyncio.run(go())
    assert not caught.value.transient  # a refusal is not retried
    assert len(script.requests) == hops + 1  # the refused target was never requested
    assert all(url.startswith("https://cdn.test/") for url in _requested(script))


@pytest.mark.parametrize("output", REFUSED)
def test_a_result_naming_a_refused_url_fails_without_fetching_it(output):
    result = {"status": "completed", "output": {"image": output}}
    script = Script(lambda request: answer(200, result))

    async def go() -> None:
        async with _client(script) as client:
            await client.fetch_outputs("r-1")

    with pytest.raises(DownloadError, match="refused"):
        asyncio.run(go())
    assert all(url.endswith("/v1/requests/r-1/result") for url in _requested(script))


def test_a_public_https_output_is_fetched():
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})
        return answer(200, {"status": "completed",
                            "output": {"images": ["https://cdn.test/a.png"]}})

    script = Script(route)

    async def go() -> list:
        async with _client(script) as client:
            return await client.fetch_outputs("r-1")

    assert [f.content for f in asyncio.run(go())] == [PNG]
