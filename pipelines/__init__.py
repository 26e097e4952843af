"""What the jobs run, by role, in the order the data goes:

- ``run/``: the bulk indexing run (``runner.run_index``): the plan of stages (``plan``), the Ray Data
  stages themselves (``stages/``: validate, skip unchanged, tokenize, encode), checkpoints and the
  run summary.
- ``embed/``: text to vectors, the parts an encode stage is made of: tokenizer, batching, HF and vLLM
  encoders, pooling, post-processing.
- ``vector_index/``: the table's vector index: parameters, the build step, recall tuning, upkeep.
- ``search/``: queries against a table.
- ``evaluation/``: retrieval quality on a BEIR-layout test set.
- ``config`` (the one typed configuration) and ``lineage`` (what made a table's vectors) are shared.

Sources and sinks (Parquet, Lance, S3, model files) live in ``connectors/``, which imports nothing
from here.
"""
