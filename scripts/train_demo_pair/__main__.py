"""`python scripts/train_demo_pair --out DIR ...` (see the package docstring, or `--help`)."""

import sys
from pathlib import Path

if not __package__:  # run as a folder: import it as the package it is (its parent on the path, not itself)
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from train_demo_pair.run import main  # noqa: E402

if __name__ == "__main__":
    main()
