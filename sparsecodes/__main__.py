import sys

from sparsecodes.cli import main

sys.exit(main())
