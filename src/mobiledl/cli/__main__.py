"""``python -m mobiledl.cli ...``: the same as the ``mobiledl`` console script."""

import sys

from mobiledl.cli.main import main

sys.exit(main())
