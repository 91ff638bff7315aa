"""Where outputs may be fetched from: the API's answer names a URL, this decides.

Output URLs are public HTTPS links to a file host (the API's contract). A result that names
anything else (a loopback or private address, the cloud metadata service at 169.254.169.254,
a ``file://`` or relative URL) would make flashgen a door into the network it runs in, so
``OutputPolicy.check`` refuses it before a byte is sent, and again at every redirect:

- the URL must be absolute ``https://`` (a relative or ``file://`` URL is never resolved
  against the API's origin);
- the host is resolved and *every* address it resolves to must be public (an IPv4 address
  inside IPv6, ``::ffff:127.0.0.1``, counts as the IPv4 one), unless it lies in one of the
  configured networks (``FLASHGEN_OUTPUT_NETWORKS``, e.g. ``127.0.0.0/8`` for the local
  emulator); plain ``http://`` is allowed only to hosts all of whose addresses lie there.

    >>> import asyncio
    >>> policy = OutputPolicy(resolve=lambda host, port: ["169.254.169.254"])
    >>> asyncio.run(policy.check("https://metadata.internal/latest"))
    Traceback (most recent call last):
    ...
    flashgen.outputs.RefusedOutput: metadata.internal is 169.254.169.254, a link-local address
    >>> asyncio.run(OutputPolicy(networks=parse_networks("127.0.0.0/8")).check(
    ...     "http://127.0.0.1:8188/files/a.png"))
    URL('http://127.0.0.1:8188/files/a.png')
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

__all__ = ["OutputPolicy", "RefusedOutput", "parse_networks"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]] | list[str]]


class RefusedOutput(ValueError):
    """An output URL that the policy does not allow; the message says why (no query)."""


def parse_networks(text: str | Iterable[str]) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1"`` as networks; a bare address is a network of one.

    Raises ``ValueError`` naming the entry that is not a network.
    """
    parts = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for part in (p.strip() for p in parts):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not a network (e.g. 127.0.0.0/8 or ::1)") from None
    return tuple(networks)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives for ``host`` (what a connection would use)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class OutputPolicy:
    """Which output URLs may be fetched. ``networks``: non-public networks allowed too
    (over http as well); ``resolve(host, port)``: the addresses a host stands for."""

    networks: tuple[Network, ...] = ()
    resolve: Resolver = system_resolver

    async def check(self, url: str | httpx.URL) -> httpx.URL:
        """``url`` as an ``httpx.URL`` if outputs may be fetched from it, else
        ``RefusedOutput`` saying why."""
        parsed = url if isinstance(url, httpx.URL) else _parse(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise RefusedOutput(f"{_shown(parsed)} is not an absolute https:// URL")
        host = parsed.host
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self._addresses(host, port)
        allowed = [self._allowed(address) for address in addresses]
        for address, ok in zip(addresses, allowed, strict=True):
            if not ok and not _public(address):
                where = f"{host} is" if host == str(address) else f"{host} is {address},"
                raise RefusedOutput(f"{where} {_kind(address)} address")
        if parsed.scheme == "http" and not all(allowed):
            raise RefusedOutput(f"{_shown(parsed)}: plain http is allowed only to hosts in "
                                "FLASHGEN_OUTPUT_NETWORKS; outputs come over https")
        return parsed

    async def _addresses(self, host: str, port: int) -> list[Address]:
        try:
            return [_unwrap(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            found = self.resolve(host, port)
            names = await found if inspect.isawaitable(found) else found
            addresses = [_unwrap(ipaddress.ip_address(name.split("%")[0])) for name in names]
        except (OSError, ValueError, UnicodeError) as exc:
            raise RefusedOutput(f"{host} does not resolve ({type(exc).__name__})") from None
        if not addresses:
            raise RefusedOutput(f"{host} does not resolve")
        return addresses

    def _allowed(self, address: Address) -> bool:
        return any(address in network for network in self.networks
                   if network.version == address.version)


def _parse(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise RefusedOutput("the output URL does not parse") from None


def _shown(url: httpx.URL) -> str:
    """The URL without its query (signatures live there), for messages."""
    return str(url.copy_with(query=None, fragment=None))[:200] or "an empty URL"


def _unwrap(address: Address) -> Address:
    """An IPv4 address carried inside IPv6 (mapped, 6to4) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            return inner
    return address


def _public(address: Address) -> bool:
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _kind(address: Address) -> str:
    for kind, test in (("a loopback", address.is_loopback), ("a link-local", address.is_link_local),
                       ("an unspecified", address.is_unspecified),
                       ("a multicast", address.is_multicast), ("a private", address.is_private),
                       ("a reserved", address.is_reserved)):
        if test:
            return kind
    return "a non-public"
