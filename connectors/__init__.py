"""Sources and sinks: the only code that knows paths, buckets, Parquet and Lance."""
