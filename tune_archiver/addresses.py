"""Which network addresses are private: where a redirect from an asset host may not go.

Pure: nothing here resolves a name. A cloud's metadata service (169.254.169.254,
fd00:ec2::254, 100.100.100.200) and the machine's own services sit at such addresses.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Each private network, with the word an error message uses for it.
PRIVATE_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(network), kind) for network, kind in (
        ("0.0.0.0/8", "unspecified"),  # "this network": 0.0.0.0 reaches the machine itself
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared"),  # carrier-grade NAT; some clouds' metadata lives here
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "private"),
    )
)
# IPv6 forms that carry an IPv4 address in their last 32 bits: mapped (::ffff:a.b.c.d),
# compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) reach that IPv4 address.
_CARRIERS = tuple(ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "::/96", "64:ff9b::/96"))


def literal(host: str) -> IPAddress | None:
    """The address a URL's host names literally ("[::1]" and zone ids accepted), or None
    for a name."""
    text = host.strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def private_kind(address: IPAddress) -> str | None:
    """"loopback", "link-local", "private", "shared", "site-local" or "unspecified" when
    the address is in a private network (an IPv4 address inside IPv6 judged as itself);
    None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.sixtofour is not None:
            return private_kind(address.sixtofour)
        if any(address in carrier for carrier in _CARRIERS) and int(address) > 1:
            return private_kind(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for network, kind in PRIVATE_NETWORKS:
        if address.version == network.version and address in network:
            return kind
    return None


def is_private_host(host: str) -> bool:
    """True when a URL's host is a private address or localhost, without resolving it:
    the test for an API that is itself on a private network."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = literal(name)
    return address is not None and private_kind(address) is not None
