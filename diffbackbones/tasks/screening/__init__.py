"""Screening: the paper's three properties for every activation, then ranking the survivors by a probe."""
