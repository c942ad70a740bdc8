"""Each SASL mechanism against a real client over real TLS: scramp's SCRAM client and
smtplib's auth hook (SCRAM, OAUTHBEARER, XOAUTH2, EXTERNAL), swaks (CRAM-MD5, PLAIN)."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import scramp
import trio
import trustme

import trio_smtpd
from tests.conftest import require_program
from trio_smtpd import Config, Credentials, Session, serve
from trio_smtpd.sasl import (
    External,
    ExternalCredentials,
    OAuthBearer,
    ScramKeys,
    ScramSHA256,
    ScramSHA256Plus,
    TokenCredentials,
    XOAuth2,
    load_certificate,
)

# STARTTLS over each transport: the handshake takes over the plain connection.
pytestmark = pytest.mark.usefixtures("both_transports")

KEYS = {"alice": ScramKeys.from_password("s3cret")}
TOKENS = {"tok-alice": "alice"}


async def scram_lookup(username: str) -> ScramKeys | None:
    return KEYS.get(username)


async def check_token(credentials: TokenCredentials) -> str | None:
    identity = TOKENS.get(credentials.token)
    return identity if identity == credentials.username or not credentials.username else None


async def check_password(credentials: Credentials) -> str | None:
    return credentials.username if credentials.check("s3cret") else None


@pytest.fixture
def plus_tls(cert_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    """A server context whose certificate is known: tls-server-end-point is offered."""
    cert, key, _ = cert_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_certificate(context, cert, key)
    return context


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[int, list[trio_smtpd.Decision]]]:
    seen: list[trio_smtpd.Decision] = []

    async def handler(session: Session) -> None:
        async for decision in session:
            seen.append(decision)
            decision.accept()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, 0, host="127.0.0.1",
                                             handler=handler))
        assert server.port
        yield server.port, seen
        server.shutdown()


def smtp_auth(port: int, client_tls: ssl.SSLContext, mechanism: str,
              make: Callable[[smtplib.SMTP], Callable[..., str]], attempts: int = 1,
              ) -> tuple[list[int], list[str]]:
    """AUTH ``mechanism`` ``attempts`` times with smtplib over STARTTLS: the codes, and
    the mechanisms offered after TLS."""
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=client_tls)
        client.ehlo("client.test")
        offered = client.esmtp_features.get("auth", "").split()
        for _ in range(attempts):
            try:
                codes.append(client.auth(mechanism, make(client))[0])
            except smtplib.SMTPAuthenticationError as exc:
                codes.append(exc.smtp_code)
            except smtplib.SMTPServerDisconnected:
                codes.append(0)
                break
    return codes, offered


def scram_client(username: str, password: str, mechanisms: list[str],
                 binding: str | None = None) -> Callable[[smtplib.SMTP], Callable[..., str]]:
    def make(client: smtplib.SMTP) -> Callable[..., str]:
        channel = None if binding is None else (binding, client.sock)
        scram = scramp.ScramClient(mechanisms, username, password, channel_binding=channel)
        stage = iter(range(3))

        def step(challenge: bytes | None = None) -> str:
            if challenge is None:
                return str(scram.get_client_first())
            if next(stage) == 0:
                scram.set_server_first(challenge.decode())
                return str(scram.get_client_final())
            scram.set_server_final(challenge.decode())  # raises if our signature is wrong
            return ""

        return step
    return make


def scram_config(server_tls: ssl.SSLContext, **kw: object) -> Config:
    return Config(hostname="mx.test", tls=server_tls, auth_mechanisms=(
        ScramSHA256Plus(scram_lookup), ScramSHA256(scram_lookup)), **kw)  # type: ignore[arg-type]


async def test_scram_sha_256_with_scramp(server_tls: ssl.SSLContext,
                                         client_tls: ssl.SSLContext) -> None:
    async with running(scram_config(server_tls)) as (port, seen):
        codes, offered = await trio.to_thread.run_sync(
            smtp_auth, port, client_tls, "SCRAM-SHA-256",
            scram_client("alice", "s3cret", ["SCRAM-SHA-256"]))
        # The server's certificate was not given to load_certificate: no binding, no -PLUS.
        assert offered == ["SCRAM-SHA-256"]
        assert codes == [235]
    [auth] = [d for d in seen if isinstance(d, trio_smtpd.Auth)]
    assert (auth.mechanism, auth.identity) == ("SCRAM-SHA-256", "alice")


async def test_scram_wrong_password_is_535_and_counts_towards_the_limit(
        server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    async with running(scram_config(server_tls)) as (port, seen):
        codes, _ = await trio.to_thread.run_sync(
            partial(smtp_auth, port, client_tls, "SCRAM-SHA-256",
                    scram_client("alice", "wrong", ["SCRAM-SHA-256"]), attempts=4))
        # ProtocolConfig.max_auth_failures is 3: the fourth failure closes with 421.
        assert codes == [535, 535, 535, 421]
        unknown, _ = await trio.to_thread.run_sync(
            smtp_auth, port, client_tls, "SCRAM-SHA-256",
            scram_client("mallory", "s3cret", ["SCRAM-SHA-256"]))
        assert unknown == [535]
    assert not [d for d in seen if isinstance(d, trio_smtpd.Auth)]


async def test_scram_sha_256_plus_tls_server_end_point(plus_tls: ssl.SSLContext,
                                                      client_tls: ssl.SSLContext) -> None:
    async with running(scram_config(plus_tls)) as (port, seen):
        codes, offered = await trio.to_thread.run_sync(
            smtp_auth, port, client_tls, "SCRAM-SHA-256-PLUS",
            scram_client("alice", "s3cret", ["SCRAM-SHA-256-PLUS"], "tls-server-end-point"))
        assert offered == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        assert codes == [235]
        # A client that could bind but is made to think we cannot ("y"): a downgrade.
        downgraded, _ = await trio.to_thread.run_sync(
            smtp_auth, port, client_tls, "SCRAM-SHA-256",
            scram_client("alice", "s3cret", ["SCRAM-SHA-256"], "tls-server-end-point"))
        assert downgraded == [535]
    [auth] = [d for d in seen if isinstance(d, trio_smtpd.Auth)]
    assert auth.mechanism == "SCRAM-SHA-256-PLUS"
    assert auth.credentials.channel_binding == "tls-server-end-point"  # type: ignore[attr-defined]


async def test_scram_sha_256_plus_tls_unique_on_tls_1_2(server_tls: ssl.SSLContext,
                                                       client_tls: ssl.SSLContext) -> None:
    client_tls.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(scram_config(server_tls)) as (port, _):
        codes, offered = await trio.to_thread.run_sync(
            smtp_auth, port, client_tls, "SCRAM-SHA-256-PLUS",
            scram_client("alice", "s3cret", ["SCRAM-SHA-256-PLUS"], "tls-unique"))
        assert offered == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        assert codes == [235]


def oauthbearer(user: str, token: str) -> Callable[[smtplib.SMTP], Callable[..., str]]:
    def make(client: smtplib.SMTP) -> Callable[..., str]:
        def step(challenge: bytes | None = None) -> str:
            if challenge is None:
                return f"n,a={user},\x01host=mx.test\x01port=25\x01auth=Bearer {token}\x01\x01"
            return "\x01"  # RFC 7628 3.2.3: acknowledge the error
        return step
    return make


def xoauth2(user: str, token: str) -> Callable[[smtplib.SMTP], Callable[..., str]]:
    def make(client: smtplib.SMTP) -> Callable[..., str]:
        def step(challenge: bytes | None = None) -> str:
            return f"user={user}\x01auth=Bearer {token}\x01\x01" if challenge is None else ""
        return step
    return make


async def test_oauthbearer_and_xoauth2_with_smtplib(server_tls: ssl.SSLContext,
                                                    client_tls: ssl.SSLContext) -> None:
    config = Config(hostname="mx.test", tls=server_tls,
                    auth_mechanisms=(OAuthBearer(check_token), XOAuth2(check_token)))
    async with running(config) as (port, seen):
        for mechanism, make in (("OAUTHBEARER", oauthbearer), ("XOAUTH2", xoauth2)):
            ok, offered = await trio.to_thread.run_sync(
                smtp_auth, port, client_tls, mechanism, make("alice", "tok-alice"))
            assert offered == ["OAUTHBEARER", "XOAUTH2"]
            assert ok == [235]
            refused, _ = await trio.to_thread.run_sync(
                partial(smtp_auth, port, client_tls, mechanism, make("alice", "forged"),
                        attempts=4))
            assert refused == [535, 535, 535, 421]
    assert [(d.mechanism, d.identity) for d in seen if isinstance(d, trio_smtpd.Auth)] == [
        ("OAUTHBEARER", "alice"), ("XOAUTH2", "alice")]


async def test_nothing_is_offered_in_cleartext_unless_said(server_tls: ssl.SSLContext) -> None:
    mechanisms = (ScramSHA256(scram_lookup), "PLAIN")
    quiet = Config(hostname="mx.test", tls=server_tls, authenticator=check_password,
                   auth_mechanisms=mechanisms)
    said = Config(hostname="mx.test", tls=server_tls, authenticator=check_password,
                  auth_mechanisms=mechanisms, cleartext_auth_mechanisms=(mechanisms[0],))
    for config, expected in ((quiet, None), (said, "SCRAM-SHA-256")):
        async with running(config) as (port, _):
            def look() -> tuple[str | None, int, int]:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    client.ehlo("client.test")
                    plain = client.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")[0]
                    scram = client.docmd("AUTH", "SCRAM-SHA-256 " + "biwsbj1hbGljZSxyPWFiYw==")
                    if scram[0] == 334:
                        assert client.docmd("*")[0] == 501  # cancelled
                    auth = client.esmtp_features.get("auth", "").strip()
                    return auth or None, plain, scram[0]

            offered, plain, scram = await trio.to_thread.run_sync(look)
            assert offered == expected
            assert plain == 538
            assert scram == (538 if expected is None else 334)


def client_with_certificate(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    ca.issue_cert(f"{name}@example.org", common_name=name).configure_cert(context)
    return context


async def external_id(credentials: ExternalCredentials) -> str | None:
    return credentials.subject.split(",")[0][3:] if not credentials.authzid else None


async def test_external_with_a_trustme_client_certificate(
        server_tls: ssl.SSLContext, ca: trustme.CA, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    config = Config(hostname="mx.test", tls=server_tls, client_certificates="optional",
                    client_ca=str(cert_files[2]), auth_mechanisms=(External(external_id),))

    def external(client: smtplib.SMTP) -> Callable[..., str]:
        return lambda challenge=None: ""  # no authzid: "log me in as my certificate"

    async with running(config) as (port, seen):
        codes, offered = await trio.to_thread.run_sync(
            smtp_auth, port, client_with_certificate(ca, "alice"), "EXTERNAL", external)
        assert offered == ["EXTERNAL"] and codes == [235]
        # Asking for another identity than the certificate's: the validator refuses
        # (535), and each refusal counts towards max_auth_failures.
        def as_root(client: smtplib.SMTP) -> Callable[..., str]:
            return lambda challenge=None: "root"

        codes, _ = await trio.to_thread.run_sync(
            partial(smtp_auth, port, client_with_certificate(ca, "alice"), "EXTERNAL",
                    as_root, attempts=4))
        assert codes == [535, 535, 535, 421]
        # Without a certificate: not offered, and not accepted.
        codes, offered = await trio.to_thread.run_sync(
            smtp_auth, port, client_tls, "EXTERNAL", external)
        assert offered == [] and codes == [502]  # (no AUTH at all on this connection)
    [auth] = [d for d in seen if isinstance(d, trio_smtpd.Auth)]
    assert auth.identity == "alice"
    [hello] = [d for d in seen if isinstance(d, trio_smtpd.Hello)][1:2]
    assert hello.name == "client.test"
    mails = [d for d in seen if isinstance(d, trio_smtpd.Connect)]
    tls = mails[0].info.tls
    assert tls is not None and tls.client_verified
    assert tls.client_subject is not None and tls.client_subject.startswith("CN=alice")


@pytest.mark.interop
@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "PLAIN", "LOGIN"])
async def test_swaks_password_mechanisms(server_tls: ssl.SSLContext, mechanism: str) -> None:
    swaks = require_program("swaks")
    config = Config(hostname="mx.test", tls=server_tls, authenticator=check_password,
                    auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"))
    async with running(config) as (port, seen):
        def run(password: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [swaks, "--server", f"127.0.0.1:{port}", "-tls", "--auth", mechanism,
                 "--auth-user", "alice", "--auth-password", password, "--quit-after", "AUTH",
                 "--timeout", "10"], capture_output=True, text=True, timeout=60)

        ok = await trio.to_thread.run_sync(run, "s3cret")
        assert "<~  235 " in ok.stdout, ok.stdout  # (~: under TLS)
        wrong = await trio.to_thread.run_sync(run, "wrong")
        assert "<~* 535 " in wrong.stdout, wrong.stdout
    assert [d.mechanism for d in seen if isinstance(d, trio_smtpd.Auth)] == [mechanism]
