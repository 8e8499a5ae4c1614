"""``python -m outlier_lab.report DIR [DIR ...] [--out OUT] [--baseline softmax]``: see
``outlier_lab.report.cli``, which holds the command so that importing the package does not
import this module (runpy would then run a second copy of it)."""

import sys

from outlier_lab.report.cli import main

sys.exit(main())
