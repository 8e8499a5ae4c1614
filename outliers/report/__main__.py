"""``python -m outliers.report DIR [DIR ...] [--out OUT] [--baseline softmax]``: see
``outliers.report.cli``, which holds the command so that importing the package does not
import this module (runpy would then run a second copy of it)."""

import sys

from outliers.report.cli import main

sys.exit(main())
