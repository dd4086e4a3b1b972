"""``python -m cnm.cli``: the same as the ``cnm`` program."""

import sys

from cnm.cli.main import main

sys.exit(main())
