"""Names of the internal columns that travel between stages (never written to the table)."""

FILE = "_file"  # source file of the row, for reject reports
REJECT = "_reject"  # null when the row is fine, else the reason it cannot be embedded
INPUT_IDS = "_input_ids"  # token ids, from the tokenize stage to the encode stage
TRUNCATED = "_truncated"  # the text was cut at the model's token limit
CHUNKS = "_chunks"  # embed.long_text=chunk: how many rows (windows) the row's document became
N_TOKENS = "_n_tokens"  # tokens the encoder processed for the row
VECTOR = "vector"
HASH = "content_hash"  # hash of text + lineage, stored in the table for incremental runs
SOURCE_FILE = "source_file"  # table column: the file a row came from (resume deletes by it)
ENCODER = "_encoder"  # "<node id>/<actor id>" of the encoder actor that embedded the row (placement report)
OLD_ROWID = "_old_rowid"  # upsert: addresses of the rows a changed document replaces (list)
SKIP_UNCHANGED = "unchanged"  # _reject value for rows an upsert leaves alone (skipped, not rejected)
METADATA_ONLY = "metadata_only"  # _reject value: same text, other metadata: rewritten with the old vector
