"""``python -m ops.cli``: the ``govml`` command."""

import sys

from ops.cli import main

sys.exit(main())
