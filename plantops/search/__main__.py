"""``python -m plantops.search``: see ``python -m plantops.search --help``."""

import sys

from plantops.search import main
from plantops.search.memory import keep_freed_memory

keep_freed_memory()  # the command's own process: see plantops/search/memory.py
sys.exit(main())
