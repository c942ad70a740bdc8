"""What a session says, for whoever wants to watch: transcripts and refusal logs.

An ``Observer`` given to the protocol engine hears every line the client sent (AUTH
secrets redacted, message data summarised, or passed on in full if it asks for it),
every reply sent, and each refusal (a 4xx or 5xx reply) together with the command it
answers, whoever made it: the engine itself, or the application through a decision.
The engine calls it synchronously, so it must be quick and must not raise.
"""

from __future__ import annotations

from typing import Protocol

from ._replies import Reply

__all__ = ["Observer", "Summary"]


class Summary(str):
    """A line the engine writes in place of something it did not pass on, in brackets
    (``[message data: 1234 octets]``). A client's own line is a plain ``str``, and may
    start with "[" too: tell the two apart by type, never by the text."""

    __slots__ = ()


class Observer(Protocol):
    """What watches a session: give one to ``session.observer`` (or to the engine's
    ``ServerConnection.observer``). ``Transcript`` is one."""

    #: True to be given message data as it arrives (``data()``), not only its size.
    wants_data: bool

    def received(self, line: str) -> None:
        """A line from the client: a command as sent (non-UTF-8 bytes escaped), with an
        AUTH exchange's secrets replaced by ``[redacted]``; or, as a ``Summary``, in
        brackets:
        ``[message data: 1234 octets]`` (a refused message: the octets the client sent),
        ``[22 octets after STARTTLS discarded]`` (plaintext pipelined behind STARTTLS,
        dropped unread: CVE-2011-0411's attack, or a broken client)."""

    def data(self, chunk: bytes) -> None:
        """Message data, as the engine hands it on (only if ``wants_data``)."""

    def sent(self, reply: bytes) -> None:
        """Reply bytes as queued for the client (one or more whole reply lines)."""

    def refused(self, command: str, reply: Reply) -> None:
        """A 4xx or 5xx reply, and the verb it answers ("" when the server speaks
        unprompted: a timeout, a shutdown)."""
