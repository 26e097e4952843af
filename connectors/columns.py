"""Column names, defined once: the table's own columns, what a search adds, and the stages' internal ones.

A source column may bear none of the names in :data:`RESERVED` (pipelines/config.py refuses it): it would
fail the write after all the embedding work, or come back twice from a search. Every internal name starts
with ``_`` (and so do Lance's: ``_distance``, ``_rowid``, ...), which the config refuses as a prefix.
"""

# ---- the table's columns, beside the source's id, text and metadata columns -------------------------
VECTOR = "vector"  # the embedding
HASH = "content_hash"  # hash of text + lineage, stored in the table for incremental runs
SOURCE_FILE = "source_file"  # the file a row came from (resume deletes by it)
RUN_ID = "run_id"  # the run that wrote the row
DOC_ID = "doc_id"  # embed.long_text=chunk: the id of the document a chunk is of
CHUNK = "chunk"  # embed.long_text=chunk: the chunk's number in its document

# ---- columns beside a row's own: Ray Data's file path, and what a search returns with a hit ---------
PATH = "path"  # the column Ray Data's include_paths adds (connectors.parquet_source.PATH_COLUMN)
SCORE = "score"  # a hit's similarity (pipelines/search/searcher.py, the query service)
FOUND_BY = "found_by"  # a hybrid search's hit: which searches found it (pipelines/search/fusion.py)
ROW_ID = "_rowid"  # Lance's address of a row, asked for with with_row_id (a hybrid search's key)
QUERY_INDEX = "query_index"  # what Lance adds to a search of several vectors at once

# Every name the pipeline writes into the table or returns with a row, and why a source may not use it.
RESERVED = {
    VECTOR: "the table's embedding column",
    HASH: "the table's content hash column (upserts compare it)",
    SOURCE_FILE: "the table's column of each row's input file (resumes delete by it)",
    RUN_ID: "the table's column of the run that wrote each row (pipelines/run/preflight.py _table_schema)",
    DOC_ID: "the table's column of a chunk's document id (embed.long_text=chunk)",
    CHUNK: "the table's column of a chunk's number (embed.long_text=chunk)",
    PATH: "the column Ray Data adds with each row's file (include_paths)",
    SCORE: "what a search returns with each hit (pipelines/search/searcher.py, the query service)",
    FOUND_BY: "what a hybrid search returns with each hit (pipelines/search/fusion.py)",
    QUERY_INDEX: "what Lance adds to a search of several vectors at once (Searcher.search_many)",
}

# ---- internal columns: between the stages, never written to the table --------------------------------
FILE = "_file"  # source file of the row, for reject reports
REJECT = "_reject"  # null when the row is fine, else the reason it cannot be embedded
INPUT_IDS = "_input_ids"  # token ids, from the tokenize stage to the encode stage
TRUNCATED = "_truncated"  # the text was cut at the model's token limit
CHUNKS = "_chunks"  # embed.long_text=chunk: how many rows (windows) the row's document became
N_TOKENS = "_n_tokens"  # tokens the encoder processed for the row
ENCODER = "_encoder"  # "<node id>/<actor id>" of the encoder actor that embedded the row (placement report)
OLD_ROWID = "_old_rowid"  # upsert: addresses of the rows a changed document replaces (list)

# ---- values of the _reject column ---------------------------------------------------------------------
SKIP_UNCHANGED = "unchanged"  # rows an upsert leaves alone (skipped, not rejected)
METADATA_ONLY = "metadata_only"  # same text, other metadata: rewritten with the old vector
