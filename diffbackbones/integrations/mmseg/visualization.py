"""``DepthPanelVisualizer``: mmseg's visualizer, with depth samples drawn as input | ground truth | prediction.

mmseg's ``SegLocalVisualizer`` draws a depth map as a feature map under the image, each map scaled to its
own range, so ground truth and prediction cannot be compared by colour. This one draws them side by side
on one fixed colour scale, 0 .. ``max_depth`` metres (``depth_pictures.depth_panel``); segmentation
samples are drawn as mmseg draws them. Set it in a config and every tool that draws uses it, mmseg's own
``tools/test.py --show-dir`` included:

    visualizer = dict(type='DepthPanelVisualizer', max_depth=10.0, vis_backends=[dict(type='LocalVisBackend')])
"""
from __future__ import annotations

import numpy as np
from mmseg.registry import VISUALIZERS
from mmseg.visualization import SegLocalVisualizer

from .depth_pictures import depth_panel

__all__ = ['DepthPanelVisualizer']


def _depth(data_sample, field: str, shape: tuple[int, int]) -> np.ndarray:
    """The sample's depth map ``field`` as (H, W) metres; all-invalid (drawn black) when it has none."""
    if field not in data_sample:
        return np.full(shape, np.nan, np.float32)
    return getattr(data_sample, field).cpu().data.squeeze(0).numpy()


@VISUALIZERS.register_module()
class DepthPanelVisualizer(SegLocalVisualizer):
    """``SegLocalVisualizer`` drawing depth samples as one panel: input | ground truth | prediction.

    Args:
        name: The instance name (mmengine's visualizers are named singletons).
        max_depth: The depth (m) at the far end of the colour scale (VPDDepthHead's ``max_depth``).
        **kwargs: ``SegLocalVisualizer``'s (``vis_backends``, ``save_dir``, ...).
    """

    def __init__(self, name: str = 'visualizer', max_depth: float = 10.0, **kwargs):
        super().__init__(name=name, **kwargs)
        self.max_depth = float(max_depth)

    def add_datasample(self, name, image, data_sample=None, draw_gt=True, draw_pred=True, show=False,
                       wait_time=0, out_file=None, step=0, with_labels=True) -> None:
        if data_sample is None or not ({'gt_depth_map', 'pred_depth_map'} & set(data_sample.keys())):
            return super().add_datasample(name, image, data_sample, draw_gt, draw_pred, show, wait_time, out_file,
                                          step, with_labels)
        shape = image.shape[:2]
        gt = _depth(data_sample, 'gt_depth_map', shape) if draw_gt else np.full(shape, np.nan, np.float32)
        pred = _depth(data_sample, 'pred_depth_map', shape) if draw_pred else np.full(shape, np.nan, np.float32)
        panel = depth_panel(image, gt, pred, self.max_depth)
        if show:
            self.show(panel, win_name=name, wait_time=wait_time)
        if out_file is not None:
            import mmcv
            mmcv.imwrite(mmcv.rgb2bgr(panel), out_file)
        else:
            self.add_image(name, panel, step)
