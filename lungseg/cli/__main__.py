"""``python -m lungseg.cli``: kept beside ``python -m lungseg`` (:mod:`lungseg.__main__`) for old scripts."""

import sys

from lungseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
