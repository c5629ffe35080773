"""The coverage-guided fuzzer of the long mode: atheris on comm's receive path and parsers.

``python fuzz_atheris.py CORPUS_DIR -max_total_time=60`` (libFuzzer options).
Run by ``test_fuzz.py`` with ``--soak``; any exception other than comm's own
errors, a crash or a hang (``-timeout``) stops it with a non-zero status.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import comm_core
    import comm_core._addressing
    import comm_core.protocol  # noqa: F401

from fuzz_targets import fuzz_one_input


def main() -> None:
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
