"""What a release would publish: the wheels and sdists that ``nox -s build`` puts in dist/.

Every distribution of ``packages/`` must be there, once as a wheel and once as
an sdist, and all of them must agree: one license (with its text), one
classifier style, the same project URLs, ``py.typed`` in every wheel, one
version, and requirements between comm's distributions bounded as the version
policy says (docs/development.rst). ``twine check`` runs beside these tests.
"""

from __future__ import annotations

import ast
import contextlib
import email.parser
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(path.parent.name for path in ROOT.glob("packages/*/pyproject.toml"))
LICENSE = (ROOT / "LICENSE").read_bytes()
LICENSE_EXPRESSION = "BSD-3-Clause"
#: The labels of the project URLs that every distribution has.
URL_LABELS = ["Homepage", "Documentation", "Source", "Changelog", "Issues"]


def _tested_pythons() -> list[str]:
    """The Python versions that noxfile.py tests (its ``PYTHONS``)."""
    match = re.search(r"^PYTHONS = (\[.*?\])$", (ROOT / "noxfile.py").read_text(), re.M)
    assert match, "noxfile.py has no PYTHONS = [...] line"
    versions: list[str] = ast.literal_eval(match[1])
    return versions


def _source_version(name: str) -> str:
    """The version that ``packages/<name>/src/<module>/_version.py`` declares."""
    module = name.replace("-", "_")
    text = (ROOT / "packages" / name / "src" / module / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, f"no __version__ in {module}/_version.py"
    return match[1]


@dataclass
class Built:
    """One distribution's two artifacts, read."""

    name: str
    version: str
    wheel: zipfile.ZipFile
    sdist: tarfile.TarFile
    #: The wheel's METADATA.
    metadata: Message
    #: The sdist's PKG-INFO.
    pkg_info: Message

    @property
    def module(self) -> str:
        return self.name.replace("-", "_")

    @property
    def sdist_root(self) -> str:
        return f"{self.module}-{self.version}"

    def sdist_file(self, path: str) -> bytes:
        member = self.sdist.extractfile(f"{self.sdist_root}/{path}")
        assert member is not None, f"{path} is not a file in the sdist of {self.name}"
        return member.read()


@pytest.fixture(scope="session")
def dist_dir() -> Path:
    where = os.environ.get("COMM_DIST_DIR")
    if not where:
        pytest.fail(
            "these tests check built distributions: run `nox -s build`, or set "
            "COMM_DIST_DIR to a directory that holds the wheels and sdists",
            pytrace=False,
        )
    return Path(where)


@pytest.fixture(scope="session")
def built(dist_dir: Path) -> Iterator[dict[str, Built]]:
    """Every distribution's artifacts, by name."""
    with contextlib.ExitStack() as stack:
        yield {name: _read(name, dist_dir, stack) for name in PACKAGES}


def _read(name: str, dist_dir: Path, stack: contextlib.ExitStack) -> Built:
    """Open and parse the artifacts of distribution *name*."""
    version = _source_version(name)
    module = name.replace("-", "_")
    wheel_path = dist_dir / f"{module}-{version}-py3-none-any.whl"
    sdist_path = dist_dir / f"{module}-{version}.tar.gz"
    assert wheel_path.is_file(), f"no wheel of {name} {version} in {dist_dir}"
    assert sdist_path.is_file(), f"no sdist of {name} {version} in {dist_dir}"
    wheel = stack.enter_context(zipfile.ZipFile(wheel_path))
    sdist = stack.enter_context(tarfile.TarFile.open(sdist_path))
    parser = email.parser.Parser()
    metadata = parser.parsestr(wheel.read(f"{module}-{version}.dist-info/METADATA").decode("utf-8"))
    pkg_info_file = sdist.extractfile(f"{module}-{version}/PKG-INFO")
    assert pkg_info_file is not None
    pkg_info = parser.parsestr(pkg_info_file.read().decode("utf-8"))
    return Built(name, version, wheel, sdist, metadata, pkg_info)


def test_dist_holds_one_wheel_and_one_sdist_of_each_distribution_and_nothing_else(
    dist_dir: Path, built: dict[str, Built]
) -> None:
    expected = set()
    for one in built.values():
        expected |= {f"{one.module}-{one.version}-py3-none-any.whl", f"{one.sdist_root}.tar.gz"}
    assert {path.name for path in dist_dir.iterdir()} == expected


def test_names_and_versions_in_the_metadata(built: dict[str, Built]) -> None:
    for one in built.values():
        for metadata in (one.metadata, one.pkg_info):
            assert metadata["Name"] == one.name
            assert metadata["Version"] == one.version


def test_every_distribution_has_the_same_version(built: dict[str, Built]) -> None:
    """The version policy: comm's distributions are versioned and released together."""
    versions = {one.name: one.version for one in built.values()}
    assert len(set(versions.values())) == 1, versions


def test_one_license_with_its_text_in_every_artifact(built: dict[str, Built]) -> None:
    for one in built.values():
        for metadata in (one.metadata, one.pkg_info):
            assert metadata["License-Expression"] == LICENSE_EXPRESSION, one.name
            assert metadata.get_all("License-File") == ["LICENSE"], one.name
            assert metadata["License"] is None, one.name  # the expression replaces it
        dist_info = f"{one.module}-{one.version}.dist-info"
        assert one.wheel.read(f"{dist_info}/licenses/LICENSE") == LICENSE, one.name
        assert one.sdist_file("LICENSE") == LICENSE, one.name
        # The license is said once, by its expression: no license classifier (PEP 639).
        classifiers = one.metadata.get_all("Classifier") or []
        assert not [c for c in classifiers if c.startswith("License ::")], one.name


def test_classifiers_have_one_style(built: dict[str, Built]) -> None:
    """Sorted; the same for every distribution apart from the topics; the Python versions
    those that nox tests; typed; alpha until comm says otherwise."""
    pythons = _tested_pythons()
    common = None
    for one in built.values():
        classifiers = one.metadata.get_all("Classifier") or []
        assert classifiers == sorted(classifiers), one.name
        assert classifiers == (one.pkg_info.get_all("Classifier") or []), one.name
        assert any(c.startswith("Topic :: ") for c in classifiers), one.name
        rest = [c for c in classifiers if not c.startswith("Topic :: ")]
        if common is None:
            common = rest
        assert rest == common, f"{one.name} differs from {next(iter(built))}"
        listed = [
            c.rsplit(" :: ", 1)[1]
            for c in classifiers
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
        ]
        assert listed == pythons, one.name
        assert one.metadata["Requires-Python"] == f">={pythons[0]}", one.name
    assert common is not None
    for needed in [
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Typing :: Typed",
    ]:
        assert needed in common


def _urls(metadata: Message) -> dict[str, str]:
    urls = {}
    for entry in metadata.get_all("Project-URL") or []:
        label, url = (part.strip() for part in entry.split(",", 1))
        urls[label] = url
    return urls


def test_project_urls_are_the_same_apart_from_each_source_directory(
    built: dict[str, Built],
) -> None:
    first = _urls(next(iter(built.values())).metadata)
    home = first["Homepage"]
    assert home.startswith("https://")
    for one in built.values():
        urls = _urls(one.metadata)
        assert list(urls) == URL_LABELS, one.name
        assert urls == _urls(one.pkg_info), one.name
        assert all(url.startswith(home) for url in urls.values()), (one.name, urls)
        assert urls["Source"] == f"{home}/tree/main/packages/{one.name}"
        others = {label: url for label, url in urls.items() if label != "Source"}
        assert others == {label: url for label, url in first.items() if label != "Source"}


def test_every_wheel_is_typed_and_holds_its_package_only(built: dict[str, Built]) -> None:
    for one in built.values():
        names = one.wheel.namelist()
        assert f"{one.module}/py.typed" in names, one.name
        assert "Typing :: Typed" in (one.metadata.get_all("Classifier") or [])
        dist_info = f"{one.module}-{one.version}.dist-info/"
        stray = [n for n in names if not n.startswith((f"{one.module}/", dist_info))]
        assert stray == [], one.name
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")], one.name


def test_requirements_between_comms_distributions_are_bounded(
    built: dict[str, Built],
) -> None:
    """Each requires the others from its own version to below the next minor version
    (``comm-core>=0.1.0,<0.2``): what the version policy promises to work together."""
    ours = {canonicalize_name(name) for name in built}
    for one in built.values():
        version = Version(one.version)
        wanted = SpecifierSet(f">={one.version},<{version.major}.{version.minor + 1}")
        internal = []
        for line in one.metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) not in ours:
                continue
            internal.append(requirement.name)
            assert requirement.marker is None, line
            assert requirement.specifier == wanted, f"{one.name}: {line}"
        if one.name != "comm-core":
            assert "comm-core" in internal, one.name
    tls = built["comm-tls"].metadata.get_all("Requires-Dist") or []
    assert "comm-tcp" in [Requirement(line).name for line in tls]


def test_sdists_hold_no_hidden_or_compiled_files(built: dict[str, Built]) -> None:
    """No ``.gitignore`` (hatchling adds the repository's unless told not to), no caches."""
    for one in built.values():
        names = one.sdist.getnames()
        assert all(n == one.sdist_root or n.startswith(f"{one.sdist_root}/") for n in names)
        parts = [part for n in names for part in n.split("/")[1:]]
        assert not [p for p in parts if p.startswith(".")], one.name
        assert not [p for p in parts if p == "__pycache__" or p.endswith(".pyc")], one.name
        for needed in ["PKG-INFO", "pyproject.toml", "README.md", "LICENSE"]:
            assert f"{one.sdist_root}/{needed}" in names, (one.name, needed)
        assert f"{one.sdist_root}/src/{one.module}/__init__.py" in names


#: A Markdown link or image target, ``[text](target)``, or an autolink, ``<target>``.
_LINKS = re.compile(r"\]\(([^)\s]+)[^)]*\)|<([a-z]+:[^>\s]+)>")


def test_descriptions_link_only_to_absolute_urls(built: dict[str, Built]) -> None:
    """The README is the page on the package index: a relative link there leads nowhere."""
    for one in built.values():
        assert one.metadata["Description-Content-Type"] == "text/markdown"
        description = one.metadata.get_payload()
        assert isinstance(description, str)
        assert description.startswith(f"# {one.name}\n"), one.name
        for match in _LINKS.finditer(description):
            target = match[1] or match[2]
            assert target.startswith(("https://", "http://", "#")), f"{one.name}: {target}"
