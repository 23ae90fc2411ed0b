"""`python -m difflm ...` (also what `torchrun -m difflm train ...` runs)."""

import sys

from .cli import main

sys.exit(main())
