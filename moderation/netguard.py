"""Which hosts and addresses the image fetcher may reach: the server-side request forgery (SSRF) guard.

Image URLs arrive in upload events, so whoever can produce an event chooses where a worker connects:
the cloud metadata service (credentials), an admin page on the pod network, a database port. These pure
functions say whether a host name is on the operator's allow-list and whether a resolved address is
public; `moderation.fetch` applies them after DNS resolution and on every redirect.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address

# Instance metadata services hand out cloud credentials; no image is ever served from them, so they stay
# refused even when private networks are allowed. GCP's metadata.google.internal is 169.254.169.254 too.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
# NAT64 maps the whole IPv4 space into this prefix: 64:ff9b::a00:1 reaches 10.0.0.1 through the gateway.
_NAT64 = IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class Resolved:
    """One address a host name resolved to, ready for `socket.create_connection`."""

    family: int
    address: IPAddress
    sockaddr: tuple[str, int]


def normalise_host(host: str) -> str:
    """The host as DNS and the allow-list see it: lower case, no trailing dot, IDNA (punycode) for
    non-ASCII names. Raises `UnicodeError` for a name IDNA cannot encode."""
    host = host.rstrip(".").lower()
    return host if host.isascii() else host.encode("idna").decode("ascii")


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether `host` (normalised) matches the allow-list; an empty list allows every host.

    A pattern is an exact name (``cdn.example.com``, also an IP literal) or ``*.`` and a suffix
    (``*.cdn.example.com`` matches ``a.cdn.example.com`` and ``a.b.cdn.example.com``, not the bare
    ``cdn.example.com``, which is listed separately when wanted).
    """
    if not patterns:
        return True
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def address_problem(address: IPAddress, allow_private: bool = False) -> str | None:
    """Why the fetcher must not connect to `address`, or None when it may.

    Refused always: metadata services, the unspecified address (0.0.0.0 reaches this host) and
    multicast. Refused unless `allow_private`: loopback, private (RFC 1918, fc00::/7), link-local,
    shared (100.64/10), reserved, documentation and every other range that is not globally reachable.
    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4, Teredo) are judged by that address.
    """
    for embedded in _embedded_ipv4(address):
        problem = address_problem(embedded, allow_private)
        if problem is not None:
            return f"{problem} (inside {address})"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(address: IPAddress) -> list[IPv4Address]:
    if not isinstance(address, IPv6Address):
        return []
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _NAT64:
        found.append(IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def resolve(host: str, port: int) -> list[Resolved]:
    """Every TCP address `host` resolves to, in the resolver's order, without duplicates.

    IP literals come back as they are; so do the odd forms the C resolver accepts (``2130706433``,
    ``0x7f.1``, ``0177.0.0.1`` all mean 127.0.0.1), which is why addresses, not names, are checked.
    The lookup is bounded by the system resolver's own timeout (resolv.conf), not by the fetch timeout.
    Raises `OSError` (`socket.gaierror`) or `UnicodeError` when the name does not resolve.
    """
    results: list[Resolved] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
        if all(known.address != address for known in results):
            results.append(Resolved(family, address, (str(sockaddr[0]), int(sockaddr[1]))))
    return results
