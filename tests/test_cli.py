"""The ``comm`` command over the installed transports, each command run as a subprocess.

``comm serve`` runs as a subprocess whose address is read from its output;
``comm ping``, ``comm doctor`` and ``comm bench`` run against it (or against a
port nobody listens on), and the serve process is stopped with SIGINT or
SIGTERM. Tests that need comm-tls are skipped where it is not installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import comm_core

TIMEOUT = 60  # seconds any one command may take; they take far less

needs_tls = pytest.mark.skipif(
    importlib.util.find_spec("comm_tls") is None, reason="comm-tls is not installed"
)
needs_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows"
)


def _environment(path: Path | None = None) -> dict[str, str]:
    """The environment of a command: no COMM_* variable; *path* first on ``sys.path``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMM_")}
    if path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(path), *filter(None, [environment.get("PYTHONPATH")])]
        )
    return {**environment, "PYTHONIOENCODING": "utf-8"}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-W", "error", "-m", "comm_core", *args]


def comm(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m comm_core *args`` to completion (*path*: more distributions)."""
    return subprocess.run(
        _command(*args),
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_environment(path),
        timeout=TIMEOUT,
    )


class Served:
    """A ``comm serve`` subprocess; its output is read by threads, line by line."""

    def __init__(self, *args: str, path: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            _command("serve", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=_environment(path),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.address = self.wait_for(r"^contact address: ").split(": ", 1)[1]

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self._lines.put(line.rstrip("\n"))
            else:
                self.stderr.append(line)
        if is_stdout:
            self._lines.put(None)

    def wait_for(self, pattern: str) -> str:
        """The next line of standard output in which regular expression *pattern* is found."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"comm serve printed no {pattern!r} line") from None
            if line is None:
                self.proc.wait(TIMEOUT)
                raise AssertionError(
                    f"comm serve exited ({self.proc.returncode}) before printing {pattern!r}: "
                    + "".join(self.stderr)
                )
            self.stdout.append(line)
            if re.search(pattern, line):
                return line

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Send *signum*, wait for the process to exit and for its output; return its status."""
        self.proc.send_signal(signum)
        status = self.proc.wait(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        while (line := self._lines.get_nowait()) is not None:
            self.stdout.append(line)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def serve() -> Iterator[type[Served]]:
    """Start ``comm serve`` subprocesses: ``serve(ADDRESS, *options)``; killed at the end."""
    started: list[Served] = []

    class Tracked(Served):
        def __init__(self, *args: str, path: Path | None = None) -> None:
            started.append(self)
            super().__init__(*args, path=path)

    yield Tracked
    for served in started:
        served.kill()


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 on which nothing listens (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """A directory for ``--temporary-credentials`` (``comm serve`` fills it)."""
    return tmp_path / "credentials"


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """The CA of other temporary credentials, which no listener of the tests uses."""
    from comm_tls import Security

    path = tmp_path / "other-ca.pem"
    ca = Security.temporary().ca
    assert isinstance(ca, str)
    path.write_text(ca, encoding="ascii")
    return path


def _doctor_lines(stdout: str) -> dict[str, str]:
    """``{step name: mark}`` from the step lines of ``comm doctor``."""
    steps = {}
    for line in stdout.splitlines()[1:]:
        if not line.startswith("  "):
            break
        mark, rest = line.strip().split(" ", 1)
        name = re.split(r"\s{2,}", rest.strip(), maxsplit=1)[0]
        steps[name] = mark
    return steps


# -- serve, ping -------------------------------------------------------------------------------


@needs_signals
def test_serve_then_ping_then_sigint(serve: type[Served]) -> None:
    served = serve("tcp://127.0.0.1:0")
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", served.address)
    assert served.stdout[0] == f"listen address: {served.address}"

    result = comm("ping", served.address, "-c", "3", "-i", "0.01")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"PING {served.address}: 64 bytes of payload; connected in ")
    for seq, line in enumerate(lines[1:4], 1):
        assert re.fullmatch(
            rf"64 bytes from {re.escape(served.address)}: seq={seq} time=\d+\.\d{{3}} ms", line
        )
    assert lines[4] == f"--- {served.address} comm ping statistics ---"
    assert re.fullmatch(r"3 sent, 3 received, 0\.0% lost, time \d+ ms", lines[5])
    assert re.fullmatch(r"rtt min/avg/p99/max = (\d+\.\d{3}/){3}\d+\.\d{3} ms", lines[6])

    # One line when the ping's connection opens, one when it closes.
    peer = served.wait_for(r": connected$").split()[-2].rstrip(":")
    served.wait_for(rf" {re.escape(peer)}: closed after 3 messages$")

    assert served.stop(signal.SIGINT) == 0
    assert served.stdout[-1] == "stopped after 1 connection"
    assert "".join(served.stderr) == ""


class Running:
    """A ``comm`` subprocess whose standard output a thread reads line by line."""

    def __init__(self, *args: str, path: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            _command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=_environment(path),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str) -> str:
        """The next line of standard output that matches *pattern*."""
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            assert line is not None, f"the command ended before printing {pattern!r}"
            self.stdout.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, signum: int | None = None) -> tuple[int, str]:
        """Send *signum* (if any), wait for the end; return the status and standard error."""
        if signum is not None:
            self.proc.send_signal(signum)
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()  # until the process closes it: it ended
        status = self.proc.wait(TIMEOUT)
        self._thread.join(TIMEOUT)
        while (line := self.lines.get_nowait()) is not None:
            self.stdout.append(line)
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stderr.close()
        return status, stderr

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def running() -> Iterator[type[Running]]:
    """Start ``comm`` subprocesses; killed at the end if still running."""
    started: list[Running] = []

    class Tracked(Running):
        def __init__(self, *args: str, path: Path | None = None) -> None:
            super().__init__(*args, path=path)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


@needs_signals
def test_ctrl_c_while_ping_is_connecting(running: type[Running]) -> None:
    # A TCP listener that accepts and never answers: ping waits for the comm handshake.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(TIMEOUT)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        ping = running("ping", address, "--timeout", "60")
        connection, _ = silent.accept()  # ping is connecting now
        with connection:
            status, stderr = ping.finish(signal.SIGINT)
    assert status == 130  # as `comm --help` and `comm ping --help` say
    assert stderr == f"comm: error: interrupted while connecting to {address}\n"
    assert ping.stdout == []


@needs_signals
def test_ctrl_c_mid_ping_summarises_the_replies_printed(
    serve: type[Served], running: type[Running]
) -> None:
    served = serve("tcp://127.0.0.1:0", "--quiet")
    ping = running("ping", served.address, "-i", "0")  # always a message in flight
    for _ in range(3):
        ping.wait_for(r" seq=\d+ time=")
    status, stderr = ping.finish(signal.SIGINT)
    assert status == 0, stderr
    assert stderr == ""
    replies = [line for line in ping.stdout if re.search(r" seq=\d+ time=", line)]
    seqs = [int(re.findall(r"seq=(\d+)", line)[0]) for line in replies]
    assert seqs == list(range(1, len(seqs) + 1))
    summary = ping.stdout[ping.stdout.index(f"--- {served.address} comm ping statistics ---") + 1]
    match = re.fullmatch(
        r"(\d+) sent, (\d+) received, 0\.0% lost(, 1 awaiting a reply when stopped)?, "
        r"time \d+ ms",
        summary,
    )
    assert match, summary
    sent, received = int(match[1]), int(match[2])
    assert received == len(replies)  # what the summary counts is what was printed
    assert sent == received + (1 if match[3] else 0)
    assert served.stop() == 0


SLOW_PLUGIN = """
import time
import comm_core


@comm_core.hookimpl
def comm_register_serializers():
    time.sleep(0.5)  # a plugin that takes its time to load
    return []
"""


@needs_signals
def test_the_first_ping_is_not_timed_with_plugin_loading(
    serve: type[Served], tmp_path: Path
) -> None:
    root = tmp_path / "slow"
    root.mkdir()
    (root / "comm_slow_plugin.py").write_text(SLOW_PLUGIN, encoding="utf-8")
    info = root / "comm_slow-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: comm-slow\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[comm_core.backends]\nslow = comm_slow_plugin\n", encoding="utf-8"
    )
    served = serve("tcp://127.0.0.1:0", "--quiet")
    result = comm("ping", served.address, "-c", "1", path=root)
    assert result.returncode == 0, result.stderr
    connected = re.search(r"connected in (\d+\.\d+) ms", result.stdout)
    first = re.search(r" seq=1 time=(\d+\.\d+) ms", result.stdout)
    assert connected, result.stdout
    assert first, result.stdout
    # The plugin's half second is spent before either is timed.
    assert float(connected[1]) < 400
    assert float(first[1]) < 400
    assert served.stop() == 0


@needs_signals
def test_serve_stops_on_sigterm(serve: type[Served]) -> None:
    served = serve("tcp://127.0.0.1:0", "--quiet")
    assert comm("ping", served.address, "-c", "1").returncode == 0
    assert served.stop(signal.SIGTERM) == 0
    assert served.stdout[-1] == "stopped after 1 connection"
    assert not any("connected" in line for line in served.stdout)  # --quiet
    assert "".join(served.stderr) == ""


def test_serve_cannot_listen(serve: type[Served]) -> None:
    served = serve("tcp://127.0.0.1:0")
    result = comm("serve", served.address)
    assert result.returncode == 1
    assert result.stderr.startswith(f"comm: error: cannot listen on {served.address}")
    assert result.stderr.count("\n") == 1


def test_ping_refused(closed_port: int) -> None:
    address = f"tcp://127.0.0.1:{closed_port}"
    result = comm("ping", address, "-c", "1", "--timeout", "0.3")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("comm: error: ")
    assert address in result.stderr
    assert "refused" in result.stderr
    assert f"`comm serve {address}`" in result.stderr
    assert result.stderr.count("\n") == 1


def _resolver_answers() -> None:
    """Skip unless this machine's resolver says at once that .invalid names do not exist."""
    try:
        socket.getaddrinfo("nosuchhost.invalid", 8786)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            pytest.skip("this machine's resolver cannot answer (no DNS server reachable)")


@pytest.mark.parametrize("scheme", ["tcp", pytest.param("tls", marks=needs_tls)])
def test_ping_a_host_name_that_does_not_resolve(scheme: str, other_ca: Path) -> None:
    _resolver_answers()
    address = f"{scheme}://nosuchhost.invalid:8786"
    options = ["--ca", str(other_ca)] if scheme == "tls" else []
    start = time.monotonic()
    result = comm("ping", address, "-c", "1", "--timeout", "30", *options)
    assert time.monotonic() - start < 10  # at once, not after 30 s of retries
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.fullmatch(
        rf"comm: error: could not connect to {re.escape(address)}: the host name "
        r"'nosuchhost\.invalid' could not be resolved \([^)]+\); check the name\n",
        result.stderr,
    ), result.stderr


def test_tls_options_on_a_tcp_address(closed_port: int) -> None:
    result = comm("ping", f"tcp://127.0.0.1:{closed_port}", "--ca", "ca.pem")
    assert result.returncode == 2
    assert result.stderr == (
        "comm: error: --ca: TLS options are for encrypted schemes such as tls://, and tcp:// "
        "does not use them\n"
    )


@needs_tls
@needs_signals
def test_serve_and_ping_tls_with_temporary_credentials(
    serve: type[Served], credentials: Path
) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    # comm-tls's note, which comm serve prints once it listens.
    served.wait_for(
        rf"^temporary TLS credentials: {re.escape(str(credentials))} \(clients: "
        rf"--temporary-credentials {re.escape(str(credentials))}\)$"
    )
    assert sorted(p.name for p in credentials.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    if sys.platform != "win32":
        assert (credentials / "key.pem").stat().st_mode & 0o077 == 0

    result = comm(
        "ping", served.address, "-c", "2", "-i", "0", "--temporary-credentials", str(credentials)
    )
    assert result.returncode == 0, result.stderr
    assert "2 sent, 2 received" in result.stdout

    # Without the credentials, the listener's certificate is not trusted: a clear error.
    result = comm("ping", served.address, "-c", "1")
    assert result.returncode == 1
    assert result.stderr.startswith(f"comm: error: TLS handshake with {served.address} failed")
    assert "unknown CA" in result.stderr
    assert served.stop() == 0


#: Words of Python that a user of the command cannot act on.
PYTHON_WORDS = ("Security(", "=...", "ssl_context", "require_client_cert", "minimum_version")


@needs_tls
@needs_signals
def test_tls_failures_advise_in_the_commands_options(
    serve: type[Served], credentials: Path, other_ca: Path
) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    # The listener's certificate is not signed by the CA given.
    result = comm("ping", served.address, "-c", "1", "--ca", str(other_ca))
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"comm: error: TLS handshake with {served.address} failed: the server's certificate "
        "is signed by an unknown CA ("
    )
    assert "); pass the CA that signed it with --ca FILE; " in result.stderr
    # The listener wants a client certificate (mutual TLS) and gets none.
    result = comm("ping", served.address, "-c", "1", "--ca", str(credentials / "ca.pem"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"comm: error: TLS handshake with {served.address} failed")
    assert "pass --cert FILE and --key FILE, a certificate signed by a CA that the server " in (
        result.stderr
    )
    assert served.stop() == 0
    logged = "".join(served.stderr)
    assert "the client sent no certificate, and this listener requires one" in logged
    assert "or serve with --no-client-cert" in logged
    for text in (result.stderr, logged):
        assert not any(word in text for word in PYTHON_WORDS), text


@needs_tls
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cert", "{creds}/cert.pem"], "--cert {creds}/cert.pem holds no private key: pass "
         "its key with --key FILE"),
        (["--key", "{creds}/key.pem"], "--key {creds}/key.pem was given without --cert, the "
         "certificate it belongs to: pass --cert FILE too"),
        (["--ca", "{creds}/nothing.pem"], "--ca {creds}/nothing.pem: no such file"),
        (["--cert", "{creds}/key.pem", "--key", "{creds}/key.pem"], "--cert {creds}/key.pem: "
         "the file holds a private key (no '-----BEGIN CERTIFICATE-----' line); --cert takes "
         "this side's certificate chain in PEM, --key its private key"),
    ],
)  # fmt: skip
def test_tls_option_errors(
    serve: type[Served], credentials: Path, options: list[str], message: str
) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    argv = [option.format(creds=credentials) for option in options]
    result = comm("ping", served.address, "-c", "1", *argv)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"comm: error: {message.format(creds=credentials)}\n"


@needs_tls
def test_tls_serve_needs_credentials() -> None:
    result = comm("serve", "tls://127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.startswith("comm: error: a tls:// listener needs a certificate")
    assert "--temporary-credentials DIR" in result.stderr


@needs_tls
def test_client_with_missing_temporary_credentials(tmp_path: Path) -> None:
    result = comm("ping", "tls://127.0.0.1:8786", "--temporary-credentials", str(tmp_path))
    assert result.returncode == 2
    assert "no credentials there" in result.stderr
    assert "comm serve tls://" in result.stderr


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_healthy(serve: type[Served]) -> None:
    served = serve("tcp://127.0.0.1:0")
    result = comm("doctor", served.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert _doctor_lines(result.stdout) == {
        "address": "✓",
        "backend": "✓",
        "name resolution": "✓",
        "TCP connect": "✓",
        "comm handshake": "✓",
        "same host": "✓",  # comm-unix's step: the listener's Unix socket is taken
    }
    assert "the listener's own Unix socket" in result.stdout
    assert f"{served.address} is healthy" in result.stdout
    assert f"comm-core {comm_core.__version__} (protocol {comm_core.PROTOCOL_VERSION})" in (
        result.stdout
    )


@pytest.mark.parametrize("ascii_only", [False, True], ids=["unicode", "ascii"])
def test_doctor_refused(closed_port: int, ascii_only: bool) -> None:
    where = f"127.0.0.1:{closed_port}"
    result = comm("doctor", f"tcp://{where}", *(["--ascii"] if ascii_only else []))
    assert result.returncode == 1
    ok, fail, skip = ("ok", "FAIL", "--") if ascii_only else ("✓", "✗", "-")
    assert _doctor_lines(result.stdout) == {
        "address": ok,
        "backend": ok,
        "name resolution": ok,
        "TCP connect": fail,
        "comm handshake": skip,
        "same host": skip,
    }
    assert "The TCP connect step failed" in result.stdout
    assert (
        f"connection refused: is a listener running on {where}? start one with "
        f"`comm serve tcp://{where}`"
    ) in result.stdout


def test_doctor_wrong_scheme(closed_port: int) -> None:
    result = comm("doctor", f"nope://127.0.0.1:{closed_port}")
    assert result.returncode == 1
    assert _doctor_lines(result.stdout) == {"address": "✓", "backend": "✗"}
    installed = ", ".join(sorted(comm_core.backends()))
    assert f"no installed transport serves nope:// (installed: {installed})" in result.stdout
    assert "pip install" not in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ping", "tpc://127.0.0.1:8786"], "; did you mean tcp://?\n"),
        (["serve", "tsl://127.0.0.1:0"], "; did you mean tls://?\n"),
        (["bench", "inprc"], "; did you mean inproc://?\n"),
        (
            ["ping", "quic://127.0.0.1:8786"],
            "; if a third-party distribution provides quic://, install it (comm cannot tell "
            "which one does)\n",
        ),
    ],
)
def test_unknown_scheme_suggests_only_what_exists(args: list[str], expected: str) -> None:
    result = comm(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("comm: error: no comm backend for scheme ")
    assert result.stderr.endswith(expected), result.stderr
    assert result.stderr.count("pip install") == expected.count("pip install")


def test_a_missing_transport_of_comm_is_named_with_its_distribution() -> None:
    from comm_core._registry import COMM_DISTRIBUTIONS

    missing = sorted(set(COMM_DISTRIBUTIONS) - set(comm_core.backends()))
    if not missing:
        pytest.skip("every transport of comm is installed here (comm-core's tests cover it)")
    scheme = missing[0]
    distribution = COMM_DISTRIBUTIONS[scheme]
    result = comm("ping", f"{scheme}://127.0.0.1:8786")
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"; {distribution} provides {scheme}://: pip install {distribution}\n"
    ), result.stderr


def test_doctor_suggests_the_scheme_meant(closed_port: int) -> None:
    result = comm("doctor", f"tpc://127.0.0.1:{closed_port}")
    assert result.returncode == 1
    assert _doctor_lines(result.stdout) == {"address": "✓", "backend": "✗"}
    assert (
        "What to do: did you mean tcp://? (`comm backends` lists the installed transports)"
        in result.stdout
    )


@needs_tls
def test_doctor_tcp_client_of_a_tls_listener(serve: type[Served], credentials: Path) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    address = served.address.replace("tls://", "tcp://")
    result = comm("doctor", address, "--timeout", "2")
    assert result.returncode == 1
    assert _doctor_lines(result.stdout)["comm handshake"] == "✗"
    assert "is the peer a tls:// endpoint?" in result.stdout
    assert result.stderr == ""  # comm's warning about the dropped connection is not repeated


@needs_tls
def test_doctor_tls_healthy(serve: type[Served], credentials: Path) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    result = comm("doctor", served.address, "--temporary-credentials", str(credentials))
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_doctor_lines(result.stdout).values()) == {"✓"}
    assert "TLS handshake" in _doctor_lines(result.stdout)
    # The listener (another process of this user) offers its Unix socket behind a token.
    assert "the listener's own Unix socket" in result.stdout
    assert "behind the token its TLS greeting gave" in result.stdout


@needs_tls
def test_doctor_tls_wrong_ca(serve: type[Served], credentials: Path, other_ca: Path) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    result = comm(
        "doctor",
        served.address,
        "--ca",
        str(other_ca),
        "--cert",
        str(credentials / "cert.pem"),
        "--key",
        str(credentials / "key.pem"),
    )
    assert result.returncode == 1
    assert _doctor_lines(result.stdout) == {
        "address": "✓",
        "backend": "✓",
        "TLS options": "✓",
        "name resolution": "✓",
        "TCP connect": "✓",
        "TLS handshake": "✗",
        "comm handshake": "-",
        "same host": "-",
    }
    assert "certificate verify failed" in result.stdout
    assert "The TLS handshake step failed" in result.stdout
    assert "pass the CA that signed it with --ca FILE" in result.stdout


@needs_tls
def test_doctor_tls_without_client_certificate(serve: type[Served], credentials: Path) -> None:
    served = serve("tls://127.0.0.1:0", "--temporary-credentials", str(credentials))
    result = comm("doctor", served.address, "--ca", str(credentials / "ca.pem"))
    assert result.returncode == 1
    assert _doctor_lines(result.stdout)["TLS handshake"] == "✗"
    assert "requires a client certificate" in result.stdout
    assert "--cert FILE and --key FILE" in result.stdout


# -- bench, backends ---------------------------------------------------------------------------


def test_bench_json_every_installed_backend() -> None:
    result = comm("bench", "--json", "--duration", "0.02", "--sizes", "64", "64KiB")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress display: standard error is not a terminal
    document = json.loads(result.stdout)
    assert document["comm_core"] == comm_core.__version__
    assert document["sizes"] == [64, 65536]
    installed = sorted(comm_core.backends())
    assert [row["scheme"] for row in document["results"]] == installed
    for row in document["results"]:
        assert row["ok"], row
        assert row["in_process"] is True
        assert row["error"] is None
        assert [m["size"] for m in row["measurements"]] == [64, 65536]
        for m in row["measurements"]:
            assert m["round_trips"] >= 1
            assert m["round_trips_per_s"] > 0
            assert 0 < m["p50_us"] <= m["p99_us"]
            assert m["mb_per_s"] > 0


def test_bench_table_for_one_scheme() -> None:
    result = comm("bench", "tcp", "--duration", "0.02", "--sizes", "64", "1MiB")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"comm bench: comm-core {comm_core.__version__}, Python ")
    assert lines[1].split() == ["TARGET", "SIZE", "ROUND", "TRIPS/S", "P50", "P99", "MB/S"]
    assert lines[2].split()[:3] == ["tcp", "64", "B"]
    assert lines[3].split()[:2] == ["1", "MiB"]
    # The units on screen: sizes binary, as given; rates decimal, as network rates are.
    assert lines[4] == (
        "(SIZE: payload per message, 1 KiB = 1024 bytes, 1 MiB = 1024 KiB; MB/S: payload "
        "echoed per second, 1 MB = 10^6 bytes)"
    )


@needs_signals
def test_bench_a_served_address(serve: type[Served]) -> None:
    served = serve("tcp://127.0.0.1:0")
    result = comm("bench", served.address, "--json", "--duration", "0.02", "--sizes", "64")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["results"]
    assert row["target"] == row["address"] == served.address
    assert row["in_process"] is False
    assert row["ok"]
    assert served.stop() == 0


def test_bench_failure_is_reported(closed_port: int) -> None:
    address = f"tcp://127.0.0.1:{closed_port}"
    result = comm("bench", address, "--timeout", "0.3", "--duration", "0.02")
    assert result.returncode == 1
    assert result.stderr.startswith(f"comm: error: {address}: timed out connecting to")
    assert f"{address}  failed" in result.stdout


def test_backends_lists_the_installed_transports() -> None:
    result = comm("backends")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    for scheme, info in comm_core.backends().items():
        assert rows[scheme][:3] == [scheme, info.distribution, info.version]
    document = json.loads(comm("backends", "--json").stdout)
    assert [b["scheme"] for b in document["backends"]] == sorted(comm_core.backends())


# -- plugins extend the command ----------------------------------------------------------------

_LIGHT_COMMANDS = """
import contextlib, io, sys
from comm_core.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["backends"])
    main(["backends", "--json"])
    for argv in (["--help"], ["serve", "--help"], ["ping", "--help"], ["doctor", "--help"]):
        with contextlib.suppress(SystemExit):
            main(argv)
print(sorted(m for m in ("asyncio", "ssl", "msgpack", "comm_tls._cli") if m in sys.modules))
"""


@needs_tls
def test_help_and_listing_import_no_ssl() -> None:
    # comm-tls's options are in the help, and loading them imports neither ssl nor asyncio.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _LIGHT_COMMANDS],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_environment(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['comm_tls._cli']"


@needs_tls
@pytest.mark.parametrize("command", ["serve", "ping", "bench", "doctor"])
def test_tls_options_come_from_comm_tls(command: str) -> None:
    result = comm(command, "--help")
    assert result.returncode == 0, result.stderr
    _, _, section = result.stdout.partition("\nTLS options:\n")
    assert section.startswith("  For tls:// (and other encrypted schemes)")
    flags = ["--ca FILE", "--cert FILE", "--key FILE", "--temporary-credentials DIR"]
    flags.append("--no-client-cert" if command == "serve" else "--no-check-hostname")
    for flag in flags:
        assert flag in section
    assert "TLS" not in comm("backends", "--help").stdout


#: A third party's plugin for tcp://, published as a distribution of its own.
AUDIT_PLUGIN = """
import comm_core
from comm_core.cli import DoctorStep, Stage


def _check(context):
    return f"tag {context.options.audit_tag} for {context.host}"


STEP = DoctorStep("audit", _check, Stage.CONNECT)


@comm_core.hookimpl
def comm_cli_add_options(command, parser):
    group = parser.group("Audit options", applies_to="tcp://")
    group.add_option("--audit-tag", metavar="TAG", default="none", help="a tag for the audit")
    if ADD_CA:
        group.add_option("--ca", help="a second --ca")


@comm_core.hookimpl
def comm_cli_connection_args(scheme, server_side, options, notes):
    if scheme != "tcp":
        return None
    if server_side:
        notes.append(f"audit tag: {options.audit_tag}")
    return {}


@comm_core.hookimpl
def comm_cli_doctor_steps(scheme):
    return [STEP] if scheme == "tcp" else None
"""


def _audit_distribution(root: Path, *, add_ca: bool = False) -> Path:
    """``comm-audit``, installed-looking in *root*: a module and its ``.dist-info``."""
    root.mkdir()
    source = f"ADD_CA = {add_ca}\n{AUDIT_PLUGIN}"
    (root / "comm_audit_plugin.py").write_text(source, encoding="utf-8")
    info = root / "comm_audit-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: comm-audit\nVersion: 2.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[comm_core.backends]\naudit = comm_audit_plugin\n", encoding="utf-8"
    )
    return root


@needs_signals
def test_a_third_party_plugin_extends_serve_and_doctor(
    serve: type[Served], tmp_path: Path, closed_port: int
) -> None:
    site = _audit_distribution(tmp_path / "site")
    served = serve("tcp://127.0.0.1:0", "--audit-tag", "blue", path=site)
    served.wait_for(r"^audit tag: blue$")  # its note, printed once listening

    result = comm("doctor", served.address, "--audit-tag", "red", path=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(_doctor_lines(result.stdout)) == [
        "address",
        "backend",
        "name resolution",
        "TCP connect",  # comm-tcp's, then the plugin's in the same stage
        "audit",
        "comm handshake",
        "same host",
    ]
    assert "tag red for 127.0.0.1" in result.stdout
    assert served.stop() == 0

    # Its options with an address it does not serve: the generic error.
    result = comm("ping", "inproc://x", "--audit-tag", "x", path=site)
    assert result.returncode == 2
    assert result.stderr == (
        "comm: error: --audit-tag: Audit options are for tcp://, and inproc:// does not use them\n"
    )


@needs_tls
def test_a_plugin_whose_option_clashes_with_comm_tls(tmp_path: Path) -> None:
    site = _audit_distribution(tmp_path / "site", add_ca=True)
    for args in (["ping", "--help"], ["backends"]):
        result = comm(*args, path=site)
        assert result.returncode == 2
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("comm: error: ")
        assert "comm-audit 2.0 (plugin 'audit')" in line
        assert f"comm-tls {importlib.metadata.version('comm-tls')} (plugin 'tls')" in line
        assert "--ca" in line
