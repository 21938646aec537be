"""``python -m node`` runs the ``hashmesh`` command line."""

import sys

from node.cli import main

sys.exit(main())
