"""Multi-task image classifier for marketplace item photos.

Stages, one module each: ``data`` (labels, schema, splits), ``pipeline`` (tf.data),
``demo`` (synthetic dataset), ``eda``, ``model`` (+ ``weights``, ``precision``),
``train``, ``evaluate``, ``predict``, ``export``, ``serve``.
Importing the package does no work: no TensorFlow import, no weights, no policy.
"""

__version__ = "0.1.0"
