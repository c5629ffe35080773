"""``python -m comm_core``: the ``comm`` command (see :mod:`comm_core.cli`)."""

import sys

from comm_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
