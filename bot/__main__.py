"""`python -m bot`: the `parley` command, for a checkout without the console script."""

import sys

from bot.cli import main

sys.exit(main())
