"""Glue to other libraries: timm entry points and MMSegmentation registration, datasets, hooks and runtime.

Layer: imports everything below it (`tasks`, `training`, `backbone`, `models`, `data`, `utils`).
"""
