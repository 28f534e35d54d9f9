"""Training of the shipped models: the recipes that make shapes_sd_tiny and shapes_flux_tiny.

Layer: imports `backbone`, `models`, `data` and `utils`.
"""
