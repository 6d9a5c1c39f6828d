"""``python -m txrelay``: the ``txrelay`` command."""

import sys

from txrelay.cli import main

sys.exit(main())
