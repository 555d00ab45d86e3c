"""``python -m lungseg``: the same command line as the ``lungseg`` script (:func:`lungseg.cli.main`)."""

import sys

from lungseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
