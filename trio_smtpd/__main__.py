"""``python -m trio_smtpd``: the same as the ``trio-smtpd`` command."""

import sys

from .sinkhole.cli import main

if __name__ == "__main__":
    sys.exit(main())
