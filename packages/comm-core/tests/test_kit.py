"""The conformance kit's own tests: it passes on a good backend and catches broken ones.

``kit_backends.py`` holds a small real backend (``kit``, over TCP on the loopback)
and variants of it, each broken in one way. The kit runs whole against ``kit``
here; against the broken ones it runs in a pytest of its own (pytester), where
each check meant for a variant's defect must fail, saying what is wrong.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import comm_core
from comm_core.testing import BackendConformance, LeakCheck, echo_handler
from kit_backends import BROKEN, KitBackend
from memory_backend import MemoryBackend

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent
#: What the backpressure check lets a writer hand over to a peer that reads nothing:
#: ``kit`` holds at most its 1 MiB and 256 KiB buffers plus the kernel's.
BOUND = 32 * 2**20


class TestKitConformance(BackendConformance):
    """The whole kit, against the good backend."""

    scheme = "kit"
    listen_address = "kit://127.0.0.1:0"
    backpressure_bound = BOUND

    @pytest.fixture(autouse=True)
    def _kit_backend(self, registry: comm_core.Registry) -> None:
        comm_core.register_backend(KitBackend)


# -- the kit catches each broken backend --------------------------------------------------

_BROKEN_SUITE = """
import comm_core
from comm_core.testing import BackendConformance

import kit_backends

for backend in [kit_backends.KitBackend, *kit_backends.BROKEN]:
    comm_core.register_backend(backend)


class KitSetUp(BackendConformance):
    backpressure_bound = {bound}
    event_timeout = 5.0

    def new_listen_address(self):
        return f"{{self.scheme}}://127.0.0.1:0"


class TestGood(KitSetUp):
    scheme = "kit"
"""

_BROKEN_CLASS = """

class Test{name}(KitSetUp):
    scheme = {scheme!r}
"""


def test_the_kit_catches_each_broken_backend(pytester: pytest.Pytester) -> None:
    source = _BROKEN_SUITE.format(bound=BOUND)
    ids = []
    good = set()
    for backend, checks in BROKEN.items():
        source += _BROKEN_CLASS.format(name=backend.__name__, scheme=backend.scheme)
        for check in checks:
            ids.append(f"test_broken.py::Test{backend.__name__}::{check}")
            good.add(f"test_broken.py::TestGood::{check}")
    pytester.makepyfile(
        kit_backends=(HERE / "kit_backends.py").read_text(encoding="utf-8"),
        test_broken=source,
    )
    report = pytester.path / "report.xml"
    pytester.runpytest_subprocess(
        "-p", "comm_core.testing.plugin", "-p", "no:cacheprovider", f"--junitxml={report}",
        *sorted(good), *ids,
    )  # fmt: skip
    outcomes = _outcomes(report)
    # The same checks pass on the good backend, so a failure below is the defect's.
    for node in sorted(good):
        assert outcomes.get(node) == ("passed", ""), (node, outcomes.get(node))
    for backend, checks in BROKEN.items():
        for check, says in checks.items():
            node = f"test_broken.py::Test{backend.__name__}::{check}"
            outcome, message = outcomes.get(node, ("missing", ""))
            assert outcome == "failed", f"{node}: {outcome}"
            assert says in message, f"{node} failed saying {message[:2000]}"


def _outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """Each test's outcome in a junit report (``passed``, ``failed``, ``error``,
    ``skipped``) and the text of its failure."""
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")
        node = f"{module.replace('.', '/')}.py::{cls}::{case.get('name')}"
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                text = f"{child.get('message', '')}\n{child.text or ''}"
                break
        if node in outcomes and outcomes[node][0] == "failed":
            continue  # a teardown error after a failure: the failure says more
        outcomes[node] = (outcome, text)
    return outcomes


# -- LeakCheck, alone ---------------------------------------------------------------------


def test_leak_check_finds_a_listener_left_running(memory: MemoryBackend) -> None:
    listener = comm_core.listen("memory://", echo_handler)

    async def main() -> None:
        await listener.start()

    check = LeakCheck().start()
    asyncio.run(main())
    problems = check.finish()
    assert problems == [f"left running: {listener!r} (never stopped)"]
    assert comm_core.testing.open_listeners() == []  # stopped by the check


async def test_leak_check_finds_comms_and_tasks_left_behind(memory: MemoryBackend) -> None:
    release = asyncio.Event()
    accepted: list[comm_core.Comm] = []
    with pytest.raises(AssertionError) as info:  # noqa: PT012
        async with LeakCheck(settle=0.2), comm_core.listen("memory://", accepted.append) as lst:
            comm = await comm_core.connect(lst.contact_address)
            waiting = asyncio.ensure_future(release.wait())
    assert waiting.cancelled(), "the check cancels the tasks it reports"
    message = str(info.value)
    assert message.startswith("the block left 3 thing(s) behind:"), message
    for end in (comm, accepted[0]):  # their repr says "open" in the message, "closed" now
        assert f"local={end.local_address} peer={end.peer_address} open>" in message, message
    assert "left running: task <coroutine object Event.wait" in message
    assert comm.closed(), "the check aborts the comms it reports"
    await lst.join()


async def test_leak_check_passes_when_everything_is_closed(memory: MemoryBackend) -> None:
    async with (
        LeakCheck(),
        comm_core.listen("memory://", echo_handler) as listener,
        await comm_core.connect(listener.contact_address) as comm,
    ):
        await comm.write("ping")
        assert await comm.read() == "ping"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_leak_check_finds_a_descriptor_left_open() -> None:
    check = LeakCheck()
    with pytest.raises(AssertionError, match=r"left open: file descriptor \d+ \(socket:"):  # noqa: SIM117
        with check:
            sock = socket.socket()
    sock.close()
    with LeakCheck():
        socket.socket().close()


def test_leak_check_does_not_hide_the_blocks_own_error() -> None:
    socks: list[socket.socket] = []

    def leaky() -> None:
        with LeakCheck():
            socks.append(socket.socket())  # a leak, on Linux
            raise KeyError("the block's")

    try:
        with pytest.raises(KeyError):
            leaky()
    finally:
        for sock in socks:
            sock.close()


_FIXTURE_SUITE = """
import socket

import comm_core
from comm_core.testing import echo_handler

pytestmark = __import__("pytest").mark.usefixtures("comm_leak_check")


async def test_clean():
    pass


async def test_leaves_a_socket_open():
    test_leaves_a_socket_open.sock = socket.socket()


def test_can_turn_a_check_off(comm_leak_check):
    comm_leak_check.descriptors = False
    test_can_turn_a_check_off.sock = socket.socket()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_the_comm_leak_check_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixture=_FIXTURE_SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "comm_core.testing.plugin", "-p", "no:cacheprovider", "-W", "ignore::ResourceWarning"
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaves_a_socket_open*", "*left open: file descriptor*"]
    )


# -- comm_core.testing without pytest -----------------------------------------------------

_WITHOUT_PYTEST = textwrap.dedent(
    """
    import asyncio, sys

    sys.modules["pytest"] = None  # any import of pytest now fails
    import comm_core
    from comm_core.testing import LeakCheck, echo_handler, open_comms, open_listeners, until
    from comm_core.testing import within
    from memory_backend import MemoryBackend

    comm_core.register_backend(MemoryBackend)

    async def main():
        async with LeakCheck(), comm_core.listen("memory://", echo_handler) as listener:
            async with await comm_core.connect(listener.contact_address) as comm:
                await comm.write("ping")
                assert await within(comm.read(), "the echo") == "ping"
            await until(lambda: not open_comms(collect=False), "the handler to close")
        assert open_listeners() == []
        try:
            await within(asyncio.sleep(1), "a sleep", timeout=0.01)
        except AssertionError as exc:
            print("within:", exc)
        try:
            from comm_core.testing import BackendConformance
        except ImportError as exc:
            print("kit:", exc)

    asyncio.run(main())
    print("pytest imported:", sorted(m for m in sys.modules if m.startswith(("pytest", "_pytest"))
                                      and sys.modules[m] is not None))
    """
)


def test_the_helpers_import_and_work_without_pytest() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _WITHOUT_PYTEST],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "within: timed out after 0.01s waiting for a sleep"
    assert lines[1].startswith("kit: comm_core.testing.BackendConformance is a pytest suite")
    assert lines[2] == "pytest imported: []"


def test_importing_the_helpers_does_not_import_pytest() -> None:
    probe = (
        "import sys; from comm_core.testing import LeakCheck, echo_handler, within; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# -- the waiting helpers ------------------------------------------------------------------------


async def test_within_fails_naming_what_never_came() -> None:
    from comm_core.testing import within

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    expected = r"timed out after 0\.01s waiting for the reply"
    with pytest.raises(pytest.fail.Exception, match=expected):
        await within(never, "the reply", 0.01)
    assert never.cancelled()


async def test_within_lets_a_timeout_error_of_the_awaited_call_through() -> None:
    """A connect() that gives up is the test's subject, not a hang of the test."""
    from comm_core.testing import within

    async def gives_up() -> None:
        raise comm_core.ConnectTimeoutError("timed out connecting to 'x://y'", address="x://y")

    with pytest.raises(comm_core.ConnectTimeoutError, match="timed out connecting"):
        await within(gives_up(), "connect()", 10)
