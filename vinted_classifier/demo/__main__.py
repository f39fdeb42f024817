"""``python -m vinted_classifier.demo OUT_DIR [--scale S] [--seed N] [--force]``."""

import sys

from .dataset import main

if __name__ == "__main__":
    sys.exit(main())
