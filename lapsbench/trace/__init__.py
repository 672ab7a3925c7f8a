"""Trace I/O: the canonical Parquet schema, validation, synthesis, import, slicing, info."""
