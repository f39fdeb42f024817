"""The release gate between training and the served base path (docs/release.md).

``vinted export`` stages a candidate; ``vinted release`` evaluates it against floors, the served
version, slices, simple baselines, numerics and cost (``checks``), loads it in a real server
subprocess (``infra``), and only then pushes it atomically into the served base path
(``staging``), with version labels (``rollout``) and provenance (``provenance``). ``gate`` runs
the whole flow; ``report`` writes ``release.json`` and its table.
"""
