"""The echo example of examples/ and of the README run, and print the echoed messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

EXPECTED = [
    "sent hello -> got hello",
    "sent {'op': 'ping', 'n': 1} -> got {'op': 'ping', 'n': 1}",
    "sent [1, 2, 3] -> got [1, 2, 3]",
]


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(.*?)```", readme, re.DOTALL)
    assert match, "README.md has no python example"
    return match[1]


def _check_output(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    first, *rest = result.stdout.splitlines()
    assert re.fullmatch(r"listening on inproc://\S+", first)
    assert rest == EXPECTED


@pytest.mark.parametrize("source", ["examples/echo.py", "README.md"])
def test_echo_example(source: str) -> None:
    if source == "README.md":
        _check_output(["-c", _readme_example()])
    else:
        _check_output([source])
