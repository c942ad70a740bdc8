"""The public API: few names, each documented, and no internals on show (issue 12)."""

from __future__ import annotations

import inspect

import pytest

import trio_smtpd
import trio_smtpd.core
import trio_smtpd.testing
import trio_smtpd.verify

PUBLIC = [name for name in trio_smtpd.__all__ if name != "__version__"]
TYPE_ALIASES = {"Handler"}


def public_attributes(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("name", [n for n in PUBLIC if n not in TYPE_ALIASES])
def test_every_public_name_has_its_own_docstring(name: str) -> None:
    obj = getattr(trio_smtpd, name)
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring of its own"


@pytest.mark.parametrize("name", [n for n in PUBLIC if inspect.isclass(getattr(trio_smtpd, n))
                                  and not issubclass(getattr(trio_smtpd, n), Exception)])
def test_every_public_method_and_property_is_documented(name: str) -> None:
    cls = getattr(trio_smtpd, name)
    undocumented = []
    for attribute in public_attributes(cls):
        member = inspect.getattr_static(cls, attribute)
        documentable = isinstance(member, property | staticmethod | classmethod
                                  ) or inspect.isfunction(member)
        if documentable and not inspect.getdoc(getattr(cls, attribute)):
            undocumented.append(attribute)
    assert undocumented == [], f"{name}: {undocumented}"


def test_testing_helpers_are_documented() -> None:
    for cls in (trio_smtpd.testing.TestClient, trio_smtpd.testing.ClientReply,
                trio_smtpd.testing.MemoryListener):
        assert cls.__dict__.get("__doc__")
        for attribute in public_attributes(cls):
            member = getattr(cls, attribute)
            if callable(member) or isinstance(inspect.getattr_static(cls, attribute),
                                              property):
                assert inspect.getdoc(member), f"{cls.__name__}.{attribute}"


def test_session_and_server_show_only_their_interface() -> None:
    assert public_attributes(trio_smtpd.Session) == {
        "info", "transaction", "next_decision", "body", "reply_delay", "offer_starttls",
        "tls_failed", "config", "observer"}
    assert public_attributes(trio_smtpd.Server) == {
        "config", "listeners", "port", "connections", "pending_decisions", "transactions",
        "shutting_down", "shutdown", "wait_closed",
    } - {"config", "listeners"}  # (instance attributes)


def test_a_transaction_is_made_by_the_server_with_no_internals_in_its_signature() -> None:
    parameters = inspect.signature(trio_smtpd.Transaction).parameters
    assert [p for p in parameters if p.startswith("_") or p in ("chunks", "replies")] == []


def test_every_answer_has_one_signature() -> None:
    answerers = [trio_smtpd.Decision, trio_smtpd.Connect, trio_smtpd.Hello, trio_smtpd.Auth,
                 trio_smtpd.Mail, trio_smtpd.Rcpt, trio_smtpd.DataStart, trio_smtpd.Message,
                 trio_smtpd.Transaction]
    for cls in answerers:
        for answer in ("accept", "reject", "tempfail"):
            parameters = list(inspect.signature(getattr(cls, answer)).parameters.values())
            assert [(p.name, p.default) for p in parameters[1:]] == [
                ("code", None), ("text", None), ("enhanced", None)], f"{cls.__name__}.{answer}"
    for answer in ("accept_recipient", "reject_recipient", "tempfail_recipient"):
        parameters = list(inspect.signature(getattr(trio_smtpd.Transaction, answer))
                          .parameters)
        assert parameters == ["self", "index", "code", "text", "enhanced"]
    reply = trio_smtpd.core.ReplyError.of(550, "No", "5.7.1").reply
    assert reply == trio_smtpd.Reply(550, "No", "5.7.1")


def test_core_events_and_decisions_never_share_a_name() -> None:
    both = set(trio_smtpd.__all__) & set(trio_smtpd.core.__all__)
    different = [name for name in both
                 if getattr(trio_smtpd, name) is not getattr(trio_smtpd.core, name)]
    assert different == []


def test_recipients_are_one_type_everywhere() -> None:
    recipient = trio_smtpd.Recipient(trio_smtpd.Address("a", "b.c"), trio_smtpd.RcptParams())
    rcpt = trio_smtpd.Rcpt(recipient)
    assert rcpt.recipient is recipient and rcpt.address is recipient.address
    assert trio_smtpd.core.Recipient is trio_smtpd.Recipient


@pytest.mark.parametrize("name", [n for n in trio_smtpd.verify.__all__ if not n.isupper()])
def test_verify_names_and_their_methods_are_documented(name: str) -> None:
    obj = getattr(trio_smtpd.verify, name)
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring of its own"
    if inspect.isclass(obj):
        for attribute in public_attributes(obj):
            member = inspect.getattr_static(obj, attribute)
            if isinstance(member, property | classmethod) or inspect.isfunction(member):
                assert inspect.getdoc(getattr(obj, attribute)), f"{name}.{attribute}"
