"""The synthetic "shapes-depth" set: scene geometry, NYU layout read by mmseg's NYUDataset, the command, pictures."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import diffbackbones  # noqa: F401  (registers mmseg's modules where needed)
from diffbackbones.integrations.mmseg.depth_pictures import colorize_depth, depth_panel, save_depth_panels
from diffbackbones.data.depth_shapes import (CATEGORY_DEPTH_RANGES, SHAPES_DEPTH_CATEGORIES, make_depth_dataset,
                                             render_depth_sample, render_depth_scene)


@pytest.fixture(scope='module')
def depth_root(tmp_path_factory):
    return make_depth_dataset(tmp_path_factory.mktemp('depth') / 'shapes-depth', n_train=6, n_test=4)


def _rendered(split_seed, count):
    """What make_depth_dataset renders for a split: {name: (image, depth)}."""
    rng = np.random.default_rng(split_seed)
    out = {}
    for i in range(count):
        category = SHAPES_DEPTH_CATEGORIES[i % 2]
        out[f'{category}_{i:05d}'] = render_depth_sample(rng, 128, category)
    return out


@pytest.mark.parametrize('category', SHAPES_DEPTH_CATEGORIES)
def test_scene_geometry(category):
    for seed in range(8):
        scene = render_depth_scene(np.random.default_rng(seed), 128, category)
        image, depth = scene['image'], scene['depth']
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert depth.shape == (128, 128) and depth.dtype == np.float32
        assert np.isfinite(depth).all() and depth.min() > 0.3 and depth.max() < 10.0
        low, high = CATEGORY_DEPTH_RANGES[category]
        wall = scene['wall_depth']
        assert low <= wall <= high
        assert depth.max() <= wall + 1e-4            # the back wall bounds everything
        covered = np.zeros_like(scene['ground'])
        for obj in scene['objects']:
            covered |= obj['mask']
        # Background without objects: rows above the ground are the wall, at its depth.
        wall_px = ~scene['ground'] & ~covered
        assert wall_px.any() and np.allclose(depth[wall_px], wall, atol=1e-4)
        # Ground: a plane, so one depth per row, which shrinks strictly going down the image.
        columns = np.flatnonzero(~(scene['ground'] & covered).any(axis=0))
        assert columns.size, 'some column should show ground from horizon to bottom unoccluded'
        rows = np.flatnonzero(scene['ground'][:, columns[0]])
        assert rows.size >= 10 and rows[-1] == 127
        assert (np.diff(depth[rows, columns[0]]) < 0).all()
        cam = scene['camera']
        expected = cam['height'] / (np.sin(cam['tilt']) + (rows - 63.5) / cam['focal'] * np.cos(cam['tilt']))
        np.testing.assert_allclose(depth[rows, columns[0]], expected, rtol=1e-5)
        assert depth[rows[0], columns[0]] > 1.5 * depth[127, columns[0]]
        # Objects: 1-4 (a farther one may hide entirely behind a nearer one; the nearest always shows), each
        # in front of whatever is behind it; its base rests on the ground.
        assert 1 <= len(scene['objects']) <= 4
        assert scene['objects'][-1]['visible'].any()
        for obj in scene['objects']:
            assert np.all(depth[obj['visible']] <= obj['depth'] + 1e-4)
            assert np.all(depth[obj['visible']] > obj['depth'] - 0.1)
            bottom = np.flatnonzero(obj['mask'].any(axis=1))[-1]
            if bottom < 127:
                ground_at_base = cam['height'] / (np.sin(cam['tilt']) + (bottom - 63.5) / cam['focal']
                                                  * np.cos(cam['tilt']))
                assert abs(ground_at_base - obj['depth']) < obj['depth'] * 0.05
        # Depth jumps at object edges: the background has one depth per row, so any change along a row is an
        # object's silhouette.
        assert np.abs(np.diff(depth, axis=1)).max() > 0.3


def test_objects_scale_with_depth_and_nearer_ones_occlude():
    heights, overlaps = [], 0
    for seed in range(300):
        scene = render_depth_scene(np.random.default_rng(seed), 128, 'classroom')
        objects = scene['objects']
        for obj in objects:
            rows = np.flatnonzero(obj['mask'].any(axis=1))
            if rows[0] > 0 and rows[-1] < 127:
                heights.append((obj['depth'], rows.size))
        for i, far in enumerate(objects):          # far to near
            for near in objects[i + 1:]:
                assert far['depth'] >= near['depth']
                both = far['mask'] & near['mask']
                if both.any():
                    overlaps += 1
                    assert not far['visible'][both].any()          # the nearer one hides the farther one
                    assert np.all(scene['depth'][both] <= near['depth'] + 1e-4)
    assert overlaps >= 5
    depths, sizes = np.array(heights).T
    assert np.corrcoef(1 / depths, sizes)[0, 1] > 0.5     # image size ~ 1 / depth


def test_rendering_is_deterministic():
    a = render_depth_sample(np.random.default_rng(3), 64, 'bedroom')
    b = render_depth_sample(np.random.default_rng(3), 64, 'bedroom')
    c = render_depth_sample(np.random.default_rng(4), 64, 'bedroom')
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    with pytest.raises(ValueError, match='category'):
        render_depth_sample(np.random.default_rng(0), 64, 'kitchen')


def test_dataset_layout_and_nyu_dataset_loads_it(depth_root):
    from mmengine.registry import DefaultScope
    from mmseg.datasets import NYUDataset

    for split, count, seed in (('train', 6, 0), ('test', 4, 1)):
        names = sorted(p.stem for p in (depth_root / 'images' / split).glob('*.jpg'))
        assert names == sorted(p.stem for p in (depth_root / 'annotations' / split).glob('*.png'))
        assert len(names) == count
        rendered = _rendered(seed, count)
        assert sorted(rendered) == names
        with DefaultScope.overwrite_default_scope('mmseg'):   # the pipeline's dict types are mmseg's
            dataset = NYUDataset(  # as mmseg ships it: the categories are two of NYU's scene classes
                data_root=str(depth_root),
                data_prefix=dict(img_path=f'images/{split}', depth_map_path=f'annotations/{split}'),
                pipeline=[dict(type='LoadImageFromFile'),
                          dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
                          dict(type='PackSegInputs', meta_keys=('img_path', 'depth_map_path', 'ori_shape', 'img_shape',
                                                                'category_id'))])
        assert len(dataset) == count
        seen = set()
        for i in range(count):
            sample = dataset[i]
            meta = sample['data_samples'].metainfo
            name = meta['img_path'].rsplit('/', 1)[-1][:-4]
            category = name.split('_')[0]
            assert meta['category_id'] != -1
            assert NYUDataset.METAINFO['classes'][meta['category_id']] == category
            seen.add(category)
            assert tuple(sample['inputs'].shape) == (3, 128, 128)
            gt = sample['data_samples'].gt_depth_map.data.numpy()[0]
            image, depth = rendered[name]
            assert gt.shape == depth.shape
            assert np.abs(gt - depth).max() <= 1e-3 + 1e-6          # millimetre PNG, metres back
            assert gt.min() > 0.3 and gt.max() < 10.0
            # the JPEG is the rendered RGB image (lossy, but close); mmseg loads it as BGR
            jpg = np.asarray(Image.open(depth_root / 'images' / split / f'{name}.jpg'))
            assert jpg.shape == image.shape and np.abs(jpg.astype(int) - image).mean() < 6
            assert np.array_equal(sample['inputs'].numpy().transpose(1, 2, 0)[..., ::-1], jpg)
        assert seen == set(SHAPES_DEPTH_CATEGORIES)
    png = Image.open(next((depth_root / 'annotations' / 'train').glob('*.png')))
    assert png.mode.startswith('I') and np.asarray(png).dtype == np.uint16


def test_dataset_is_deterministic_and_idempotent(tmp_path, depth_root):
    other = make_depth_dataset(tmp_path / 'b', n_train=6, n_test=4)
    files = sorted(p.relative_to(depth_root) for p in depth_root.rglob('*') if p.is_file())
    assert len(files) == 20
    for rel in files:
        assert (depth_root / rel).read_bytes() == (other / rel).read_bytes()
    train = sorted((other / 'images' / 'train').glob('*.jpg'))
    test = sorted((other / 'images' / 'test').glob('*.jpg'))
    assert train[0].read_bytes() != test[0].read_bytes()       # the test split has its own seed
    stamps = {p: p.stat().st_mtime_ns for p in other.rglob('*') if p.is_file()}
    make_depth_dataset(other, n_train=6, n_test=4)
    assert stamps == {p: p.stat().st_mtime_ns for p in other.rglob('*') if p.is_file()}


def test_command_writes_depth_layout_and_rejects_segmentation_flags(tmp_path, capsys):
    run = [sys.executable, '-m', 'diffbackbones', 'make-shapes']
    done = subprocess.run([*run, str(tmp_path / 'd'), '--task', 'depth', '--train', '3', '--val', '2'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for kind, suffix in (('images', 'jpg'), ('annotations', 'png')):
        assert sorted(p.name for p in (tmp_path / 'd' / kind / 'train').iterdir()) == \
            [f'bedroom_00000.{suffix}', f'bedroom_00002.{suffix}', f'classroom_00001.{suffix}']
        assert len(list((tmp_path / 'd' / kind / 'test').iterdir())) == 2
    # the flag check needs no second interpreter: the same parser, in process
    from diffbackbones.commands import main
    with pytest.raises(SystemExit) as exit_info:
        main(['make-shapes', str(tmp_path / 'e'), '--task', 'depth', '--variant', 'geometry'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert '--variant geometry' in err and 'segmentation' in err
    assert not (tmp_path / 'e').exists()


def test_colorize_and_panels(tmp_path):
    depth = np.linspace(0.5, 9.5, 32 * 32, dtype=np.float32).reshape(32, 32)
    depth[0, 0], depth[0, 1] = np.nan, 0.0
    rgb = colorize_depth(depth)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert (rgb[0, :2] == 0).all() and (rgb[1:].sum(axis=-1) > 0).all()
    assert np.abs(rgb[1, 0].astype(int) - rgb[-1, -1]).sum() > 200       # near and far clearly distinct

    image, gt = render_depth_sample(np.random.default_rng(0), 64, 'bedroom')
    same = depth_panel(image, gt, gt)
    assert same.shape == (64, 3 * 64 + 2 * 4, 3) and same.dtype == np.uint8
    assert np.array_equal(same[:, :64], image)
    assert np.array_equal(same[:, 68:132], same[:, 136:200])             # one colour scale for both
    pred = np.full((32, 32), 8.0, np.float32)                            # coarser and wrong
    panel = depth_panel(image, gt, pred)
    assert panel.shape == same.shape
    assert not np.array_equal(panel[:, 68:132], panel[:, 136:200])
    assert (panel[:, 136:200] == colorize_depth(np.full((1, 1), 8.0))[0, 0]).all()
    path = save_depth_panels([(image, gt, pred), (image, gt, gt)], tmp_path / 'p' / 'panels.png')
    assert np.asarray(Image.open(path)).shape == (2 * 64 + 4, 3 * 64 + 8, 3)
