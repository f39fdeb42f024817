"""Multi-task image classifier for marketplace item photos.

Stages, one module each: ``data`` (labels, schema, splits), ``pipeline`` (tf.data),
``demo`` (synthetic dataset), ``eda``, ``model`` (+ ``weights``, ``precision``),
``train`` (+ ``features``), ``evaluate`` (a package: metrics, figures, tables, run),
``predict``, ``export``, ``serving`` (adapter for the ``tf_serving_compat`` server), ``client``;
``cli`` (``vinted``, ``python -m vinted_classifier``) and ``progress`` for the command line.
Importing the package does no work: no TensorFlow import, no weights, no policy.
"""

__version__ = "0.1.0"
