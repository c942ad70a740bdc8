"""The pluggable SASL mechanisms against their RFCs' examples, without sockets."""

from __future__ import annotations

import base64

import pytest

from trio_smtpd import TLSInfo
from trio_smtpd._scram import saslprep
from trio_smtpd.sasl import (
    Challenge,
    Context,
    External,
    ExternalCredentials,
    Failure,
    OAuthBearer,
    PasswordMechanism,
    PlainCredentials,
    ScramCredentials,
    ScramKeys,
    ScramServer,
    ScramSHA256,
    ScramSHA256Plus,
    Success,
    TokenCredentials,
    XOAuth2,
)

# RFC 7677 3: user "user", password "pencil".
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC7677_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_sha_256_rfc7677_vector() -> None:
    keys = ScramKeys.from_password("pencil", salt=RFC7677_SALT, iterations=4096)
    server = ScramServer(plus=False, bindings={}, plus_offered=False,
                         nonce=RFC7677_SERVER_NONCE)
    assert server.client_first(RFC7677_CLIENT_FIRST) is None
    assert server.username == "user"
    assert server.server_first(keys) == RFC7677_SERVER_FIRST
    assert server.client_final(RFC7677_CLIENT_FINAL) == RFC7677_SERVER_FINAL


def test_scram_wrong_password_and_tampering_fail() -> None:
    wrong = ScramKeys.from_password("pencil2", salt=RFC7677_SALT)
    server = ScramServer(plus=False, bindings={}, plus_offered=False,
                         nonce=RFC7677_SERVER_NONCE)
    server.client_first(RFC7677_CLIENT_FIRST)
    server.server_first(wrong)
    failure = server.client_final(RFC7677_CLIENT_FINAL)
    assert isinstance(failure, Failure) and failure.reply is None  # 535
    right = ScramKeys.from_password("pencil", salt=RFC7677_SALT)
    for tampered in (RFC7677_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"),  # "y,,"
                     RFC7677_CLIENT_FINAL.replace(b"r=rOpr", b"r=xOpr")):
        server = ScramServer(plus=False, bindings={}, plus_offered=False,
                             nonce=RFC7677_SERVER_NONCE)
        server.client_first(RFC7677_CLIENT_FIRST)
        server.server_first(right)
        assert isinstance(server.client_final(tampered), Failure)


def test_scram_keys_are_kept_as_one_line() -> None:
    keys = ScramKeys.from_password("pencil", salt=RFC7677_SALT)
    line = str(keys)
    assert line.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    assert ScramKeys.parse(line) == keys
    assert "pencil" not in repr(keys) and keys.stored_key.hex() not in repr(keys)
    for bad in ("", "SCRAM-SHA-1$4096:AAAA$AAAA:AAAA", "SCRAM-SHA-256$x:AAAA$AAAA:AAAA"):
        with pytest.raises(ValueError):
            ScramKeys.parse(bad)
    fresh = ScramKeys.from_password("pencil")
    assert fresh.salt != keys.salt and len(fresh.salt) == 16


def test_saslprep_rfc4013_examples() -> None:
    assert saslprep("I\u00adX") == "IX"  # soft hyphen mapped to nothing
    assert saslprep("user") == "user"
    assert saslprep("USER") == "USER"
    assert saslprep("\u00aa") == "a"
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"  # non-ASCII space mapped to space
    for bad in ("\u0007", "\u0627\u0031"):
        with pytest.raises(ValueError):
            saslprep(bad)


@pytest.mark.parametrize(("flag", "plus", "offered", "bindings", "ok"), [
    ("n", False, False, {}, True),
    ("y", False, False, {}, True),
    ("y", False, True, {}, False),  # RFC 5802 6: a downgrade of -PLUS
    ("p=tls-unique", False, True, {"tls-unique": b"x"}, False),  # -PLUS data, plain mech
    ("n", True, True, {"tls-unique": b"x"}, False),
    ("p=tls-unique", True, True, {"tls-server-end-point": b"x"}, False),
    ("p=tls-server-end-point", True, True, {"tls-server-end-point": b"x"}, True),
])
def test_scram_channel_binding_flags(flag: str, plus: bool, offered: bool,
                                     bindings: dict[str, bytes], ok: bool) -> None:
    server = ScramServer(plus=plus, bindings=bindings, plus_offered=offered)
    failure = server.client_first(f"{flag},,n=user,r=abc".encode())
    assert (failure is None) == ok, failure


async def run(mechanism: object, responses: list[bytes | None],
              tls: TLSInfo | None = None, offered: tuple[str, ...] = ()) -> list[object]:
    exchange = mechanism.start(Context("mx.test", tls, offered))  # type: ignore[attr-defined]
    return [await exchange.step(response) for response in responses]


async def test_scram_exchange_looks_up_the_user_and_ends_with_its_signature() -> None:
    keys = ScramKeys.from_password("pencil", salt=RFC7677_SALT)
    asked: list[str] = []

    async def lookup(username: str) -> ScramKeys | None:
        asked.append(username)
        return keys if username == "user" else None

    mechanism = ScramSHA256(lookup)
    exchange = mechanism.start(Context("mx.test", None, ("SCRAM-SHA-256",)))
    assert await exchange.step(None) == Challenge(b"")
    first = await exchange.step(RFC7677_CLIENT_FIRST)
    assert isinstance(first, Challenge) and first.data.startswith(b"r=rOprNGfwEbeRWgbNEkqO")
    assert asked == ["user"]
    # An unknown user gets a salt and iterations like anyone's, then 535 at the proof.
    unknown = await run(mechanism, [b"n,,n=nobody,r=abc", b"c=biws,r=abc,p=AAAA"])
    assert isinstance(unknown[0], Challenge) and b",i=4096" in unknown[0].data
    again = await run(mechanism, [b"n,,n=nobody,r=abc"])
    assert isinstance(again[0], Challenge)
    salt = [part for part in unknown[0].data.split(b",") if part.startswith(b"s=")]
    assert salt and salt[0] in again[0].data  # the same made-up salt each time
    assert isinstance(unknown[1], Failure) and unknown[1].reply is None


async def test_an_unknown_user_is_shown_the_iteration_count_users_have() -> None:
    # Found by review (2026-12-02): keys made with 10,000 iterations answered i=10000
    # for a real user and i=4096 for an unknown one, before any proof: who exists showed.
    keys = ScramKeys.from_password("pencil", iterations=10000)

    async def lookup(username: str) -> ScramKeys | None:
        return keys if username == "alice" else None

    mechanism = ScramSHA256(lookup, iterations=10000)
    [known] = await run(mechanism, [b"n,,n=alice,r=abc"])
    [unknown] = await run(mechanism, [b"n,,n=bob,r=abc"])
    assert isinstance(known, Challenge) and isinstance(unknown, Challenge)
    assert known.data.endswith(b",i=10000") and unknown.data.endswith(b",i=10000")
    with pytest.raises(ValueError):
        ScramSHA256(lookup, iterations=0)


async def test_scram_plus_is_offered_only_with_a_channel_binding() -> None:
    async def lookup(username: str) -> ScramKeys | None:
        return None

    plus = ScramSHA256Plus(lookup)
    assert not plus.offered(None)
    assert not plus.offered(TLSInfo("TLSv1.3", "x"))
    assert plus.offered(TLSInfo("TLSv1.3", "x", channel_bindings={"tls-server-end-point": b"h"}))
    assert ScramSHA256(lookup).offered(None)


# RFC 7628 4.1's initial response (IMAP example; the SASL message is the same in SMTP).
RFC7628_INITIAL = base64.b64decode(
    "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVy"
    "IHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB")
RFC7628_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="


async def test_oauthbearer_rfc7628_example() -> None:
    seen: list[TokenCredentials] = []

    async def validate(credentials: TokenCredentials) -> str | None:
        seen.append(credentials)
        return "user@example.com" if credentials.token == RFC7628_TOKEN else None

    [result] = await run(OAuthBearer(validate), [RFC7628_INITIAL])
    assert isinstance(result, Success) and result.identity == "user@example.com"
    [creds] = seen
    assert (creds.mechanism, creds.username, creds.host, creds.port) == (
        "OAUTHBEARER", "user@example.com", "server.example.com", 143)
    assert creds.check(RFC7628_TOKEN) and RFC7628_TOKEN not in repr(creds)


async def test_oauthbearer_refusal_is_told_in_json_then_535() -> None:
    async def validate(credentials: TokenCredentials) -> str | None:
        return None

    mechanism = OAuthBearer(validate, scope="mail", openid_configuration="https://idp.test/")
    refused, after = await run(mechanism, [RFC7628_INITIAL, b"\x01"])
    # RFC 7628 3.2.2: the error is a challenge the client answers with ^A.
    assert refused == Challenge(b'{"status": "invalid_token", "scope": "mail", '
                                b'"openid-configuration": "https://idp.test/"}')
    assert isinstance(after, Failure) and after.reply is None


@pytest.mark.parametrize("message", [
    b"n,a=user,host=x\x01auth=Bearer t\x01\x01", b"n,,\x01auth=Bearer t\x01",
    b"n,,\x01auth=Basic dXNlcg==\x01\x01", b"p=tls-unique,,\x01auth=Bearer t\x01\x01",
    b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", b"\xff",
    # Found by review (2026-12-02): isdigit() takes "²" for a digit, int() does not (a
    # traceback and 454); and a port is at most 65535.
    "n,,\x01port=\u00b2\x01auth=Bearer t\x01\x01".encode(),
    b"n,,\x01port=99999\x01auth=Bearer t\x01\x01"])
async def test_oauthbearer_malformed(message: bytes) -> None:
    async def validate(credentials: TokenCredentials) -> str | None:
        raise AssertionError("not called")

    [result] = await run(OAuthBearer(validate), [message])
    assert isinstance(result, Failure) and result.reply is not None
    assert result.reply.code == 501


async def test_xoauth2_as_gmail_clients_send_it() -> None:
    async def validate(credentials: TokenCredentials) -> str | None:
        return credentials.username if credentials.check("ya29.token") else None

    good = b"user=someuser@example.com\x01auth=Bearer ya29.token\x01\x01"
    [result] = await run(XOAuth2(validate), [good])
    assert isinstance(result, Success) and result.identity == "someuser@example.com"
    bad = good.replace(b"ya29", b"ya30")
    refused, after = await run(XOAuth2(validate), [bad, b""])
    assert refused == Challenge(b'{"status": "401", "schemes": "bearer"}')
    assert isinstance(after, Failure) and after.reply is None
    [malformed] = await run(XOAuth2(validate), [b"auth=Bearer x\x01\x01"])
    assert isinstance(malformed, Failure) and malformed.reply is not None


async def test_external_takes_the_certificate_subject_and_an_authzid() -> None:
    seen: list[ExternalCredentials] = []

    async def validate(credentials: ExternalCredentials) -> str | None:
        seen.append(credentials)
        return "alice" if credentials.subject == "CN=alice,O=Example" else None

    tls = TLSInfo("TLSv1.3", "x", peer_certificate={"subject": ()}, client_verified=True,
                  client_subject="CN=alice,O=Example")
    mechanism = External(validate)
    assert mechanism.offered(tls) and not mechanism.offered(TLSInfo("TLSv1.3", "x"))
    challenge, result = await run(mechanism, [None, b""], tls)
    assert challenge == Challenge(b"") and isinstance(result, Success)
    assert seen[0].username == "CN=alice,O=Example" and seen[0].authzid == ""
    [as_bob] = await run(mechanism, [b"bob"], tls)
    assert isinstance(as_bob, Success) and seen[1].authzid == "bob"
    [no_cert] = await run(mechanism, [b""], TLSInfo("TLSv1.3", "x"))
    assert isinstance(no_cert, Failure)


async def test_password_mechanisms_ask_the_authenticator() -> None:
    async def authenticator(credentials: object) -> str | None:
        assert isinstance(credentials, PlainCredentials)
        return "tim" if credentials.check("tanstaaftanstaaf") else None

    # RFC 4616 4's example.
    [ok] = await run(PasswordMechanism("PLAIN", authenticator), [b"\x00tim\x00tanstaaftanstaaf"])
    assert isinstance(ok, Success) and ok.identity == "tim"
    [wrong] = await run(PasswordMechanism("PLAIN", authenticator), [b"\x00tim\x00tanstaaf"])
    assert isinstance(wrong, Failure) and wrong.reply is None
    [malformed] = await run(PasswordMechanism("PLAIN", authenticator), [b"tim"])
    assert isinstance(malformed, Failure) and malformed.reply is not None
    with pytest.raises(ValueError):
        PasswordMechanism("GSSAPI", authenticator)


def test_scram_credentials_say_which_binding() -> None:
    creds = ScramCredentials("SCRAM-SHA-256-PLUS", "user", "", "tls-server-end-point")
    assert creds.channel_binding == "tls-server-end-point"
