"""Retrieval quality on a BEIR-layout test set: the evaluation run, its metrics and its report."""
