"""Datasets: synthetic panoramas and QuIC-360-style caption CSVs."""
