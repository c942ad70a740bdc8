"""trio_smtpd's pytest plugin: the ``smtp_server`` and ``smtp_server_thread`` fixtures.

pytest loads this module through the ``pytest11`` entry point in every run of every
project where trio_smtpd is installed, used or not. So it is a top-level module (a
module inside ``trio_smtpd`` would import the package, and with it trio and the whole
library: about as long as pytest's own start) and it imports only pytest and the
standard library; trio_smtpd, trio and the optional extras (trustme for TLS, pytest-trio
for ``smtp_server``) are imported when a test asks for a fixture. Hypothesis ships its
plugin the same way (``_hypothesis_pytestplugin``).

Options come from the ``smtp_server`` marker (on the test, its class or its module;
the closest wins) and from indirect parametrization of either fixture, which wins over
the marker::

    @pytest.mark.smtp_server(tls="starttls", users={"alice": "secret"})
    def test_login(smtp_server_thread): ...

    @pytest.mark.parametrize("smtp_server_thread", [{"lmtp": True}], indirect=True)
    def test_lmtp(smtp_server_thread): ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trio

    from trio_smtpd.testserver import ServerOptions, SMTPTestServer, ThreadedSMTPTestServer

_MARKER = "smtp_server"
# pytest-trio registers itself as "trio" through its entry point; a project may also
# name its module in pytest_plugins or -p.
_PYTEST_TRIO = ("trio", "pytest_trio.plugin", "pytest_trio")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(lmtp=False, tls=None, users=None, max_size=..., hostname=..., host=...): "
        "options of trio_smtpd's smtp_server and smtp_server_thread fixtures "
        "(tls: 'starttls' or 'implicit'; users: {name: password})")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Say what is missing before pytest-trio's or pytest's own, vaguer, errors."""
    if "smtp_server" not in getattr(item, "fixturenames", ()):
        return
    plugins = item.config.pluginmanager
    if not any(plugins.has_plugin(name) for name in _PYTEST_TRIO):
        pytest.fail("the smtp_server fixture is for trio tests and needs pytest-trio "
                    "(pip install pytest-trio); synchronous tests use smtp_server_thread",
                    pytrace=False)
    if item.get_closest_marker("trio") is None:
        pytest.fail("smtp_server is for trio tests: mark this one @pytest.mark.trio (or "
                    "set trio_mode = true), or use smtp_server_thread",
                    pytrace=False)


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(_MARKER))):  # farthest first
        if marker.args:
            pytest.fail(f"@pytest.mark.{_MARKER} takes keyword options only, "
                        f"not {marker.args!r}", pytrace=False)
        options.update(marker.kwargs)
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            pytest.fail(f"{request.fixturename} takes a dict of options as its "
                        f"parameter, not {param!r}", pytrace=False)
        options.update(param)
    return options


def _server_options(request: pytest.FixtureRequest) -> ServerOptions:
    from trio_smtpd.testserver import ServerOptions

    try:
        return ServerOptions(**_options(request))
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    # (Outside the except block: the message is the whole story, no chained traceback.)
    pytest.fail(f"{request.fixturename}: bad option: {problem}", pytrace=False)


@pytest.fixture
def smtp_server_thread(request: pytest.FixtureRequest) -> Iterator[ThreadedSMTPTestServer]:
    """An SMTP server on a free loopback port, run by trio in a background thread, for
    synchronous tests: ``.host``, ``.port``, ``.messages``, ``.wait_for(count)``,
    ``.fail_next(...)``; stopped, with its thread, sockets and files, after the test."""
    from trio_smtpd.testserver import ThreadedSMTPTestServer

    with ThreadedSMTPTestServer(_server_options(request)) as server:
        yield server


@pytest.fixture
async def smtp_server(request: pytest.FixtureRequest,
                      nursery: trio.Nursery) -> AsyncIterator[SMTPTestServer]:
    """An SMTP server on a free loopback port, running in the trio test's own run
    (pytest-trio): ``.host``, ``.port``, ``.messages``, ``await .wait_for(count)``,
    ``.fail_next(...)``; every task of it has ended once the test is over."""
    import trio

    from trio_smtpd.testserver import SMTPTestServer

    server = await SMTPTestServer.start(nursery, _server_options(request))
    try:
        yield server
    finally:
        # Shielded: a test that failed by a cancellation still gets a clean shutdown
        # (bounded by the server's grace period).
        with trio.CancelScope(shield=True):
            await server.aclose()
