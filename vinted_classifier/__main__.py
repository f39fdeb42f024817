"""``python -m vinted_classifier``: the ``vinted`` command line."""

from vinted_classifier.cli import main

raise SystemExit(main())
