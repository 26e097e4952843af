"""The table's vector index: parameters derived from the data, the build step, recall tuning, upkeep."""
