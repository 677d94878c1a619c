"""`python -m lit_tuning.sweep`: run a study (default), show its status, or serve as one of its workers."""

import sys

from lit_tuning.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
