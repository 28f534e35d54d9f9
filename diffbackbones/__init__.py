"""diffbackbones: any diffusers denoiser as a multi-scale feature backbone for timm and MMSegmentation.

    import timm, diffbackbones
    m = timm.create_model('sd15_practical', pretrained=True, features_only=True)
"""
from .requirements import check_versions

check_versions()  # before anything imports diffusers or timm: an old install fails here, naming the version
from .utils.quiet import drop_third_party_notices  # noqa: E402

drop_third_party_notices()  # before diffusers imports torchao (utils/quiet.py says which notices, and why)
from .version import __version__  # noqa: E402
from .backbone.diffusion_backbone import DiffusionBackbone
from .backbone.denoiser.capture import ActivationCapture
from .backbone.combined import CombinedDiffusionBackbone
from .backbone.video import video_features
from .models.catalog import ActivationInfo, list_activations
from .backbone.presets import Preset
from .tasks.screening.screen import ScreenReport, screen
from .tasks.extraction.extract import extract
from .tasks.generation import capture_generation
from .tasks.label_scarce.evaluate import ProbeResult, evaluate_probe
from .tasks.correspondence import (CorrespondenceResult, GeometricResult, TemporalResult, evaluate_correspondence,
                                   evaluate_geometric, evaluate_temporal)
from .backbone.stages import Stages
from .models.loading import WeightsNotFoundError
from .tasks.extraction.store import FeatureStore
from .models.zoo import MODELS, get_model_spec
from .integrations import timm_models  # noqa: F401  (registers the timm entry points)

try:  # MMSegmentation is optional: register the backbone and the shapes dataset when it is there
    import mmseg  # noqa: F401
except ImportError:
    pass
else:
    from .integrations import mmseg as _mmseg_registrations  # noqa: F401
    from .integrations import mmdet as _mmdet_registrations  # noqa: F401  (mmdet comes with mmseg's extra)

__all__ = ['DiffusionBackbone', 'CombinedDiffusionBackbone', 'ActivationCapture', 'ActivationInfo', 'list_activations', 'WeightsNotFoundError', 'FeatureStore',
           'MODELS', 'get_model_spec', 'Preset', 'video_features',
           'screen', 'ScreenReport', 'extract', 'capture_generation', 'evaluate_probe', 'ProbeResult',
           'evaluate_correspondence', 'CorrespondenceResult', 'evaluate_geometric', 'GeometricResult',
           'evaluate_temporal', 'TemporalResult',
           'Stages', '__version__']
