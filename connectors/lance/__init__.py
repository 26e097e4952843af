"""The Lance/LanceDB table this pipeline writes: its files, commits, lookups, index, run log and lease."""
