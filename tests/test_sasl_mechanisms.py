"""SASL mechanisms: real exchanges, known vectors, every malformed path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_smtpd._sasl import (
    Challenge,
    CramMD5,
    CramMD5Credentials,
    Failed,
    PlainCredentials,
    Verify,
    new_mechanism,
)


def verified(step: object) -> PlainCredentials | CramMD5Credentials:
    assert isinstance(step, Verify), step
    return step.credentials


def test_plain_with_initial_response_rfc4616() -> None:
    creds = verified(new_mechanism("PLAIN", hostname="h").start(b"\x00tim\x00tanstaaftanstaaf"))
    assert isinstance(creds, PlainCredentials)
    assert (creds.username, creds.authzid, creds.mechanism) == ("tim", "", "PLAIN")
    assert creds.check("tanstaaftanstaaf") and not creds.check("tanstaaf")
    assert "tanstaaf" not in repr(creds)


def test_plain_with_authzid_and_challenge_first() -> None:
    mech = new_mechanism("PLAIN", hostname="h")
    assert mech.start(None) == Challenge(b"")
    creds = verified(mech.step(b"Ursel\x00Kurt\x00xipj3plmq"))
    assert isinstance(creds, PlainCredentials)
    assert (creds.authzid, creds.username) == ("Ursel", "Kurt")
    assert creds.check("xipj3plmq")


@pytest.mark.parametrize("message", [
    b"", b"user\x00pass", b"\x00\x00pass", b"\x00user\x00", b"a\x00b\x00c\x00d",
    b"\x00\xff\xfe\x00pass", b"\x00" + b"u" * 256 + b"\x00p",
])
def test_plain_malformed(message: bytes) -> None:
    assert isinstance(new_mechanism("PLAIN", hostname="h").start(message), Failed)


def test_login_exchange_and_initial_username() -> None:
    mech = new_mechanism("LOGIN", hostname="h")
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.step(b"alice") == Challenge(b"Password:")
    creds = verified(mech.step("pässword".encode()))
    assert isinstance(creds, PlainCredentials)
    assert (creds.username, creds.mechanism) == ("alice", "LOGIN")
    assert creds.check("pässword")
    other = new_mechanism("LOGIN", hostname="h")
    assert other.start(b"bob") == Challenge(b"Password:")
    assert isinstance(other.step(b""), Failed)
    assert isinstance(new_mechanism("LOGIN", hostname="h").start(b""), Failed)


def test_cram_md5_rfc2195_vector() -> None:
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    mech = CramMD5(hostname="h", challenge=challenge)
    assert mech.start(None) == Challenge(challenge)
    creds = verified(mech.step(b"tim b913a602c7eda7a495b4e6e7334d3890"))
    assert isinstance(creds, CramMD5Credentials)
    assert creds.username == "tim"
    assert creds.check("tanstaaftanstaaf")
    assert not creds.check("wrong")


def test_cram_md5_challenge_is_fresh_and_names_the_host() -> None:
    first = new_mechanism("CRAM-MD5", hostname="mx.test").start(None)
    second = new_mechanism("CRAM-MD5", hostname="mx.test").start(None)
    assert isinstance(first, Challenge) and isinstance(second, Challenge)
    assert first != second
    assert first.data.startswith(b"<") and first.data.endswith(b"@mx.test>")


@pytest.mark.parametrize("response", [b"tim", b"tim xyz", b" b913a602c7eda7a495b4e6e7334d3890",
                                      b"tim b913a602c7eda7a495b4e6e7334d389g", b"\xff x"])
def test_cram_md5_malformed(response: bytes) -> None:
    mech = new_mechanism("CRAM-MD5", hostname="h")
    mech.start(None)
    assert isinstance(mech.step(response), Failed)
    assert isinstance(new_mechanism("CRAM-MD5", hostname="h").start(b"early"), Failed)


def test_unknown_mechanism() -> None:
    with pytest.raises(ValueError):
        new_mechanism("GSSAPI", hostname="h")


@given(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5"]), st.none() | st.binary(max_size=300),
       st.lists(st.binary(max_size=300), max_size=3))
def test_arbitrary_input_never_raises(name: str, initial: bytes | None,
                                      responses: list[bytes]) -> None:
    mech = new_mechanism(name, hostname="h")
    step = mech.start(initial)
    for response in responses:
        if not isinstance(step, Challenge):
            break
        step = mech.step(response)
    assert isinstance(step, Challenge | Verify | Failed)
