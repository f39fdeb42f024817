"""Watching the model in production: input and prediction statistics, drift against the export's
reference, numerical health and staleness (``docs/monitoring.md``).

``stats`` turns images and model outputs into observations, ``reference`` summarises them (the
export's ``assets.extra/reference_stats.json``), ``drift`` holds the distances and the sliding
window, ``metrics`` the server-side observer and its Prometheus metrics, ``report`` ``vinted drift``.
"""
