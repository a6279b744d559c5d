"""Who is really asking: the client's address and scheme behind trusted proxies only.

A node behind nginx sees nginx's address; nginx says who the client was in
``X-Forwarded-For`` / ``X-Real-IP`` and which scheme it used in ``X-Forwarded-Proto``.
Anybody can send those headers, so they are believed only when the connection comes
from an address in ``HERALD_TRUSTED_PROXIES``: otherwise a client could pick the address
its per-address limits count against, or pass for https to the origin check.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence, Union

import tornado.httputil

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8, ::1"`` as networks; ``ValueError`` names a bad item."""
    networks = []
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or network like 10.0.0.0/8") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)

    def trusts(self, ip: str) -> bool:
        address = _address(ip)
        return address is not None and any(address in n for n in self._networks)

    def apply(self, request: tornado.httputil.HTTPServerRequest) -> None:
        """Set ``request.remote_ip`` and ``request.protocol`` to the client's when the
        peer is a trusted proxy (the server runs without Tornado's ``xheaders``). The
        client is the nearest address in ``X-Forwarded-For`` that is not itself a
        trusted proxy, else ``X-Real-IP``; the scheme is ``X-Forwarded-Proto`` (or
        ``X-Scheme``) when it is http or https. Headers from anyone else are ignored."""
        if not request.remote_ip or not self.trusts(request.remote_ip):
            return
        headers = request.headers
        client = None
        for hop in reversed(headers.get("X-Forwarded-For", "").split(",")):
            address = _address(hop)
            if address is None:
                break
            client = str(address)
            if not self.trusts(client):
                break
        if client is None:
            real = _address(headers.get("X-Real-IP", ""))
            client = str(real) if real is not None else None
        if client is not None:
            request.remote_ip = client
        scheme = (headers.get("X-Forwarded-Proto") or headers.get("X-Scheme") or "").strip()
        scheme = scheme.split(",")[-1].strip().lower()
        if scheme in ("http", "https"):
            request.protocol = scheme
