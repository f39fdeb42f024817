"""``python -m tf_serving_compat.server [tensorflow_model_server flags]``: run the server (``process.main``)."""

from __future__ import annotations

import sys

from .process import main

if __name__ == "__main__":
    sys.exit(main())
