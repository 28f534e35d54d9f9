"""Semantic correspondence with diffusion features (the paper's Table 1 task; SPair-71k).

- ``data``: SPair-71k's layout and the paper's list-of-pairs JSON, checked against the images.
- ``features``: the backbone's levels per image at the working size, one prompt per category.
- ``matching``: nearest neighbours by cosine similarity on upsampled maps (read in bands), PCK tables.
- ``trained``: the paper's protocol, one 3x3 convolution trained with a symmetric CLIP loss.
- ``synthetic``: the embedded shapes pairs (known similarity transforms) in SPair-71k's layout.

``evaluate_correspondence`` (``evaluate.py``; the ``diffbackbones correspondence`` command) runs both protocols end to end.
"""
from .data import Pair, find_pairs, load_pair_list, load_spair
from .evaluate import CorrespondenceResult, evaluate_correspondence
from .features import DIFT_PROMPT, PAPER_PROMPT, FeatureSource, load_image
from .matching import PCKTable, evaluate_pairs, match_points, pck_correct, rescale_points
from .synthetic import make_correspondence_dataset
from .trained import CorrespondenceHead, clip_loss, keypoint_index, train_steps, training_schedule

__all__ = ['Pair', 'find_pairs', 'load_pair_list', 'load_spair', 'DIFT_PROMPT', 'PAPER_PROMPT', 'FeatureSource',
           'load_image', 'PCKTable', 'evaluate_pairs', 'match_points', 'pck_correct', 'rescale_points',
           'make_correspondence_dataset', 'CorrespondenceHead', 'clip_loss', 'keypoint_index', 'train_steps',
           'training_schedule', 'evaluate_correspondence', 'CorrespondenceResult']
