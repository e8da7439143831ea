"""Reading runs back: reports, the modes side by side, lineage, replay."""
