"""Synthetic data sets the package embeds (shapes for segmentation and depth), so demos and tests need no download."""
