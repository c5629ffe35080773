"""The ``comm`` command with ws:// and wss://: comm-tls's TLS options configure wss, and
``comm bench`` measures wss in one process with throwaway credentials."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import comm_core
from comm_core.cli import CLIError, build_parser, connection_args
from comm_tls import Security


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def args_for(*argv: str, server_side: bool = False, **options: Any) -> dict[str, Any]:
    parsed = parse(*argv)
    backend = comm_core.get_backend(comm_core.parse_address(parsed.address)[0])
    return connection_args(parsed, backend, server_side=server_side, **options)


def test_ws_needs_no_options() -> None:
    assert args_for("ping", "ws://127.0.0.1:1/comm") == {}


def test_tls_options_are_for_wss_not_ws() -> None:
    with pytest.raises(CLIError, match=r"--ca: TLS options .* ws:// does not use them"):
        args_for("ping", "ws://127.0.0.1:1", "--ca", "ca.pem")


def test_tls_options_configure_wss(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    served = args_for(
        "serve", "wss://127.0.0.1:0/comm", "--temporary-credentials", str(creds), server_side=True
    )
    assert isinstance(served["security"], Security)
    dialled = args_for("ping", "wss://127.0.0.1:1/comm", "--temporary-credentials", str(creds))
    assert isinstance(dialled["security"], Security)
    assert Path(dialled["security"].ca).read_text() == served["security"].ca


def bench_args(*argv: str) -> dict[str, Any]:
    """The connection arguments ``comm bench wss ...`` uses, measuring in one process."""
    options = parse("bench", "wss", *argv)
    backend = comm_core.get_backend("wss")
    return connection_args(options, backend, server_side=True, in_process=True)


def test_bench_measures_wss_in_process_with_throwaway_credentials() -> None:
    [(key, security)] = bench_args().items()
    assert key == "security"
    assert isinstance(security, Security)
    assert security.cert is not None  # a listener's credentials, for both ends


def test_bench_over_wss_takes_the_tls_options_given(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    args_for("serve", "wss://127.0.0.1:0", "--temporary-credentials", str(creds), server_side=True)
    [(key, security)] = bench_args("--temporary-credentials", str(creds)).items()
    assert key == "security"
    assert security.ca == str(creds / "ca.pem")  # comm-tls's, from the files given


def test_comm_backends_lists_ws_and_wss() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "comm_core", "backends"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert lines["ws"][1] == "comm-ws"
    assert lines["wss"][1:2] == ["comm-ws"]
    assert lines["wss"][-1] == "encrypted"


def test_comm_ping_over_ws() -> None:
    """``comm serve`` and ``comm ping`` over ws:// with a path, as a user runs them."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "comm_core", "serve", "ws://127.0.0.1:0/comm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        address = ""
        for _ in range(10):  # bounded: the lines before the contact address
            line = serve.stdout.readline()
            if line.startswith("contact address:"):
                address = line.split()[-1]
                break
        assert address.startswith("ws://127.0.0.1:")
        assert address.endswith("/comm")
        ping = subprocess.run(
            [sys.executable, "-m", "comm_core", "ping", address, "--count", "3", "-i", "0.01"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "3 sent, 3 received" in ping.stdout
    finally:
        serve.terminate()
        serve.communicate(timeout=30)
