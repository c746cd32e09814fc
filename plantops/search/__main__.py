"""``python -m plantops.search``: see ``python -m plantops.search --help``."""

import sys

from plantops.search import main

sys.exit(main())
