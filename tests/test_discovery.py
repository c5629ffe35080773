"""Transports are found through the entry point metadata of installed distributions."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import comm_core

HERE = Path(__file__).parent

#: (scheme, import name, distribution) of comm's own transports.
TRANSPORTS = [
    ("inproc", "comm_inproc", "comm-inproc"),
    ("tcp", "comm_tcp", "comm-tcp"),
    ("tls", "comm_tls", "comm-tls"),
]


def test_the_unknown_scheme_advice_knows_every_transport_of_the_repository() -> None:
    # An unknown scheme's error names a distribution only from this list (no made-up
    # comm-<scheme>, which anyone could publish): each of comm's transports must be in it.
    from comm_core._registry import COMM_DISTRIBUTIONS

    here = {
        p.name
        for p in (HERE.parent / "packages").iterdir()
        if '[project.entry-points."comm_core.backends"]' in (p / "pyproject.toml").read_text()
    }  # comm's transports: not comm-core, nor comm-dask (which serves Dask's group)
    for scheme, info in comm_core.backends().items():
        if info.distribution in here:
            assert COMM_DISTRIBUTIONS.get(scheme) == info.distribution, scheme
    assert here <= set(COMM_DISTRIBUTIONS.values())


def _run_python(code: str, **env: str) -> str:
    """Run *code* in a fresh interpreter and return its standard output."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_inproc_is_installed() -> None:
    # The integration tests run with every package installed: inproc is never skipped.
    assert importlib.util.find_spec("comm_inproc") is not None


@pytest.mark.parametrize(("scheme", "module", "distribution"), TRANSPORTS, ids=lambda v: v)
def test_transport_found_through_its_entry_point(
    scheme: str, module: str, distribution: str
) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{distribution} is not installed")
    info = comm_core.backends()[scheme]
    assert info.distribution == distribution
    assert info.version == importlib.metadata.version(distribution)
    assert info.plugin == scheme
    assert info.backend_class.__module__.split(".")[0] == module
    assert isinstance(comm_core.get_backend(scheme), info.backend_class)
    [entry_point] = [
        ep
        for ep in importlib.metadata.entry_points(group=comm_core.ENTRY_POINT_GROUP)
        if ep.name == scheme
    ]
    assert entry_point.dist is not None
    assert entry_point.dist.name == distribution
    assert entry_point.value == f"{module}._plugin"


def test_comm_cores_entry_point_reader_agrees_with_importlib() -> None:
    from comm_core import _entrypoints

    ours = _entrypoints.entry_points(comm_core.ENTRY_POINT_GROUP)
    theirs = importlib.metadata.entry_points(group=comm_core.ENTRY_POINT_GROUP)
    assert sorted((ep.name, ep.value, ep.distribution, ep.version) for ep in ours) == sorted(
        (ep.name, ep.value, ep.dist.name, ep.dist.version) for ep in theirs if ep.dist
    )
    assert {ep.name for ep in ours} >= {"tcp", "inproc"}


def test_finding_tcp_imports_no_importlib_metadata() -> None:
    out = _run_python(
        "import sys, comm_core; comm_core.get_backend('tcp'); "
        "print(sorted(m for m in ('importlib.metadata', 'email', 'zipfile', 'pickle') "
        "if m in sys.modules))"
    )
    assert out.strip() == "[]"


_LIGHT_PROBE = """
import json, sys
import comm_core

lookup = sys.argv[1]
if lookup == "backends":
    comm_core.backends()  # every installed plugin and backend class
else:
    comm_core.get_backend(lookup)
heavy = sorted(m for m in ("asyncio", "ssl", "msgpack") if m in sys.modules)

import asyncio

async def echo(comm):
    async for msg in comm:
        await comm.write(msg)

async def round_trip():
    async with comm_core.listen("tcp://127.0.0.1:0", echo) as listener:
        async with await comm_core.connect(listener.contact_address, timeout=10) as comm:
            await comm.write({"op": "ping", "data": b"x" * 100_000})
            reply = await comm.read()
    return [reply["op"], len(reply["data"])]

print(json.dumps({"heavy": heavy, "reply": asyncio.run(round_trip())}))
"""


@pytest.mark.parametrize("lookup", ["tcp", "tls", "inproc", "backends"])
def test_looking_up_a_backend_imports_no_asyncio_ssl_or_msgpack(lookup: str) -> None:
    # With every transport installed, importing comm_core and looking up one backend
    # (or listing them all, which imports every backend class) imports none of them:
    # the first connect() or listen() does, and then works.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _LIGHT_PROBE, lookup],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"heavy": [], "reply": ["ping", 100_000]}


def test_no_scheme_is_claimed_twice() -> None:
    assert dict(comm_core.get_registry().conflicts()) == {}


_PROBE = """
import json, sys
import comm_core
transports = ("comm_inproc", "comm_tcp", "comm_tls")
before = sorted(m for m in sys.modules if m.split(".")[0] in transports)
lazy = comm_core._registry._default is None
testing = "comm_core.testing" in sys.modules
schemes = sorted(comm_core.backends())
after = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in transports})
print(json.dumps({"before": before, "lazy": lazy, "testing": testing,
                  "schemes": schemes, "after": after}))
"""


def test_import_comm_core_imports_no_transport() -> None:
    result = json.loads(_run_python(_PROBE))
    assert result["before"] == []
    assert result["lazy"] is True
    assert result["testing"] is False
    # The first use of the registry loads the installed plugins (so the probe can fail).
    assert "inproc" in result["schemes"]
    assert "comm_inproc" in result["after"]


# -- a third party's backend, built and installed for real -----------------------------


def _installer(target: Path, project: Path) -> list[str]:
    """The command that installs *project* into *target*, offline, with pip or else uv."""
    options = ["--no-deps", "--no-index", "--no-build-isolation", "--target", str(target)]
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "install", "-q", *options, str(project)]
    uv = shutil.which("uv")
    if uv is not None:  # a virtualenv made by uv has no pip
        return [uv, "pip", "install", "-q", "--python", sys.executable, *options, str(project)]
    pytest.fail("neither pip nor uv is available to install the third-party distribution")


_THIRD_PARTY_PROBE = """
import asyncio, json
import comm_core

async def echo(comm):
    async for msg in comm:
        await comm.write(msg)

async def main():
    async with comm_core.listen("thirdparty://", echo) as listener:
        async with await comm_core.connect(listener.contact_address, timeout=10) as comm:
            replies = []
            for msg in ("ping", {"n": 1}, [1, 2, 3]):
                await comm.write(msg)
                replies.append(await comm.read())
            protocol = comm.handshake_info["protocol"]
        return listener.contact_address, replies, protocol

info = comm_core.backends()["thirdparty"]
address, replies, protocol = asyncio.run(main())
print(json.dumps({
    "distribution": info.distribution,
    "version": info.version,
    "class": f"{info.backend_class.__module__}.{info.backend_class.__qualname__}",
    "address": address,
    "replies": replies,
    "protocol": protocol,
    "schemes": sorted(comm_core.backends()),
}))
"""


def test_third_party_backend_distribution(tmp_path: Path) -> None:
    project = tmp_path / "comm-thirdparty"
    shutil.copytree(
        HERE / "thirdparty_backend", project, ignore=shutil.ignore_patterns("__pycache__")
    )
    site = tmp_path / "site"
    install = subprocess.run(_installer(site, project), capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    dist_info = site / "comm_thirdparty-0.1.0.dist-info"
    assert "thirdparty = comm_thirdparty._plugin" in (dist_info / "entry_points.txt").read_text()
    assert (dist_info / "INSTALLER").is_file()  # written by the installer, not by us

    # Not on the path: comm does not find it.
    assert "thirdparty" not in comm_core.backends()

    pythonpath = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = json.loads(_run_python(_THIRD_PARTY_PROBE, PYTHONPATH=pythonpath))
    assert result["distribution"] == "comm-thirdparty"
    assert result["version"] == "0.1.0"
    assert result["class"] == "comm_thirdparty._backend.ThirdPartyBackend"
    assert result["address"].startswith("thirdparty://")
    assert result["replies"] == ["ping", {"n": 1}, [1, 2, 3]]
    assert result["protocol"] == comm_core.PROTOCOL_VERSION
    assert "inproc" in result["schemes"]  # the installed transports are still there


_DASK_SHAPED_PROBE = """
import json
import comm_core

registry = comm_core.get_registry()
errors = []
for scheme in ("thirdparty", "tcp"):
    try:
        comm_core.get_backend(scheme)
    except comm_core.PluginError as exc:
        errors.append(str(exc))
print(json.dumps({
    "errors": errors,
    "broken": [[b.plugin, b.entry_point, b.distribution, b.version] for b in registry.broken()],
    "others": sorted(registry.backends(strict=False)),
}))
"""


def test_entry_point_with_dasks_shape(tmp_path: Path) -> None:
    # A distribution whose entry point names its backend class, as Dask's
    # distributed.comm.backends entry points do, instead of a plugin module.
    project = tmp_path / "comm-thirdparty"
    shutil.copytree(
        HERE / "thirdparty_backend", project, ignore=shutil.ignore_patterns("__pycache__")
    )
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    plugin_line = 'thirdparty = "comm_thirdparty._plugin"'
    assert plugin_line in text
    value = "comm_thirdparty._backend:ThirdPartyBackend"
    pyproject.write_text(text.replace(plugin_line, f'thirdparty = "{value}"'), encoding="utf-8")
    site = tmp_path / "site"
    install = subprocess.run(_installer(site, project), capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr

    pythonpath = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = json.loads(_run_python(_DASK_SHAPED_PROBE, PYTHONPATH=pythonpath))
    # Every lookup says what is wrong, not "no comm backend for scheme 'thirdparty'".
    assert len(result["errors"]) == 2
    for message in result["errors"]:
        assert message.startswith(
            f"entry point 'thirdparty' = {value!r} of distribution comm-thirdparty 0.1.0 "
            "(group 'comm_core.backends') provides no comm hook: it names the backend class "
            "comm_thirdparty._backend.ThirdPartyBackend"
        )
        assert "@comm_core.hookimpl def comm_register_backends(): return [MyBackend]" in message
    assert result["broken"] == [["thirdparty", value, "comm-thirdparty", "0.1.0"]]
    assert {"inproc", "tcp"} <= set(result["others"])

    environment = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONIOENCODING": "utf-8"}
    listing = subprocess.run(
        [sys.executable, "-W", "error", "-m", "comm_core", "backends"],
        capture_output=True,
        text=True,
        env={k: v for k, v in environment.items() if not k.startswith("COMM_")},
        timeout=120,
    )
    assert listing.returncode == 2
    assert "tcp " in listing.stdout.partition("Broken plugins:")[0]
    assert f"thirdparty = {value}" in listing.stdout.partition("Broken plugins:")[2]
    assert listing.stderr.startswith("comm: error: entry point 'thirdparty'")
