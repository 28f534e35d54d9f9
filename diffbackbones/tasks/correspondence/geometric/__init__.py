"""Geometric correspondence: HPatches homography estimation from keypoints described by diffusion features.

- ``hpatches``: HPatches' layout (``{i_*,v_*}/{1..6}.ppm``, ``H_1_{2..6}``), read and checked.
- ``homography``: SIFT keypoints, descriptors sampled from the levels, mutual nearest neighbours, RANSAC,
  corner error.
- ``synthetic``: the embedded set: shapes scenes warped by known homographies, relit for illumination.
- ``evaluate``: ``evaluate_geometric`` and its ``GeometricResult`` (the table of corner error and accuracy).
"""
from .evaluate import GeometricResult, evaluate_geometric
from .homography import corner_error, describe, estimate_homography, mutual_nearest_neighbours, sift_keypoints
from .hpatches import HomographyPair, load_hpatches
from .synthetic import make_geometric_dataset

__all__ = ['evaluate_geometric', 'GeometricResult', 'corner_error', 'describe', 'estimate_homography',
           'mutual_nearest_neighbours', 'sift_keypoints', 'HomographyPair', 'load_hpatches', 'make_geometric_dataset']
