"""Do-nothing client tracking and the --conncfg file, without the program (a fake clock
for the time windows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_smtpd import Config
from trio_smtpd.sinkhole.conncfg import ConnConfigError, load_conncfg
from trio_smtpd.sinkhole.yakkers import Progress, Yakkers, parse_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nothing() -> Progress:
    return Progress()


def reached(*phases: str) -> Progress:
    progress = Progress()
    progress.phases.update(phases)
    return progress


def test_sessions_that_get_nowhere_count_within_the_window() -> None:
    clock = FakeClock()
    yakkers = Yakkers(3, 3600, "mail", clock=clock)
    for _ in range(2):
        yakkers.session_ended("192.0.2.1", reached("helo"), tls_failed=False)
    assert not yakkers.refused("192.0.2.1")
    clock.now += 3599  # each within the window of the one before
    yakkers.session_ended("192.0.2.1", nothing(), tls_failed=False)
    assert yakkers.refused("192.0.2.1") and not yakkers.refused("192.0.2.2")
    clock.now += 3600  # a window since the last one counted: forgiven
    assert not yakkers.refused("192.0.2.1")


def test_what_does_not_count_and_what_clears() -> None:
    yakkers = Yakkers(2, 3600, "helo", clock=FakeClock())
    yakkers.session_ended("192.0.2.1", nothing(), tls_failed=True)  # --tls-fallback's
    refused = nothing()
    refused.refused_at_connect = True
    yakkers.session_ended("192.0.2.1", refused, tls_failed=False)
    yakkers.session_ended("192.0.2.1", nothing(), tls_failed=False)
    assert not yakkers.refused("192.0.2.1")  # one counted
    yakkers.session_ended("192.0.2.1", reached("accepted"), tls_failed=False)  # cleared
    yakkers.session_ended("192.0.2.1", nothing(), tls_failed=False)
    assert not yakkers.refused("192.0.2.1")
    forced = reached("accepted")
    forced.forced = True  # make_yakker, whatever the session did
    yakkers.session_ended("192.0.2.3", forced, tls_failed=False)
    assert yakkers.refused("192.0.2.3")


def test_memory_is_bounded_and_options_checked() -> None:
    yakkers = Yakkers(1, 3600, clock=FakeClock(), max_addresses=3)
    for n in range(10):
        yakkers.session_ended(f"192.0.2.{n}", nothing(), tls_failed=False)
    assert [yakkers.refused(f"192.0.2.{n}") for n in range(10)] == [False] * 7 + [True] * 3
    assert Yakkers(1, 1, "to").minphase == "rcpt"  # sinksmtp's names too
    with pytest.raises(ValueError):
        Yakkers(1, 1, "quit")
    assert [parse_duration(t) for t in ("3600", "90s", "30m", "8h", "1h30m")] == [
        3600, 90, 1800, 28800, 5400]
    for bad in ("", "h", "8d", "-1"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_conncfg_lines_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "conncfg"
    path.write_text("# comment\n\n192.0.2.25 hostname=one.test\n"
                    "[2001:db8::1]:25 hostname=two.test\n198.51.100.0/24:587 hostname=three.test\n"
                    "* hostname=any.test\n")
    conncfg = load_conncfg(path)
    base = Config(hostname="mx.test")
    names = {local: getattr(conncfg.config_for(base, local), "hostname", None) for local in
             [("192.0.2.25", 25), ("2001:db8::1", 25), ("2001:db8::1", 26),
              ("198.51.100.7", 587), ("::ffff:192.0.2.25", 2525), None]}
    assert names == {("192.0.2.25", 25): "one.test", ("2001:db8::1", 25): "two.test",
                     ("2001:db8::1", 26): "any.test", ("198.51.100.7", 587): "three.test",
                     ("::ffff:192.0.2.25", 2525): "one.test", None: "any.test"}
    assert conncfg.config_for(base, ("192.0.2.25", 25)) is conncfg.config_for(
        base, ("192.0.2.25", 99))  # one Config per line, so the engine's caches are shared
    for bad in ("nonsense hostname=x", "192.0.2.1 colour=red", "192.0.2.1 cert=a.pem",
                "192.0.2.1:99999", "192.0.2.1 hostname=a hostname=b",
                f"192.0.2.1 cert={tmp_path}/no.pem key={tmp_path}/no.key"):
        path.write_text(bad + "\n")
        with pytest.raises(ConnConfigError, match="line 1"):
            load_conncfg(path)
