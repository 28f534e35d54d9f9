"""The demo (tools/demo.py, `make demo`): the recipe trained with the shipped and with random weights, one
table, one picture per val image. One short end-to-end run of both; the full one is `make demo`."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('mmseg')

from diffbackbones.data.shapes import SHAPES_CLASSES, make_shapes_dataset  # noqa: E402
from diffbackbones.utils.pictures import GAP  # noqa: E402

from conftest import REPO  # noqa: E402

DEMO = REPO / 'configs' / 'toy' / 'upernet_shapes-sd-tiny-practical_1xb8-300_shapes-128x128.py'


@pytest.mark.slow
def test_the_demo_trains_both_prints_one_table_and_draws_each_val_image(tmp_path):
    data = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=3)
    work = tmp_path / 'demo'
    done = subprocess.run([sys.executable, str(REPO / 'tools' / 'demo.py'), '--data', str(data),
                           '--work-dir', str(work), '--iters', '2', '--readme-picture', str(tmp_path / 'readme.png')],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith('weights ')):]
    assert table[0].split() == ['weights', 'mIoU', *SHAPES_CLASSES]
    trained, random = table[2], table[3]
    assert trained.startswith('trained (shipped weights)') and random.startswith('random (latents rescaled)')
    for row in (trained, random):  # mIoU is the mean of the class IoUs: mmseg's arithmetic, both ways
        numbers = [float(x) for x in row.split(')')[1].split()]
        assert numbers[0] == pytest.approx(np.mean(numbers[1:]), abs=0.01)
    for weights in ('trained', 'random'):  # mmseg's IoUMetric wrote one label PNG per val image
        assert len(list((work / weights / 'predictions').glob('*.png'))) == 3
        assert (work / weights / 'iter_2.pth').exists()
    pictures = sorted((work / 'pictures').glob('*.png'))
    assert len(pictures) == 3
    picture = np.asarray(Image.open(pictures[0]))
    assert picture.shape[1] == 4 * 256 + 3 * GAP and picture.shape[0] > 256  # 2x panels under a title strip
    truth = np.asarray(Image.open(data / 'ann_dir' / 'val' / pictures[0].name))
    assert len(np.unique(picture[-256:, 256 + GAP:512 + GAP].reshape(-1, 3), axis=0)) == len(np.unique(truth))
    stacked = np.asarray(Image.open(tmp_path / 'readme.png'))  # the first pictures in order, none picked
    assert np.array_equal(stacked[:picture.shape[0]], picture) and stacked.shape[0] == 3 * picture.shape[0] + 2 * GAP
