"""Training-data loaders: the Arrow loader (default) over the export stage's Parquet."""
