"""Queries against a table, with the model, prompt and dimension recorded in it."""
