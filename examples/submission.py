"""A message submission server: SCRAM-SHA-256(-PLUS), OAuth tokens, client certificates,
TLS failures and an nginx proxy in front. docs/server.md shows it piece by piece, and
tests/test_examples_submission.py runs each piece against real clients.

    python examples/submission.py CERT KEY CLIENT_CA [PORT]
"""

from __future__ import annotations

import logging
import ssl
import sys
from functools import partial

import trio

import trio_smtpd
from trio_smtpd import sasl

log = logging.getLogger("submission")

# --- Pluggable SASL ---------------------------------------------------------------------
# Stored keys, never passwords: ScramKeys.from_password() once, str(keys) to keep them.
USERS = {"alice": sasl.ScramKeys.from_password("correct horse battery staple")}
TOKENS = {"ya29.alice-token": "alice"}  # in real life: ask your identity provider


async def scram_keys(username: str) -> sasl.ScramKeys | None:
    return USERS.get(username)


async def check_token(credentials: sasl.TokenCredentials) -> str | None:
    user = TOKENS.get(credentials.token)
    return user if user is not None and credentials.username in (user, "") else None


async def certificate_user(credentials: sasl.ExternalCredentials) -> str | None:
    # The certificate's subject names the user; an authzid must be that user too.
    user = credentials.subject.removeprefix("CN=").split(",")[0]
    return user if user in USERS and credentials.authzid in ("", user) else None


def make_config(certfile: str, keyfile: str, client_ca: str) -> trio_smtpd.Config:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sasl.load_certificate(context, certfile, keyfile)  # -PLUS: tls-server-end-point
    return trio_smtpd.Config(
        hostname="submission.example.org",
        tls=context,
        require_auth=True,
        auth_mechanisms=(
            sasl.ScramSHA256Plus(scram_keys),
            sasl.ScramSHA256(scram_keys),
            sasl.OAuthBearer(check_token),
            sasl.XOAuth2(check_token),
            sasl.External(certificate_user),
        ),
        # Client certificates: asked for, not required; EXTERNAL is offered to those
        # whose certificate verified against client_ca.
        client_certificates="optional",
        client_ca=client_ca,
        # nginx's mail proxy on this host may tell us who its clients are (XCLIENT).
        xclient_trusted=("127.0.0.1/32",),
    )


# --- The handler: TLS failures and the proxied client ------------------------------------
async def handle(session: trio_smtpd.Session) -> None:
    async for decision in session:
        if isinstance(decision, trio_smtpd.TLSFailed):
            # The last decision of a session whose STARTTLS handshake failed.
            log.warning("TLS with %s failed: %s (%s)", session.info.peer,
                        decision.reason, decision.detail)
        elif isinstance(decision, trio_smtpd.Connect) and session.info.proxy:
            # After XCLIENT: the client nginx passes on, as it told us.
            log.info("%s via %s", session.info.peer, session.info.proxy)
        elif isinstance(decision, trio_smtpd.Message):
            tls = session.info.tls
            log.info("message from %s (%s), certificate %s",
                     session.info.authenticated_as, tls.version if tls else "cleartext",
                     tls.client_subject if tls else None)
        decision.accept()


async def main(certfile: str, keyfile: str, client_ca: str, port: int) -> None:
    config = make_config(certfile, keyfile, client_ca)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio_smtpd.serve, config, port,
                                             host="127.0.0.1", handler=handle))
        nursery.start_soon(trio_smtpd.shutdown_on_signals, server)
        print(f"listening on port {server.port}", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    cert, key, ca = sys.argv[1:4]
    trio.run(main, cert, key, ca, int(sys.argv[4]) if len(sys.argv) > 4 else 587)
