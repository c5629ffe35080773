"""Fixtures of the hardening suite: its size (CI or soak), transports, figures and leak checks.

``--soak`` is the long mode: counts and durations are multiplied by
``--soak-factor`` (default 10) and the coverage-guided fuzzer runs. Every
figure a test measures goes through :func:`record` into
``hardening/results/figures-{ci,soak}.{json,md}`` at the end of the run
(``figures-ci-uvloop.*`` and so on with ``--comm-loop=uvloop``).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import sys
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import comm_core
from comm_core import Comm
from comm_core.testing import open_comms, open_listeners
from comm_core.testing import plugin as _plugin
from support import FIGURES, Transport, fd_count

RESULTS = Path(__file__).parent / "results"

# Each test attacks the transport it names: a tcp:// listener's good clients stay on TCP
# rather than take its same-host Unix socket (selection has tests of its own, and the
# arena its hostile peers in test_arena_live.py). Child processes inherit it.
os.environ.setdefault("COMM_SAME_HOST", "0")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hardening")
    group.addoption(
        "--soak",
        action="store_true",
        help="the long mode: bigger counts, longer durations, the coverage-guided fuzzer",
    )
    group.addoption(
        "--soak-factor",
        type=int,
        default=10,
        help="how much bigger and longer --soak makes counts and durations (default 10)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # 1,000 comms in one process need two descriptors each, and then some.
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long mode only: run with --soak")
    for item in items:
        if item.get_closest_marker("soak"):
            item.add_marker(skip)


class Scale:
    """The size of this run: CI (bounded) or soak (``--soak``)."""

    def __init__(self, soak: bool, factor: int) -> None:
        self.soak = soak
        self.factor = factor if soak else 1
        self.mode = "soak" if soak else "ci"

    def count(self, ci: int) -> int:
        """*ci* in CI mode, *ci* times the soak factor in the long mode."""
        return ci * self.factor

    def seconds(self, ci: float) -> float:
        return ci * self.factor


@pytest.fixture(scope="session")
def scale(pytestconfig: pytest.Config) -> Scale:
    return Scale(
        bool(pytestconfig.getoption("--soak")), int(pytestconfig.getoption("--soak-factor"))
    )


def _format(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not FIGURES:
        return
    soak = bool(session.config.getoption("--soak"))
    loop = str(session.config.getoption("--comm-loop"))
    mode = ("soak" if soak else "ci") + ("" if loop == "asyncio" else f"-{loop}")
    RESULTS.mkdir(exist_ok=True)
    about = {
        "mode": mode,
        "event_loop": loop,
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "exit_status": int(exitstatus),
    }
    (RESULTS / f"figures-{mode}.json").write_text(
        json.dumps({"run": about, "figures": FIGURES}, indent=2) + "\n"
    )
    lines = [f"# Hardening figures ({mode} mode)", ""]
    lines += [f"- {key}: {value}" for key, value in about.items()]
    lines += ["", "| figure | value | unit | context |", "| --- | ---: | --- | --- |"]
    for fig in FIGURES:
        context = ", ".join(
            f"{k}={v}" for k, v in fig.items() if k not in {"name", "value", "unit"}
        )
        lines.append(f"| {fig['name']} | {_format(fig['value'])} | {fig['unit']} | {context} |")
    (RESULTS / f"figures-{mode}.md").write_text("\n".join(lines) + "\n")


# -- transports ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_transport() -> Transport:
    from comm_tls import Security

    security = Security.temporary()
    return Transport("tls", {"security": security}, client_context=security.client_context)


@pytest.fixture(params=["tcp", "tls"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each test that takes it runs over tcp and over tls."""
    if request.param == "tcp":
        return Transport("tcp")
    tls: Transport = request.getfixturevalue("tls_transport")
    return tls


# -- settings and leak checks ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Default settings (no COMM_* variables), with fast connect retries."""
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    with comm_core.configure(retry_delay_min=0.001, retry_delay_max=0.05):
        yield


_warmed_up: set[str] = set()


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a comm open or a listener running, lets one be collected
    open, or leaks descriptors.

    Each async test runs in an event loop of its own that is closed before
    this check, so descriptors must be back exactly where they were. (The
    async test plugin already fails a test that leaves tasks running.)
    """
    # A loop implementation may open descriptors of its own once per process (uvloop
    # opens a pipe): make that happen before counting.
    loop = _plugin.loop_name(request.node)
    if loop not in _warmed_up:
        _warmed_up.add(loop)
        _plugin.loop_factory(loop)().close()
    gc.collect()
    before: weakref.WeakSet[Comm] = weakref.WeakSet(open_comms(collect=False))
    listeners = set(map(id, open_listeners()))
    fds = fd_count() if sys.platform.startswith("linux") else None
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        leaked = [comm for comm in open_comms() if comm not in before]
    problems = [f"left open: {comm!r}" for comm in leaked]
    problems += [f"left running: {lst!r}" for lst in open_listeners() if id(lst) not in listeners]
    problems += [f"{w.message}" for w in caught if issubclass(w.category, ResourceWarning)]
    for comm in leaked:
        with contextlib.suppress(Exception):
            comm.abort()
    if fds is not None and fd_count() > fds:
        problems.append(f"file descriptors: {fds} before the test, {fd_count()} after")
    if problems:
        pytest.fail("the test leaked:\n  " + "\n  ".join(problems), pytrace=False)
