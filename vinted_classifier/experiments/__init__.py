"""Experiment tooling around ``train.py``: best model across phases, time budgets, tracking, search, CV.

Every module here imports its heavy dependencies (TensorFlow, MLflow, Optuna) inside functions,
so importing the package costs nothing.
"""
