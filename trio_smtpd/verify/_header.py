"""The ``Authentication-Results:`` header field (RFC 8601): writing ours, and taking
out those that arrive claiming to be ours (RFC 8601 5).

Values come from the message and its sender (selectors, domains, reasons, addresses),
so every one is written as a token, a domain or an address when it is one, else as a
quoted-string with its quotes and backslashes escaped, its control characters
replaced by spaces and anything not ASCII by ``?``: a value can never end a clause, a
line or the field.
"""

from __future__ import annotations

import re

from ._results import Results

__all__ = ["AuthenticationResultsFilter", "authentication_results", "authserv_id_of"]

_TOKEN = re.compile(r"[^\x00-\x20\x7f-\U0010ffff()<>@,;:\\\"/\[\]?=]+")  # RFC 2045
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*" \
          r"[A-Za-z0-9])?)*"
_ADDRESS = re.compile(rf"(?:{_DOT_ATOM})?@{_DOMAIN}|{_DOMAIN}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]")
_MAX_VALUE = 200


def _value(text: str) -> str:
    """A value or pvalue: bare if it may be, else a quoted-string."""
    # ASCII only (not every reader takes RFC 6532's UTF-8), no control characters.
    text = _CONTROL.sub(" ", text)[:_MAX_VALUE].encode("ascii", "replace").decode()
    if _TOKEN.fullmatch(text) or _ADDRESS.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _clause(method: str, result: str, reason: str = "",
            *properties: tuple[str, str]) -> str:
    parts = [f"{method}={_value(result)}"]
    if reason:
        parts.append(f"reason={_value(reason)}")
    parts += [f"{name}={_value(value)}" for name, value in properties if value]
    return " ".join(parts)


def authentication_results(authserv_id: str, results: Results) -> str:
    """The whole header field, ``Authentication-Results: ...``, folded one clause a
    line, without the final CRLF; ``none`` if nothing was checked."""
    clauses = []
    if results.spf is not None:
        spf = results.spf
        identity = ("smtp.mailfrom", _mailfrom(spf.sender)) if spf.identity == "mailfrom" \
            else ("smtp.helo", spf.domain)
        clauses.append(_clause("spf", spf.result, spf.reason, identity))
    if results.dkim is not None:
        clauses += [_clause("dkim", d.result, d.reason, ("header.d", d.domain),
                            ("header.s", d.selector), ("header.i", d.identity),
                            ("header.a", d.algorithm), ("header.b", d.signature[:8]))
                    for d in results.dkim] or [_clause("dkim", "none")]
    if results.arc is not None:
        arc = results.arc
        clauses.append(_clause("arc", arc.result, arc.reason, ("header.ams-d", arc.domain),
                               ("header.ams-s", arc.selector),
                               ("header.as-d", arc.seal_domain),
                               ("header.as-s", arc.seal_selector)))
    if results.dmarc is not None:
        dmarc = results.dmarc
        clauses.append(_clause("dmarc", dmarc.result, dmarc.reason,
                               ("policy.dmarc", dmarc.policy),
                               ("header.from", dmarc.domain)))
    body = ";\r\n\t".join([_value(authserv_id), *clauses]) if clauses else \
        f"{_value(authserv_id)}; none"
    return f"Authentication-Results: {body}"


def _mailfrom(address: str) -> str:
    """The address if it can be written plainly, else its domain (RFC 8601 allows
    either)."""
    return address if _ADDRESS.fullmatch(address) else address.rpartition("@")[2]


def authserv_id_of(value: str) -> str | None:
    """The authserv-id an Authentication-Results field value starts with, lower case
    without a final dot (None if it has none): CFWS, then a token or quoted-string."""
    text = re.sub(r"\r?\n", "", value)
    position = _skip_cfws(text, 0)
    if position is None:
        return None
    if text.startswith('"', position):
        found = re.match(r'"((?:[^"\\]|\\.)*)"', text[position:])
        identifier = re.sub(r"\\(.)", r"\1", found.group(1)) if found else None
    else:
        token = _TOKEN.match(text, position)
        identifier = token.group(0) if token else None
    return identifier.lower().rstrip(".") if identifier else None


def _skip_cfws(text: str, position: int) -> int | None:
    depth = 0
    while position < len(text):
        char = text[position]
        if depth and char == "\\":
            position += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth and char not in " \t":
            return position
        position += 1
    return None


_AR_FIELD = re.compile(rb"authentication-results[ \t]*:", re.IGNORECASE)


class AuthenticationResultsFilter:
    """Streams a message through, leaving out each ``Authentication-Results`` field
    of its header section that claims ``authserv_id`` (RFC 8601 5: ours are only
    those we add). Memory stays bounded: a line is held until it ends or reaches 8 KB,
    an Authentication-Results field until it ends or reaches 64 KB (one that long is
    judged on its first 64 KB)."""

    LINE = 8 << 10
    FIELD = 64 << 10

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id.lower().rstrip(".")
        self.removed = 0  # fields left out
        self._in_header = True
        self._line = b""  # the start of a line not yet complete
        self._field: list[bytes] = []  # an Authentication-Results field being held
        self._held = 0
        self._mode = "keep"  # of the current field: keep, hold or drop

    def feed(self, data: bytes) -> bytes:
        """The next chunk; returns what of the message can be passed on so far."""
        if not self._in_header:
            return data
        out: list[bytes] = []
        data = self._line + data
        self._line = b""
        start = 0
        while start < len(data) and self._in_header:
            end = data.find(b"\n", start) + 1
            if end == 0:  # no complete line left
                if len(data) - start < self.LINE:
                    self._line = data[start:]
                    return b"".join(out)
                end = len(data)  # a long line: judged on its first 8 KB
            self._piece(data[start:end], out)
            start = end
        out.append(data[start:])
        return b"".join(out)

    def close(self) -> bytes:
        """The message has ended: the rest of it."""
        out: list[bytes] = []
        if self._line:
            self._piece(self._line, out)
            self._line = b""
        self._end_field(out)
        return b"".join(out)

    def _piece(self, piece: bytes, out: list[bytes]) -> None:
        """A line, or the first or a later part of a long one."""
        starts_line = not self._continues
        self._continues = not piece.endswith(b"\n")
        if starts_line and piece in (b"\r\n", b"\n"):
            self._end_field(out)
            self._in_header = False
            out.append(piece)
            return
        if starts_line and piece[:1] not in (b" ", b"\t"):
            self._end_field(out)
            self._mode = "hold" if _AR_FIELD.match(piece) else "keep"
        if self._mode == "keep":
            out.append(piece)
        elif self._mode == "hold":
            self._field.append(piece)
            self._held += len(piece)
            if self._held >= self.FIELD:
                self._end_field(out, more=True)

    _continues = False  # the last piece did not end its line

    def _end_field(self, out: list[bytes], *, more: bool = False) -> None:
        if self._mode == "hold":
            field = b"".join(self._field)
            value = field.split(b":", 1)[1].decode("utf-8", "replace")
            ours = authserv_id_of(value) == self.authserv_id
            if ours:
                self.removed += 1
            else:
                out.append(field)
            self._mode = ("drop" if ours else "keep") if more else "keep"
        elif not more:
            self._mode = "keep"
        self._field, self._held = [], 0
