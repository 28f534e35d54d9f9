"""The paper's tasks on top of the backbone: screening, label-scarce segmentation, correspondence,
extraction to disk, generation with capture, and benchmarking.

Layer: imports `training`, `backbone`, `models`, `data` and `utils`.
"""
