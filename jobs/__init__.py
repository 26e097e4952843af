"""Command-line entry points: parse, load config, call one run function, set the exit code."""
