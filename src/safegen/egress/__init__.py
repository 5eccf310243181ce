"""Outbound connections to client-chosen URLs: uploads, image fetches, webhooks (SSRF defence).

``policy`` says which URLs and address classes are acceptable, ``resolver`` resolves a host once
and checks every address, ``client`` connects only to the checked address and never shares a
connection between host names, ``slots`` bounds concurrent exchanges per host. Nothing here
knows what the bytes are for.
"""

from safegen.egress.client import PinnedClient
from safegen.egress.policy import EgressPolicy, IPAddress, UrlTarget, address_class, admit_url
from safegen.egress.resolver import ResolvedTarget, Resolver, SystemResolver, resolve_target
from safegen.egress.slots import KeyedSlots

__all__ = [
    "EgressPolicy",
    "IPAddress",
    "KeyedSlots",
    "PinnedClient",
    "ResolvedTarget",
    "Resolver",
    "SystemResolver",
    "UrlTarget",
    "address_class",
    "admit_url",
    "resolve_target",
]
