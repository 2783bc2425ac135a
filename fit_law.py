"""`python fit_law.py ...` is `kinject-fit-law ...`: fit P(F) per model and the law F*(C) (kinject/cli/fit_law.py)."""

import sys

from kinject.cli.fit_law import main

if __name__ == "__main__":
    sys.exit(main())
