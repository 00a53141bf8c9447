"""``python -m morphscope``: the ``morphscope`` command."""

import sys

from morphscope.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
