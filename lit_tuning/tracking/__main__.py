"""`python -m lit_tuning.tracking verify`: check runs from their directories and from the trackers; exit 1 if wrong."""

import sys

from lit_tuning.tracking.cli import main

if __name__ == "__main__":
    sys.exit(main())
