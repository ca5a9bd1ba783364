"""``python -m onecomp_core.cli``: the same as the ``onecomp`` script."""

import sys

from . import main

sys.exit(main())
