"""``python -m offshelf``: the ``offshelf`` command (offshelf.cli)."""

import sys

from offshelf.cli import main

sys.exit(main())
