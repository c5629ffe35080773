"""Same-host selection (issue 19, points 3 and 4): ``connect("tcp://...")`` takes the Unix
socket a listener on this host offers, proves it by the kernel's peer credentials, and
falls back to TCP, losing nothing, whenever that proof fails.

The listener runs in a child process (a real second process: the pid check means
something), on asyncio or uvloop; the dialer runs here, on asyncio or uvloop. The
child's handler records the scheme of each comm it is handed, so each test checks
that the handler saw exactly one comm per ``connect()``, over the path the dialer
reports.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest

import comm_core
from comm_core import selection
from selection_support import CHILD, child_listener, doctor_same_host, round_trip, seen_by

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("comm_unix") is None
        or importlib.util.find_spec("comm_tcp") is None,
        reason="needs comm-unix and comm-tcp",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="the unix offer is tested on Linux (boot id, abstract names, SO_PEERCRED)",
    ),
]


@pytest.fixture(autouse=True)
def _clean(selection_clean: None) -> None:
    """Each test starts without settings from the environment or remembered offers."""


# -- the path is taken -------------------------------------------------------------------------


async def test_tcp_to_a_listener_in_another_process_takes_its_unix_socket(loop_name: str) -> None:
    with child_listener(loop_name) as (pid, address, stderr):
        comm = await comm_core.connect(address, timeout=10)
        try:
            info = comm.extra_info
            assert info["path"] == "unix"
            assert info["requested"] == address
            assert info["peer_pid"] == pid  # the kernel says: the listener's process
            assert info["peer_uid"] == os.geteuid()
            assert comm.peer_address == comm.handshake_info["same_host_unix"]
            assert comm.peer_address.startswith("unix://@")
            await round_trip(comm, {"x": b"y" * 100_000, "n": [1, 2.5, None]})
        finally:
            await comm.close()
        # The handler saw one comm for that connect, over unix: the TCP connection
        # dialled first never reached it.
        assert await seen_by(address) == ["unix"]
    assert not [line for line in stderr if "WARNING" in line or "ERROR" in line], stderr


@pytest.mark.comm_loop("asyncio")
async def test_the_unix_path_carries_large_buffers_through_the_arena() -> None:
    """A selected path is comm-unix's whole transport: its shared-memory arena too (Linux,
    asyncio's selector loop at both ends)."""
    with child_listener("asyncio") as (_, address, _stderr):
        comm = await comm_core.connect(address, timeout=10)
        try:
            assert comm.extra_info["path"] == "unix"
            data = bytes(range(256)) * (3 * 4096)  # 3 MiB: above the arena's threshold
            await comm.write(data)
            echo = await comm.read()
            # Both ways through an arena: the child's echo is a read-only view of the
            # memory it shares with this process.
            assert isinstance(echo, memoryview)
            assert echo.readonly
            assert echo == data
            assert comm.extra_info["arena"] is True
            del echo
        finally:
            await comm.close()


async def test_later_connects_go_straight_to_unix(
    loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with child_listener(loop_name) as (_, address, _stderr):
        comm = await comm_core.connect(address, timeout=10)
        await comm.close()
        assert selection.known_offer(address) is not None
        tcp = comm_core.get_backend("tcp").get_connector()

        async def no_tcp(*args: Any, **kwargs: Any) -> comm_core.Comm:
            raise AssertionError("dialled tcp although a verified path was known")

        with monkeypatch.context() as patch:
            patch.setattr(tcp, "connect", no_tcp)
            for n in range(3):
                comm = await comm_core.connect(address, timeout=10)
                try:
                    assert comm.extra_info["path"] == "unix"
                    await round_trip(comm, n)
                finally:
                    await comm.close()
        assert await seen_by(address) == ["unix"] * 4


async def test_a_remembered_path_that_no_longer_proves_itself_is_dropped(
    loop_name: str,
) -> None:
    with child_listener(loop_name) as (pid, address, _stderr):
        comm = await comm_core.connect(address, timeout=10)
        offer = dict(comm.handshake_info)
        await comm.close()
        # As if the listener had restarted as another process on the same address: the
        # remembered offer names a pid that is not the socket's.
        bogus = {key: value for key, value in offer.items() if key.startswith("same_host_")}
        bogus["same_host_pid"] = pid + 100_000
        selection.remember_offer(address, bogus)
        comm = await comm_core.connect(address, timeout=10)
        try:
            # Not taken on the stale offer: tcp was dialled, its fresh offer verified.
            assert comm.extra_info["path"] == "unix"
            await round_trip(comm, "again")
        finally:
            await comm.close()
        assert selection.known_offer(address) == {
            key: value for key, value in offer.items() if key.startswith("same_host_")
        }
        assert await seen_by(address) == ["unix", "unix"]


# -- turning it off ----------------------------------------------------------------------------


async def test_same_host_false_on_connect_keeps_tcp(loop_name: str) -> None:
    with child_listener(loop_name) as (_, address, _stderr):
        comm = await comm_core.connect(address, timeout=10, same_host=False)
        try:
            assert "path" not in comm.extra_info
            assert comm.peer_address == address
            await round_trip(comm, "tcp")
        finally:
            await comm.close()
        assert await seen_by(address) == ["tcp"]


@pytest.mark.parametrize("how", ["environment", "configure"])
async def test_the_setting_turns_it_off_on_the_dialer(
    loop_name: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with child_listener(loop_name) as (_, address, _stderr):
        if how == "environment":
            monkeypatch.setenv("COMM_SAME_HOST", "0")
            comm = await comm_core.connect(address, timeout=10)
        else:
            with comm_core.configure(same_host=False):
                comm = await comm_core.connect(address, timeout=10)
        try:
            assert comm.peer_address == address
            await round_trip(comm, how)
        finally:
            await comm.close()
        assert await seen_by(address) == ["tcp"]


@pytest.mark.parametrize("how", ["environment", "argument"])
async def test_a_listener_with_the_setting_off_offers_nothing(loop_name: str, how: str) -> None:
    if how == "environment":
        listening = child_listener(loop_name, env={"COMM_SAME_HOST": "0"})
    else:
        listening = child_listener(loop_name, same_host=False)
    with listening as (_, address, _stderr):
        comm = await comm_core.connect(address, timeout=10)
        try:
            assert not selection.offer_of(comm.handshake_info)
            assert comm.peer_address == address
            await round_trip(comm, "tcp")
        finally:
            await comm.close()
        assert await seen_by(address) == ["tcp"]


# -- offers that look local but are not: tcp kept, nothing lost --------------------------------

FAKES = {
    # No such socket: a listener in a container without the host's abstract namespace.
    "absent": {"same_host_unix": "unix://@comm-selection-test-nobody-listens-here"},
    # A socket of another process: a squatter, or a listener of another pid namespace.
    "another pid": {"same_host_pid": 1},
    # Another user: never switched, whatever the socket.
    "another user": {"same_host_uid": 65534 if os.geteuid() != 65534 else 0},
    # Another kernel.
    "another boot": {"same_host_boot_id": "00000000-0000-0000-0000-000000000000"},
    # Malformed values (a hostile or broken peer).
    "malformed": {"same_host_pid": "1", "same_host_unix": "unix://relative"},
}


@pytest.mark.parametrize("fake", list(FAKES))
async def test_an_offer_that_does_not_prove_itself_keeps_tcp(loop_name: str, fake: str) -> None:
    with child_listener(loop_name, overrides=FAKES[fake]) as (_, address, stderr):
        for n in range(2):
            comm = await comm_core.connect(address, timeout=10)
            try:
                assert "path" not in comm.extra_info
                assert comm.peer_address == address
                await round_trip(comm, n)
            finally:
                await comm.close()
        assert selection.known_offer(address) is None
        assert await seen_by(address) == ["tcp", "tcp"]
    assert not [line for line in stderr if "WARNING" in line or "ERROR" in line], stderr


async def test_require_encryption_is_not_bypassed(loop_name: str) -> None:
    with (
        child_listener(loop_name) as (_, address, _stderr),
        pytest.raises(comm_core.EncryptionRequiredError),
    ):
        await comm_core.connect(address, timeout=10, require_encryption=True)


# -- tls:// listeners: the Unix socket behind a token ----------------------------------------


@pytest.fixture(scope="module")
def tls_credentials() -> dict[str, str]:
    """Temporary mutual-TLS credentials, as PEM text (for the child too)."""
    pytest.importorskip("comm_tls")
    from comm_tls import Security

    security = Security.temporary()
    return {"ca": security.ca, "cert": security.cert, "key": security.key}


def _security(credentials: dict[str, str]) -> Any:
    from comm_tls import Security

    return Security(**credentials)


async def test_tls_to_a_listener_in_another_process_takes_its_unix_socket_behind_a_token(
    loop_name: str, tls_credentials: dict[str, str]
) -> None:
    security = _security(tls_credentials)
    with child_listener(loop_name, address="tls://127.0.0.1:0", security=tls_credentials) as (
        pid,
        address,
        stderr,
    ):
        comm = await comm_core.connect(address, timeout=10, security=security)
        try:
            info = comm.extra_info
            assert info["path"] == "unix"
            assert info["requested"] == address
            assert info["peer_pid"] == pid
            assert comm.peer_address.startswith("unix://@")
            # The listener's side knows who its peer is: the certificate it showed over TLS.
            await comm.write("who")
            authenticated, subject = await comm.read()
            assert authenticated == "tls"
            assert subject  # the client certificate's subject, as TLS verified it
            await round_trip(comm, {"x": b"y" * 100_000})
        finally:
            await comm.close()
        # The handler saw one comm, over unix: the TLS connection never reached it.
        assert await seen_by(address, security=security) == ["unix"]
    assert not [line for line in stderr if "WARNING" in line or "ERROR" in line], stderr


async def test_later_tls_connects_go_straight_to_unix_with_a_fresh_token(
    loop_name: str, tls_credentials: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    security = _security(tls_credentials)
    with child_listener(loop_name, address="tls://127.0.0.1:0", security=tls_credentials) as (
        _,
        address,
        _stderr,
    ):
        comm = await comm_core.connect(address, timeout=10, security=security)
        await comm.close()
        args = {"security": security}
        tokens = [selection.known_offer(address, args)["same_host_token"]]  # type: ignore[index]
        tls = comm_core.get_backend("tls").get_connector()

        async def no_tls(*args: Any, **kwargs: Any) -> comm_core.Comm:
            raise AssertionError("dialled tls although a verified path was known")

        with monkeypatch.context() as patch:
            patch.setattr(tls, "connect", no_tls)
            for n in range(3):
                comm = await comm_core.connect(address, timeout=10, security=security)
                try:
                    assert comm.extra_info["path"] == "unix"
                    await round_trip(comm, n)
                finally:
                    await comm.close()
                # Each answer brings a fresh token, remembered for the next connect.
                tokens.append(selection.known_offer(address, args)["same_host_token"])  # type: ignore[index]
        assert len(set(tokens)) == 4
        assert await seen_by(address, security=security) == ["unix"] * 4


async def test_a_remembered_tls_path_serves_only_connects_with_the_same_security(
    tls_credentials: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token was given to one client identity, after one verification of the
    listener: a connect() with other TLS settings (another client certificate, another
    trust) dials TLS itself, and gets a token of its own."""
    from comm_tls import Security

    first = _security(tls_credentials)
    other = Security(**tls_credentials, resume_sessions=False)  # other settings
    same = _security(tls_credentials)  # equal settings, another object
    with child_listener(address="tls://127.0.0.1:0", security=tls_credentials) as (
        _,
        address,
        _stderr,
    ):
        tls = comm_core.get_backend("tls").get_connector()
        dialled: list[Any] = []
        real = tls.connect

        async def counting(*args: Any, **kwargs: Any) -> comm_core.Comm:
            dialled.append(kwargs.get("security"))
            return await real(*args, **kwargs)

        monkeypatch.setattr(tls, "connect", counting)
        for security in (first, same, other, first):
            comm = await comm_core.connect(address, timeout=10, security=security)
            try:
                assert comm.extra_info["path"] == "unix"
                await round_trip(comm, "x")
            finally:
                await comm.close()
        # first: dialled; same: remembered; other: dialled; first again: dialled (the
        # remembered offer is other's now).
        assert [d is first for d in dialled] == [True, False, True]
        assert dialled[1] is other
        assert selection.known_offer(address, {"security": first}) is not None
        assert selection.known_offer(address, {"security": other}) is None


async def test_a_token_the_listener_does_not_know_falls_back_to_tls_and_loses_nothing(
    loop_name: str, tls_credentials: dict[str, str]
) -> None:
    """As with an expired token: the companion socket drops the comm before saying
    anything; connect() dials TLS again, gets a fresh token, and takes the socket."""
    security = _security(tls_credentials)
    with child_listener(loop_name, address="tls://127.0.0.1:0", security=tls_credentials) as (
        _,
        address,
        stderr,
    ):
        comm = await comm_core.connect(address, timeout=10, security=security)
        offer = selection.offer_of(comm.handshake_info)
        await comm.close()
        selection.remember_offer(
            address, {**offer, "same_host_token": "0" * 32}, {"security": security}
        )
        comm = await comm_core.connect(address, timeout=10, security=security)
        try:
            assert comm.extra_info["path"] == "unix"
            await round_trip(comm, "again")
        finally:
            await comm.close()
        known = selection.known_offer(address)
        assert known is not None
        assert known["same_host_token"] != "0" * 32
        assert await seen_by(address, security=security) == ["unix", "unix"]
    assert not [line for line in stderr if "WARNING" in line or "ERROR" in line], stderr


@pytest.mark.parametrize("token", [None, "0" * 32, "z" * 32, "short", 12345, ["0" * 32]])
async def test_the_companion_of_a_tls_listener_serves_no_one_without_a_valid_token(
    loop_name: str, tls_credentials: dict[str, str], token: Any
) -> None:
    """A process of the same user that dials the offered socket directly, without a
    token the listener gave over TLS (or with a forged one), gets no comm: the
    listener says nothing to it and drops it; its handler never sees it."""
    security = _security(tls_credentials)
    with child_listener(loop_name, address="tls://127.0.0.1:0", security=tls_credentials) as (
        _,
        address,
        _stderr,
    ):
        comm = await comm_core.connect(address, timeout=10, security=security, same_host=False)
        companion = comm.handshake_info["same_host_unix"]
        assert comm.handshake_info["same_host_token"]
        await comm.close()
        overrides = None if token is None else {"same_host_token": token}
        with pytest.raises(comm_core.ConnectTimeoutError) as info:
            await comm_core.connect(companion, timeout=2, handshake_overrides=overrides)
        # Refused before the listener said a word of the comm protocol: the connection
        # closed under the dialer's handshake.
        assert isinstance(info.value.__cause__, comm_core.CommClosedError)
        # The listener serves its clients all the same.
        comm = await comm_core.connect(address, timeout=10, security=security)
        try:
            assert comm.extra_info["path"] == "unix"
            await round_trip(comm, "still serving")
        finally:
            await comm.close()
        assert await seen_by(address, security=security) == ["tls", "unix"]


async def test_require_encryption_keeps_tls(
    loop_name: str, tls_credentials: dict[str, str]
) -> None:
    security = _security(tls_credentials)
    with child_listener(loop_name, address="tls://127.0.0.1:0", security=tls_credentials) as (
        _,
        address,
        _stderr,
    ):
        comm = await comm_core.connect(
            address, timeout=10, security=security, require_encryption=True
        )
        try:
            assert "path" not in comm.extra_info
            assert comm.peer_address == address
            await round_trip(comm, "encrypted")
        finally:
            await comm.close()
        assert selection.known_offer(address) is None
        assert await seen_by(address, security=security) == ["tls"]


async def test_a_tls_listener_that_requires_encryption_offers_nothing(
    tls_credentials: dict[str, str],
) -> None:
    security = _security(tls_credentials)
    with child_listener(
        address="tls://127.0.0.1:0", security=tls_credentials, require_encryption=True
    ) as (_, address, _stderr):
        comm = await comm_core.connect(address, timeout=10, security=security)
        try:
            assert not selection.offer_of(comm.handshake_info)
            assert "path" not in comm.extra_info
        finally:
            await comm.close()


# -- in one process ----------------------------------------------------------------------------


async def test_in_one_process_tcp_stays_tcp_unless_same_process_is_on() -> None:
    seen: list[str] = []

    async def handler(comm: comm_core.Comm) -> None:
        seen.append(comm.local_address.partition("://")[0])
        async for msg in comm:
            await comm.write(msg)

    async with comm_core.listen("tcp://127.0.0.1:0", handler) as listener:
        address = listener.contact_address
        comm = await comm_core.connect(address, timeout=10)
        try:
            assert "path" not in comm.extra_info  # not even the Unix socket to ourselves
            assert comm.peer_address == address
            await round_trip(comm, 1)
        finally:
            await comm.close()
        assert "same_host_inproc" not in comm.handshake_info  # the listener offers no inproc
    assert seen == ["tcp"]

    pytest.importorskip("comm_inproc")
    seen.clear()
    with comm_core.configure(same_process=True):
        async with comm_core.listen("tcp://127.0.0.1:0", handler) as listener:
            address = listener.contact_address
            for n in range(2):
                comm = await comm_core.connect(address, timeout=10)
                try:
                    assert comm.extra_info == {"path": "inproc", "requested": address}
                    assert comm.peer_address.startswith("inproc://")
                    await round_trip(comm, n)
                finally:
                    await comm.close()
            comm = await comm_core.connect(address, timeout=10, same_host=False)
            try:
                assert comm.peer_address == address
                await round_trip(comm, "tcp")
            finally:
                await comm.close()
    assert seen == ["inproc", "inproc", "tcp"]


# -- two network namespaces: multi-host on one kernel ------------------------------------------


def _can_make_namespaces() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


NS_REASON = _can_make_namespaces()


@contextmanager
def two_namespaces() -> Iterator[tuple[str, str, str]]:
    """Two network namespaces joined by a veth pair: (listener's ns, its IP, dialer's ns)."""
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"commsel-a-{tag}", f"commsel-b-{tag}"
    veth_a, veth_b = f"csa{tag}", f"csb{tag}"
    ip_a, ip_b = "10.213.77.1", "10.213.77.2"

    def run(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    made: list[str] = []
    try:
        for ns in (ns_a, ns_b):
            run("netns", "add", ns)
            made.append(ns)
        run("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        run("link", "set", veth_a, "netns", ns_a)
        run("link", "set", veth_b, "netns", ns_b)
        run("-n", ns_a, "addr", "add", f"{ip_a}/24", "dev", veth_a)
        run("-n", ns_b, "addr", "add", f"{ip_b}/24", "dev", veth_b)
        for ns, veth in ((ns_a, veth_a), (ns_b, veth_b)):
            run("-n", ns, "link", "set", veth, "up")
            run("-n", ns, "link", "set", "lo", "up")
            # A default route, as a host has: its primary address is then the veth's.
            run("-n", ns, "route", "add", "default", "dev", veth)
    except (subprocess.CalledProcessError, OSError) as exc:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        stderr = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot make network namespaces here: {exc} {stderr.decode(errors='replace')}")
    try:
        yield ns_a, ip_a, ns_b
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and the pair
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)


DIALER = textwrap.dedent(
    """
    import asyncio, json, sys
    import comm_core
    from comm_core import selection

    async def main():
        address = sys.argv[1]
        comm = await comm_core.connect(address, timeout=10)
        await comm.write("hello")
        echoed = await comm.read()
        info = comm.extra_info
        report = {
            "path": info.get("path", "tcp"),
            "peer": comm.peer_address,
            "echoed": echoed,
            "offer": sorted(k for k in comm.handshake_info if k.startswith("same_host_")),
            "remembered": selection.known_offer(address) is not None,
        }
        await comm.close()
        print(json.dumps(report))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(NS_REASON is not None, reason=NS_REASON or "")
def test_another_network_namespace_is_dialled_over_tcp() -> None:
    """A listener in one network namespace, a dialer in another, over a veth pair: the same
    kernel (equal boot ids), but the abstract socket is unreachable (abstract names belong
    to a network namespace): the dialer falls back to TCP and loses nothing."""
    with two_namespaces() as (ns_a, ip_a, ns_b):
        config = json.dumps({"address": f"tcp://{ip_a}:0"})
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns_a, sys.executable, "-c", CHILD, config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.stdout is not None
            line = listener.stdout.readline()
            assert line, listener.stderr.read() if listener.stderr else "no listener"
            (address,) = json.loads(line)
            assert address.startswith(f"tcp://{ip_a}:")
            dialer = subprocess.run(
                ["ip", "netns", "exec", ns_b, sys.executable, "-c", DIALER, address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert dialer.returncode == 0, dialer.stderr
            report = json.loads(dialer.stdout)
            # The listener offered its Unix socket (same kernel: the boot id matched) ...
            assert "same_host_unix" in report["offer"]
            # ... which the other namespace cannot reach: tcp kept, the message went through.
            assert report == {
                "path": "tcp",
                "peer": address,
                "echoed": "hello",
                "offer": report["offer"],
                "remembered": False,
            }
            # From the listener's namespace itself, the same address takes the socket.
            here = subprocess.run(
                ["ip", "netns", "exec", ns_a, sys.executable, "-c", DIALER, address],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert here.returncode == 0, here.stderr
            assert json.loads(here.stdout)["path"] == "unix"
        finally:
            _, err = listener.communicate(timeout=30)  # closes its stdin: it stops
            assert listener.returncode == 0, err
        assert not [ln for ln in err.splitlines() if "WARNING" in ln or "ERROR" in ln], err


TLS_LISTENER = textwrap.dedent(
    """
    import asyncio, json, sys
    import comm_core
    from comm_tls import Security

    async def main():
        security = Security.temporary()  # names this namespace's primary address too

        async def handler(comm):
            async for msg in comm:
                await comm.write(msg)

        listener = comm_core.listen(sys.argv[1], handler, security=security)
        async with listener:
            creds = {"ca": security.ca, "cert": security.cert, "key": security.key}
            print(json.dumps([listener.contact_address, creds]), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)

TLS_DIALER = textwrap.dedent(
    """
    import asyncio, json, sys
    import comm_core
    from comm_tls import Security

    async def main():
        address, creds = json.loads(sys.stdin.read())
        comm = await comm_core.connect(address, timeout=10, security=Security(**creds))
        await comm.write("hello")
        print(json.dumps([await comm.read(), comm.extra_info.get("path", "tls")]))
        await comm.close()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(NS_REASON is not None, reason=NS_REASON or "")
def test_temporary_credentials_work_from_another_host() -> None:
    """``Security.temporary()`` names the host's own addresses (issue 19, point 4's aside):
    a dialer in another network namespace verifies the listener's certificate by the
    listener's primary address; and the tls:// listener's Unix socket, which it offers, is
    not taken from there (another network namespace: its abstract name is out of reach)."""
    pytest.importorskip("comm_tls")
    with two_namespaces() as (ns_a, ip_a, ns_b):
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns_a, sys.executable, "-c", TLS_LISTENER, "tls://:0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.stdout is not None
            line = listener.stdout.readline()
            assert line, listener.stderr.read() if listener.stderr else "no listener"
            address, creds = json.loads(line)
            assert address.startswith(f"tls://{ip_a}:")  # the wildcard's contact address
            dialer = subprocess.run(
                ["ip", "netns", "exec", ns_b, sys.executable, "-c", TLS_DIALER],
                input=json.dumps([address, creds]),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert dialer.returncode == 0, dialer.stderr
            assert json.loads(dialer.stdout) == ["hello", "tls"]
        finally:
            _, err = listener.communicate(timeout=30)  # closes its stdin: it stops
            assert listener.returncode == 0, err


def test_socket_module_has_abstract_namespace() -> None:
    """The premise of the tests above on Linux: abstract Unix socket names exist."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(b"")
        assert sock.getsockname()[:1] == b"\0"


# -- comm doctor -------------------------------------------------------------------------------


def test_comm_doctor_says_which_path_a_tcp_address_takes() -> None:
    with child_listener() as (pid, address, _stderr):
        line = doctor_same_host(address)
    assert "the listener's own Unix socket" in line
    assert f"(pid {pid})" in line


def test_comm_doctor_says_why_an_offer_was_not_taken() -> None:
    with child_listener(overrides=FAKES["absent"]) as (_, address, _stderr):
        line = doctor_same_host(address)
    assert "was not taken: connecting to the offered" in line, line
    with child_listener(same_host=False) as (_, address, _stderr):
        line = doctor_same_host(address)
    assert "offers no same-host path" in line, line


# -- a plugin that gets it wrong never stops a listener -----------------------------------------


class _BadOffer(selection.Offer):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stopped = False

    async def start(self) -> dict[str, Any]:
        if self.mode == "start fails":
            raise OSError("no room for a socket")
        return {"not_prefixed": 1}

    def stop(self) -> None:
        self.stopped = True


class _BadPlugin:
    """Misbehaves only for listeners whose handshake_overrides name a mode."""

    made: ClassVar[list[_BadOffer]] = []

    @comm_core.hookimpl
    def comm_same_host_offer(self, session: Any) -> selection.Offer | None:
        mode = (session.overrides or {}).get("bad_offer_mode")
        if mode is None:
            return None
        if mode == "hook raises":
            raise RuntimeError("a bug in the plugin")
        offer = _BadOffer(mode)
        self.made.append(offer)
        return offer


@pytest.fixture(scope="module")
def bad_plugin() -> type[_BadPlugin]:
    registry = comm_core.get_registry()
    if not any(
        impl.plugin == "bad-offer-plugin"
        for impl in registry.implementations("comm_same_host_offer")
    ):
        comm_core.register_plugin(_BadPlugin(), name="bad-offer-plugin")
    return _BadPlugin


@pytest.mark.parametrize("mode", ["hook raises", "start fails", "entries without prefix"])
async def test_a_failing_offer_is_logged_and_the_listener_serves(
    bad_plugin: type[_BadPlugin], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(comm: comm_core.Comm) -> None:
        async for msg in comm:
            await comm.write(msg)

    bad_plugin.made.clear()
    with caplog.at_level("WARNING", logger="comm_core.selection"):
        listener = comm_core.listen(
            "tcp://127.0.0.1:0", handler, handshake_overrides={"bad_offer_mode": mode}
        )
        async with listener:
            comm = await comm_core.connect(listener.contact_address, timeout=10)
            try:
                assert "not_prefixed" not in comm.handshake_info
                await round_trip(comm, mode)
            finally:
                await comm.close()
    assert [r.getMessage() for r in caplog.records if "bad-offer-plugin" in r.getMessage()]
    # An offer that started (or half started) is stopped again.
    assert all(offer.stopped for offer in bad_plugin.made)
