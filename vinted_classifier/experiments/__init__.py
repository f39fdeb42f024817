"""Experiment tooling around ``train.py``: the shared set-up (``setup``), best model across phases,
time budgets, tracking hooks, search and CV.

Importing the package itself costs nothing; its modules import what they use (TensorFlow, Optuna)
at the top, except MLflow, which ``tracking`` imports only when a run is tracked.
"""
