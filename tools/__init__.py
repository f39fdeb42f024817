"""Developer tooling outside the package: the notebook runner (``python -m tools.notebook``)."""
