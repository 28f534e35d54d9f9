"""diffbackbones: any diffusers denoiser as a multi-scale feature backbone for timm and MMSegmentation.

    import timm, diffbackbones
    m = timm.create_model('sd15_practical', pretrained=True, features_only=True)
"""
from .version import __version__
from .backbone import DiffusionBackbone
from .capture import ActivationCapture
from .combined import CombinedDiffusionBackbone
from .catalog import ActivationInfo, list_activations
from .presets import Preset
from .screener import ScreenReport, screen
from .extraction import extract
from .generation import capture_generation
from .label_scarce import ProbeResult, evaluate_probe
from .correspondence import CorrespondenceResult, evaluate_correspondence
from .stages import Stages
from .loading import WeightsNotFoundError
from .store import FeatureStore
from .zoo import MODELS, get_model_spec
from . import timm_models  # noqa: F401  (registers the timm entry points)

try:  # MMSegmentation is optional: register the backbone and the shapes dataset when it is there
    import mmseg  # noqa: F401
except ImportError:
    pass
else:
    from . import segmentation  # noqa: F401

__all__ = ['DiffusionBackbone', 'CombinedDiffusionBackbone', 'ActivationCapture', 'ActivationInfo', 'list_activations', 'WeightsNotFoundError', 'FeatureStore',
           'MODELS', 'get_model_spec', 'Preset',
           'screen', 'ScreenReport', 'extract', 'capture_generation', 'evaluate_probe', 'ProbeResult',
           'evaluate_correspondence', 'CorrespondenceResult',
           'Stages', '__version__']
