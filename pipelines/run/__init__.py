"""The bulk indexing run: plan the stages, stream files through them, checkpoint, summarise."""
