"""``python -m onecomp_core`` (also under ``torchrun -m onecomp_core``): the ``onecomp`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
