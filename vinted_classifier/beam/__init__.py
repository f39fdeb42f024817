"""Apache Beam building blocks of ``vinted predict --runner`` (see ``vinted_classifier.beam_predict``).

* ``inputs``: the job's row groups (planned from parquet footers only) and the image check;
* ``transforms``: the DoFns (ids from row groups, image bytes, formatting, dead letters); imports Beam;
* ``merge``: the bounded-memory merge of index-keyed parquet shards into one ordered file.

Nothing here collects the whole job in one place: rows travel as a PCollection from the row-group
reads to the sharded parquet sinks, and the optional single file is a streaming external merge.
"""
