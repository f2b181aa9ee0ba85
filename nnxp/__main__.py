"""``python -m nnxp`` is the ``nnxp`` command."""

import sys

from .cli import main

sys.exit(main())
