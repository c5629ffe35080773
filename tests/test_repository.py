"""What holds the repository's distributions together (see docs/development.rst).

One version for all, requirements between them bounded by it, one license text
in each, a changelog that files every entry under the distribution it
concerns, and memory-heavy tests that run only when asked. The built wheels
and sdists are checked by ``nox -s build`` (``tests/distributions``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest requires tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(path.parent.name for path in ROOT.glob("packages/*/pyproject.toml"))
#: The transports whose tests include some marked ``large``.
LARGE = ["comm-tcp", "comm-tls"]


def _project(name: str) -> dict[str, object]:
    with open(ROOT / "packages" / name / "pyproject.toml", "rb") as file:
        project: dict[str, object] = tomllib.load(file)["project"]
    return project


def _version(name: str) -> str:
    module = name.replace("-", "_")
    text = (ROOT / "packages" / name / "src" / module / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, f"no __version__ in {module}/_version.py"
    return match[1]


def test_every_distribution_has_the_same_version() -> None:
    versions = {name: _version(name) for name in PACKAGES}
    assert len(set(versions.values())) == 1, versions


@pytest.mark.parametrize("name", PACKAGES)
def test_requirements_between_distributions_run_from_this_version_to_the_next_minor(
    name: str,
) -> None:
    version = _version(name)
    major, minor = (int(part) for part in version.split(".")[:2])
    bound = f">={version},<{major}.{minor + 1}"
    dependencies = _project(name)["dependencies"]
    assert isinstance(dependencies, list)
    internal = {}
    for line in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(.*)", line)
        assert match, line
        if match[1] in PACKAGES:
            internal[match[1]] = match[2]
    assert all(spec == bound for spec in internal.values()), internal
    if name != "comm-core":
        assert "comm-core" in internal


@pytest.mark.parametrize("name", PACKAGES)
def test_every_distribution_carries_the_license(name: str) -> None:
    assert (ROOT / "packages" / name / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    project = _project(name)
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]


def test_the_readme_lists_every_distribution() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Packages", 1)[1].split("\n\n", 2)[1]
    listed = re.findall(r"^\| \[(comm-[a-z0-9-]+)\]\(packages/\1\) \|", table, re.M)
    assert listed == PACKAGES


def test_the_changelog_files_every_entry_under_a_distribution() -> None:
    """Under each release heading, entries sit under "<distribution> <release version>"
    headings (or "Documentation", or "Development"), never directly under the release."""
    lines = (ROOT / "docs" / "changelog.rst").read_text().splitlines()
    headings = {
        index - 1: (lines[index - 1], underline[0])
        for index, underline in enumerate(lines)
        if index > 0
        and re.fullmatch(r"([=~^-])\1+", underline)
        and len(underline) == len(lines[index - 1])
        and lines[index - 1].strip()
    }
    release = None
    section = None
    releases = 0
    for index, line in enumerate(lines):
        if index in headings:
            title, level = headings[index]
            if level == "-":
                match = re.fullmatch(r"(\d+\.\d+\.\d+) \((unreleased|\d{4}-\d\d-\d\d)\)", title)
                assert match, f"release heading {title!r}"
                release, section, releases = match[1], None, releases + 1
            elif level == "~":
                assert release is not None, f"{title!r} is outside a release"
                names = "|".join(map(re.escape, PACKAGES))
                assert re.fullmatch(
                    rf"({names}) {re.escape(release)}|Documentation|Development", title
                ), (
                    f"{title!r} under release {release}: name a distribution and the release's "
                    "version, or say Documentation or Development"
                )
                section = title
        elif line.startswith("* ") and release is not None:
            assert section is not None, f"entry outside a distribution's heading: {line!r}"
    assert releases > 0


def _large_tests(name: str, *, enabled: bool) -> subprocess.CompletedProcess[str]:
    """pytest's plan for the tests marked ``large`` in package *name*."""
    env = {key: value for key, value in os.environ.items() if key != "COMM_LARGE_TESTS"}
    if enabled:
        env["COMM_LARGE_TESTS"] = "1"
    command = [sys.executable, "-m", "pytest", "-c", "pyproject.toml", "-p", "no:cacheprovider"]
    command += ["-m", "large", "--setup-plan", "-rs", "tests"]
    return subprocess.run(
        command,
        cwd=ROOT / "packages" / name,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("name", LARGE)
def test_large_tests_run_only_when_asked(name: str) -> None:
    """Without COMM_LARGE_TESTS=1 the tests marked ``large`` (messages above 2 GiB, about
    4.5 GB of memory) are skipped, saying how to run them; with it they are planned."""
    default = _large_tests(name, enabled=False)
    assert default.returncode == 0, default.stdout + default.stderr
    assert re.search(r"\b\d+ skipped\b", default.stdout), default.stdout
    assert "set COMM_LARGE_TESTS=1 to run it" in default.stdout
    assert "SETUP" not in default.stdout

    asked = _large_tests(name, enabled=True)
    assert asked.returncode in (0, 5), asked.stdout + asked.stderr
    assert "skipped" not in asked.stdout, asked.stdout
    assert "test_message_above_2_gib_round_trip" in asked.stdout
