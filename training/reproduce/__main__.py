"""``python -m training.reproduce NAME --out DIR``: the same as ``sparsecodes reproduce``."""

import sys

from training.reproduce import main

sys.exit(main())
