"""Ray Data stages, one per module, each a callable over ``pyarrow.Table`` batches."""
