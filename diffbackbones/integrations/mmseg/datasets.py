"""The shapes dataset in mmseg's registry (``type='ShapesDataset'``)."""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from diffbackbones.data.shapes import SHAPES_CLASSES, SHAPES_PALETTE


@DATASETS.register_module()
class ShapesDataset(BaseSegDataset):
    """The embedded synthetic set written by ``tools/make_shapes.py`` (labels 0..3, 0 is background)."""

    METAINFO = dict(classes=SHAPES_CLASSES, palette=SHAPES_PALETTE)

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png', **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=False, **kwargs)
