"""Coverage-guided fuzzing of the RFC 5321/6531 path grammar and ESMTP parameters.

    python fuzz/fuzz_address.py -max_total_time=60      (or: nox -s fuzz)

Invariants: only ReplyError escapes; a parsed address prints back to something that
parses to the same address.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from trio_smtpd._address import parse_forward_path, parse_mailbox, parse_reverse_path
    from trio_smtpd._params import EnabledExtensions, parse_mail_params, parse_rcpt_params
    from trio_smtpd._replies import ReplyError

EXT = EnabledExtensions(max_message_size=1000, eightbitmime=True, binarymime=True,
                        smtputf8=True, dsn=True, auth=True, requiretls=True)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    utf8 = fdp.ConsumeBool()
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    for parse in (parse_forward_path, parse_reverse_path):
        try:
            address, rest = parse(text, utf8=utf8)
        except ReplyError:
            continue
        if address is not None and address.domain:
            assert parse_mailbox(str(address), utf8=utf8) == address
        for params in (parse_mail_params, parse_rcpt_params):
            with contextlib.suppress(ReplyError):
                params(rest, EXT)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
