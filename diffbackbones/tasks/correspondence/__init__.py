"""Correspondence with diffusion features: semantic (the paper's Table 1 task; SPair-71k), geometric
(HPatches homographies, ``geometric/``) and temporal (DAVIS-2017 and JHMDB label propagation, ``temporal/``).

Semantic:

- ``data``: SPair-71k's layout and the paper's list-of-pairs JSON, checked against the images.
- ``features``: the backbone's levels per image at the working size, one prompt per category.
- ``matching``: nearest neighbours by cosine similarity on upsampled maps (read in bands), PCK tables.
- ``trained``: the paper's protocol, one 3x3 convolution trained with a symmetric CLIP loss.
- ``synthetic``: the embedded shapes pairs (known similarity transforms) in SPair-71k's layout.

``evaluate_correspondence`` (``evaluate.py``; the ``diffbackbones correspondence`` command) runs both protocols end to end,
and with ``task='geometric'`` or ``'temporal'`` the other two kinds (``evaluate_geometric``, ``evaluate_temporal``).
"""
from .data import Pair, find_pairs, load_pair_list, load_spair
from .evaluate import TASKS, CorrespondenceResult, evaluate_correspondence
from .geometric import GeometricResult, evaluate_geometric, make_geometric_dataset
from .temporal import TemporalResult, evaluate_temporal, make_temporal_dataset
from .features import DIFT_PROMPT, PAPER_PROMPT, FeatureSource, load_image
from .matching import PCKTable, evaluate_pairs, match_points, pck_correct, rescale_points
from .synthetic import make_correspondence_dataset
from .trained import CorrespondenceHead, clip_loss, keypoint_index, train_steps, training_schedule

__all__ = ['Pair', 'find_pairs', 'load_pair_list', 'load_spair', 'DIFT_PROMPT', 'PAPER_PROMPT', 'FeatureSource',
           'load_image', 'PCKTable', 'evaluate_pairs', 'match_points', 'pck_correct', 'rescale_points',
           'make_correspondence_dataset', 'CorrespondenceHead', 'clip_loss', 'keypoint_index', 'train_steps',
           'training_schedule', 'evaluate_correspondence', 'CorrespondenceResult', 'TASKS', 'evaluate_geometric',
           'GeometricResult', 'make_geometric_dataset', 'evaluate_temporal', 'TemporalResult', 'make_temporal_dataset']
