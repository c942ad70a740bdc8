"""What verifying a message costs in CPU, apart from the network: SPF, DKIM, ARC and
DMARC of a signed message, answers from a warm resolver cache (tests/fakedns.py's
table behind it), so the numbers are the checks' own work on the event loop.

    python benchmarks/verify.py
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

import dkim
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fakedns import FakeResolver, a, records
from trio_smtpd import verify

ROUNDS = 300


def _key() -> tuple[bytes, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def _message(pem: bytes, size: int) -> bytes:
    body = b"".join(b"Line %d of a message body, with  some  spaces. \r\n" % n
                    for n in range(size // 50))
    data = (b"From: Alice <alice@example.test>\r\nTo: bob@example.org\r\n"
            b"Subject: hello\r\nDate: Wed, 25 Nov 2026 03:41:26 +0000\r\n\r\n" + body)
    return dkim.sign(data, b"sel", b"example.test", pem,  # type: ignore[no-any-return]
                     canonicalize=(b"relaxed", b"relaxed")) + data


async def main() -> None:
    pem, public = _key()
    resolver = FakeResolver({
        "example.test TXT": records("TXT", '"v=spf1 include:_spf.example.test -all"'),
        "_spf.example.test TXT": records("TXT", '"v=spf1 ip4:192.0.2.0/24 -all"'),
        "sel._domainkey.example.test TXT": records(
            "TXT", " ".join(f'"{public[i:i + 200]}"' for i in range(0, len(public), 200))),
        "_dmarc.example.test TXT": records("TXT", '"v=DMARC1; p=reject"'),
        "mx.example.test A": a("192.0.2.1"),
    })
    for size in (2_000, 100_000, 10_000_000):
        data = _message(pem, size)
        rounds = max(3, ROUNDS * 2_000 // size)
        spf = await verify.check_spf(resolver, "192.0.2.1", "a@example.test", "mx.test")
        results = await verify.check_message(resolver, data, spf=spf)  # warms the cache
        assert results.dmarc is not None and results.dmarc.result == "pass", results
        started = time.process_time()
        for _ in range(rounds):
            spf = await verify.check_spf(resolver, "192.0.2.1", "a@example.test", "mx.test")
            reader = verify.MessageReader()
            for start in range(0, len(data), 65536):
                reader.feed(data[start:start + 65536])
            reader.close()
            results = await verify.check_message(resolver, reader, spf=spf)
            verify.authentication_results("mx.test", results)
        per = (time.process_time() - started) / rounds
        print(f"{len(data):>10} octets: {per * 1000:7.2f} ms CPU per message "
              f"({len(data) / per / 2**20:.0f} MiB/s)")


if __name__ == "__main__":
    trio.run(main)
