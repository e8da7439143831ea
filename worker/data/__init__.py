"""Imported datasets: Parquet shards in a store (dataset), and the importers that write them (imports)."""
