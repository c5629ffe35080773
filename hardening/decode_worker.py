"""Decode hostile streams in a child process, so that a crash fails a test, not pytest.

The receive path runs exactly as :func:`fuzz_targets.receive` runs it (a
:class:`~comm_core.protocol.FrameDecoder` fed in pieces, then a
:class:`~comm_core.protocol.Decoder` on each message; optionally each
decoded message is encoded again, as a relay does), but in a process of
its own: a payload that overflows the C stack kills that process with
SIGSEGV and the parent reports it as an outcome. The child runs under an
address-space limit, so a payload that decodes to gigabytes fails there
with ``MemoryError`` instead of starving the machine.

Protocol (parent to child, on stdin): a JSON line of options, then the
stream's bytes; the child answers with a JSON line on stdout (see
:class:`Result`). ``python decode_worker.py`` is the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["COMM_ERRORS", "DecodeWorker", "Result"]

HERE = Path(__file__).parent
#: The outcomes that are comm's own errors (besides "ok").
COMM_ERRORS = frozenset({"ProtocolError", "MessageTooLargeError", "SerializationError"})
#: The child's address-space limit (RLIMIT_AS): far above what any bound here allows.
MEMORY_LIMIT = 3 * 2**30


@dataclass
class Result:
    """What decoding one stream did."""

    #: "ok", a comm error's class name, "foreign:<class name>" (any other exception),
    #: "hang" (past the alarm), or "died" (the child ended: see ``returncode``).
    outcome: str
    error: str = ""
    #: Seconds the receive path took (time mode), or None.
    seconds: float | None = None
    #: Peak bytes traced while decoding (memory mode), or None.
    peak: int | None = None
    #: Bytes still traced after decoding while the decoders are alive (memory mode).
    held: int | None = None
    messages: int = 0
    serialization_errors: int = 0
    #: Type names of the first decoded messages.
    types: list[str] = field(default_factory=list)
    #: The child's exit status if it died (negative: killed by that signal).
    returncode: int | None = None
    stderr_tail: str = ""

    @property
    def comm_error_or_ok(self) -> bool:
        return self.outcome == "ok" or self.outcome in COMM_ERRORS

    def describe(self) -> str:
        if self.outcome == "died":
            code = self.returncode
            how = (
                f"killed by {signal.Signals(-code).name}"
                if code is not None and code < 0
                else f"exit status {code}"
            )
            return f"the decoding process died ({how}); its stderr ends:\n{self.stderr_tail}"
        return f"{self.outcome}: {self.error}" if self.error else self.outcome


class DecodeWorker:
    """The parent's handle on a decoding child, started on first use and again after
    it dies. Its stderr goes to *stderr_path* (faulthandler writes a crash's Python
    stack there)."""

    def __init__(self, stderr_path: Path, memory_limit: int = MEMORY_LIMIT) -> None:
        self.stderr_path = stderr_path
        self.memory_limit = memory_limit
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        #: How many children were started (one more after each death).
        self.started = 0

    def start(self) -> None:
        """Start the child now (a test's descriptor count then includes its pipes)."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.close()
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 (held until close())
        self._proc = subprocess.Popen(
            [sys.executable, str(HERE / "decode_worker.py"), str(self.memory_limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=HERE,
        )
        self.started += 1
        return self._proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _tail(self) -> str:
        """The start of what the child wrote to stderr (faulthandler's report: the error,
        then the innermost frames)."""
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        more = f"\n  ... ({len(lines) - 8} more lines)" if len(lines) > 8 else ""
        return "\n".join(lines[:8]) + more

    def run(
        self,
        stream: bytes,
        *,
        mode: str = "time",
        deserialize: bool = True,
        relay: bool = False,
        chunk: int = 0,
        max_message_size: int = 64 * 2**20,
        first_message_limit: int | None = None,
        alarm: float = 10.0,
    ) -> Result:
        """Feed *stream* (preamble included) to a receive path in the child.

        *mode* ``"time"`` measures seconds, ``"memory"`` the traced peak and
        what stays held. *chunk* feeds it in pieces of that size (0: at once).
        *relay* encodes each decoded message again, as a relay writing it on
        (with ``deserialize=False``: custom values as :class:`Serialized`).
        The child gives up after *alarm* seconds ("hang"); if it does not
        answer within *alarm* + 20 s (stuck in C code), it is killed ("hang").
        """
        proc = self._proc if self._proc is not None and self._proc.poll() is None else None
        if proc is None:
            proc = self._start()
        assert proc.stdin is not None
        assert proc.stdout is not None
        options = {
            "mode": mode,
            "deserialize": deserialize,
            "relay": relay,
            "chunk": chunk,
            "max_message_size": max_message_size,
            "first_message_limit": first_message_limit,
            "alarm": alarm,
            "size": len(stream),
        }
        try:
            proc.stdin.write(json.dumps(options).encode() + b"\n")
            proc.stdin.write(stream)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died already: the read below says how
        ready, _, _ = select.select([proc.stdout], [], [], alarm + 20)
        if not ready:
            proc.kill()
            proc.wait()
            self._start()  # a fresh child: the same descriptors open as before
            return Result("hang", f"no answer within {alarm + 20:g}s (stuck outside Python?)")
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            tail = self._tail()
            self._start()
            return Result("died", returncode=code, stderr_tail=tail)
        return Result(**json.loads(line))


# -- the child ----------------------------------------------------------------------------------


def _decode(stream: bytes, options: dict[str, Any]) -> dict[str, Any]:
    from comm_core import ProtocolError, SerializationError
    from comm_core.protocol import Decoder, FrameDecoder, encode_message
    from fuzz_targets import Hang, no_hang

    out: dict[str, Any] = {"outcome": "ok", "messages": 0, "serialization_errors": 0}
    types: list[str] = []
    memory = options["mode"] == "memory"
    frames_seen: list[list[Any]] = []
    decoded: list[Any] = []
    if memory:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        with no_hang(options["alarm"]):
            decoder = FrameDecoder(
                frames_seen.append,
                max_message_size=options["max_message_size"],
                first_message_limit=options["first_message_limit"],
                peer="hostile",
            )
            body_decoder = Decoder(deserialize=options["deserialize"])
            view = memoryview(stream)
            chunk = options["chunk"] or len(stream) or 1
            while view.nbytes:
                decoder.feed(view[:chunk])
                view = view[chunk:]
                pending = frames_seen[:]
                frames_seen.clear()
                for frames in pending:
                    try:
                        msg = body_decoder.decode(frames)
                    except SerializationError:
                        out["serialization_errors"] += 1
                        continue
                    if options["relay"]:
                        try:  # write it on, as a relay does (custom values as read)
                            encode_message(msg)
                        except SerializationError:
                            out["serialization_errors"] += 1
                    decoded.append(msg)
                del pending
    except (ProtocolError, SerializationError) as exc:
        out["outcome"] = type(exc).__name__
        out["error"] = str(exc)[:300]
    except Hang as exc:
        out["outcome"] = "hang"
        out["error"] = str(exc)
    except BaseException as exc:  # anything else is a finding
        out["outcome"] = f"foreign:{type(exc).__name__}"
        out["error"] = f"{exc!s:.300}"
    seconds = time.perf_counter() - start
    if memory:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["peak"], out["held"] = peak, current
    else:
        out["seconds"] = seconds
    out["messages"] = len(decoded)
    types = [type(m).__name__ for m in decoded[:5]]
    out["types"] = types
    del decoded, frames_seen
    return out


def main() -> None:
    import faulthandler
    import resource

    faulthandler.enable()
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else MEMORY_LIMIT
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    import comm_core.protocol  # noqa: F401 (imported before the first measurement)

    while True:
        line = stdin.readline()
        if not line:
            return
        options = json.loads(line)
        stream = stdin.read(options["size"])
        result = _decode(stream, options)
        del stream
        stdout.write(json.dumps(result).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(HERE))
    main()
