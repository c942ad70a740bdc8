"""The engine settings of one connection: the server's, adjusted to whom it serves.

Most connections use the server's ``ProtocolConfig`` as it is. Two things make one
connection's differ: XCLIENT is offered only to proxies in ``Config.xclient_trusted``,
and under TLS some SASL mechanisms are offered only where the connection allows them
(EXTERNAL with a verified client certificate, SCRAM-SHA-256-PLUS with a channel binding).
Each variant is made once and kept beside the server's settings, so that connections
that share it share its serialised EHLO reply too. A server that configures neither
never comes here (``varies()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ._config import ProtocolConfig
from ._info import SessionInfo
from ._networks import address_in
from ._settings import Config

__all__ = ["for_connection", "varies"]


def varies(config: Config) -> bool:
    """Whether connections may need settings other than the server's."""
    return bool(config.xclient_trusted) or _conditional(config)


def _conditional(config: Config) -> bool:
    """Whether some mechanism is offered on some TLS connections only."""
    cached = config._cache.get("conditional")
    if not isinstance(cached, bool):
        base = config.protocol_config().auth_mechanisms
        names = [e if isinstance(e, str) else e.name.upper() for e in config.auth_mechanisms]
        cached = config._cache["conditional"] = any(
            name in config._sasl_mechanisms() and name not in base for name in names)
    return cached


def for_connection(config: Config, info: SessionInfo) -> ProtocolConfig:
    """The engine settings for the connection ``info`` describes, as it is now."""
    protocol = config.protocol_config()
    if config.xclient_trusted:
        peer = info.proxy or info.peer
        if peer is not None and address_in(peer[0], config._xclient_networks()):
            protocol = _variant(protocol, ("xclient",), lambda: replace(protocol, xclient=True))
    if info.tls is not None and _conditional(config):
        offered = config._offered_mechanisms(config.auth_mechanisms, info.tls)
        if offered != protocol.auth_mechanisms:
            base = protocol
            protocol = _variant(protocol, ("auth", offered),
                                lambda: replace(base, auth_mechanisms=offered))
    return protocol


def _variant(protocol: ProtocolConfig, key: tuple[object, ...],
             make: Callable[[], ProtocolConfig]) -> ProtocolConfig:
    variant = protocol._cache.get(key)
    if not isinstance(variant, ProtocolConfig):
        variant = protocol._cache[key] = make()
    return variant
