"""Hand-made TLS ClientHellos, for what ordinary clients cannot send (a raw non-ASCII SNI)."""

from __future__ import annotations

import contextlib
import ssl

PLACEHOLDER = "aaaa.test"


def client_hello(server_name: bytes) -> bytes:
    """A real ClientHello (from this Python's OpenSSL) asking for ``server_name``, which
    must be as long as the placeholder: its bytes are swapped in, so every length in the
    record stays right."""
    if len(server_name) != len(PLACEHOLDER):
        raise ValueError(f"the name must be {len(PLACEHOLDER)} bytes long")
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=PLACEHOLDER)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello.count(PLACEHOLDER.encode()) == 1
    return hello.replace(PLACEHOLDER.encode(), server_name)


NON_ASCII = "éé.test".encode()  # UTF-8, as a careless client would send it
