"""comm-unix's part of the ``comm`` command: the ``unix connect`` and ``same host`` steps
of ``comm doctor``.

Reached through the ``comm_cli_doctor_steps`` hook of :mod:`comm_unix._plugin`;
socket is imported only when the step runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core.cli import DoctorStep, Stage, StepFailed

if TYPE_CHECKING:
    from comm_core.cli import DoctorContext

__all__ = ["SAME_HOST", "UNIX_CONNECT", "doctor_steps"]


def _connect(context: DoctorContext) -> str:
    """Connect a plain Unix socket; say who listens there, or why nobody can be reached."""
    import socket
    import time

    from comm_unix._address import check_path, socket_address
    from comm_unix._credentials import own_uid, peer_credentials

    path = check_path(context.location, listening=False)
    serve = f"`{context.serve_command()}` starts one"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(context.timeout)
    start = time.perf_counter()
    try:
        sock.connect(socket_address(path))
    except FileNotFoundError as exc:
        sock.close()
        raise StepFailed(f"no socket at {path}", f"is a listener running? {serve}") from exc
    except PermissionError as exc:
        sock.close()
        raise StepFailed(
            f"permission denied: {path} or a directory above it is not open to this user",
            "run as a user that may open it, or widen the permissions of the socket's directory",
        ) from exc
    except ConnectionRefusedError as exc:
        sock.close()
        where = "no socket has that name" if path.startswith("@") else "a socket file left behind"
        raise StepFailed(f"nobody listens at {path} ({where})", serve) from exc
    except OSError as exc:
        sock.close()
        raise StepFailed(
            f"connecting to {path} failed: {exc.strerror or exc}", "is the listener overloaded?"
        ) from exc
    elapsed = (time.perf_counter() - start) * 1e3
    credentials = peer_credentials(sock)
    if credentials is None:
        context.sock = sock
        return f"connected in {elapsed:.2f} ms (this OS does not say who listens)"
    who = (
        f"pid {credentials.pid}, uid {credentials.uid}"
        if credentials.pid
        else (f"uid {credentials.uid}")
    )
    if credentials.uid != own_uid():
        sock.close()
        raise StepFailed(
            f"the listener ({who}) runs as another user than this one (uid {own_uid()}): "
            "same_uid, the default, refuses it",
            f"run as uid {credentials.uid}, or connect from a program with same_uid=False "
            "(and listen with same_uid=False for the listener to accept you)",
        )
    context.sock = sock  # comm doctor closes it before the comm handshake
    return f"connected in {elapsed:.2f} ms to the listener ({who}, this user)"


#: The step, at the stage where comm-tcp and comm-tls open their connection.
UNIX_CONNECT = DoctorStep("unix connect", _connect, Stage.CONNECT)


#: What a dialer keeps when it takes no same-host path, by the scheme it dialled.
_KEPT = {"tcp": "TCP", "tls": "TLS", "ws": "WebSocket", "wss": "WebSocket over TLS"}


def _same_host(context: DoctorContext) -> str:
    """Which path a ``connect()`` to a tcp://, tls://, ws:// or wss:// address takes from
    here, and why."""
    import asyncio
    import logging

    import comm_core
    from comm_core import selection

    reasons: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reasons.append(record.getMessage())

    if not comm_core.get_setting("same_host"):
        return "off here (the same_host setting, COMM_SAME_HOST): connect() dials the address"
    args = context.connection_args()

    async def probe() -> tuple[str, dict[str, object], dict[str, object]]:
        comm = await comm_core.connect(context.address, timeout=context.timeout, **args)
        try:
            return comm.peer_address, dict(comm.extra_info), dict(comm.handshake_info)
        finally:
            await comm.close()

    logger = logging.getLogger("comm_unix.select")
    handler = Collect(logging.DEBUG)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    selection.forget_paths(context.address)  # judge afresh, not from memory
    try:
        peer, info, handshake = asyncio.run(probe())
    except comm_core.CommError as exc:
        raise StepFailed(f"connect() failed: {exc}", "see the comm handshake step") from exc
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    kept = _KEPT.get(context.address.partition("://")[0], "the address given")
    if info.get("path") == "unix":
        token = " behind the token its TLS greeting gave" if "TLS" in kept else ""
        return (
            f"{context.arrow} {peer}: the listener's own Unix socket (pid {info['peer_pid']})"
            f"{token}"
        )
    if not any(key.startswith("same_host_") for key in handshake):
        return (
            "the listener offers no same-host path (another comm version, a listener with "
            f"same_host=False or require_encryption): {kept}"
        )
    if reasons:
        why = reasons[-1].split(": kept: ", 1)[-1]
    elif comm_core.get_setting("require_encryption"):
        why = "require_encryption is on here, and the Unix socket does not encrypt"
    else:
        why = "another host"
    return f"{kept}: the listener's Unix socket was not taken: {why}"


#: Which path ``connect()`` takes to a tcp://, tls://, ws:// or wss:// address (after the
#: comm handshake step).
SAME_HOST = DoctorStep("same host", _same_host, Stage.HANDSHAKE + 50)


def doctor_steps(scheme: str) -> list[DoctorStep] | None:
    """``comm doctor``'s steps for *scheme*: ``unix connect`` for ``unix://``, ``same
    host`` for ``tcp://``, ``tls://``, ``ws://`` and ``wss://``."""
    if scheme == "unix":
        return [UNIX_CONNECT]
    if scheme in ("tcp", "tls", "ws", "wss"):
        return [SAME_HOST]
    return None
