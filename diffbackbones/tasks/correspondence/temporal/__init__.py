"""Temporal correspondence: video label propagation by feature affinity (DAVIS-2017 masks, JHMDB keypoints).

- ``propagation``: DINO's label propagation (context frames, neighbourhood, top-k, temperature).
- ``davis``: DAVIS' layout and the official J and F measures.
- ``jhmdb``: JHMDB's layout, joints as heat maps and back, PCK as VideoWalk computes it.
- ``synthetic``: the embedded videos of moving, occluding shapes, in both layouts.
- ``evaluate``: ``evaluate_temporal`` and its ``TemporalResult``.
"""
from .davis import boundary_f_measure, boundary_map, load_davis, region_similarity, score_video
from .evaluate import DAVIS_PROPAGATION, JHMDB_PROPAGATION, TemporalResult, evaluate_temporal
from .jhmdb import keypoint_maps, load_jhmdb, pck, read_keypoints
from .propagation import Propagation, propagate
from .synthetic import make_temporal_dataset

__all__ = ['evaluate_temporal', 'TemporalResult', 'DAVIS_PROPAGATION', 'JHMDB_PROPAGATION', 'Propagation',
           'propagate', 'load_davis', 'region_similarity', 'boundary_map', 'boundary_f_measure', 'score_video',
           'load_jhmdb', 'keypoint_maps', 'read_keypoints', 'pck', 'make_temporal_dataset']
