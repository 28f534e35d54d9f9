"""Geometric correspondence (HPatches homography estimation): the metric against hand-computed values, the
matcher and the descriptor sampler on known answers, HPatches' layout and its errors, the embedded set's exact
homographies, ``evaluate_geometric`` and the command end to end."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from diffbackbones.commands import main as diffbackbones_main
from diffbackbones.tasks.correspondence import evaluate_correspondence
from diffbackbones.tasks.correspondence.geometric import (GeometricResult, corner_error, describe,
                                                          estimate_homography, evaluate_geometric, load_hpatches,
                                                          make_geometric_dataset, mutual_nearest_neighbours,
                                                          sift_keypoints)
from diffbackbones.tasks.correspondence.geometric.evaluate import summarize


@pytest.fixture(scope='session')
def hpatches_root(tmp_path_factory):
    return make_geometric_dataset(tmp_path_factory.mktemp('geometric') / 'hpatches', 2, 2)


def test_corner_error_by_hand():
    true = np.eye(3)
    # x2 about the origin on an 11 x 11 image: corners (0,0) (0,10) (10,0) (10,10) move 0, 10, 10, 14.142
    doubled = np.diag([2.0, 2.0, 1.0])
    assert corner_error(doubled, true, 11, 11) == pytest.approx((0 + 10 + 10 + 200 ** 0.5) / 4)
    shifted = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1.0]])   # every corner 5 px away
    assert corner_error(shifted, true, 11, 11) == pytest.approx(5.0)
    assert corner_error(true, true, 11, 11) == 0.0
    assert corner_error(None, true, 11, 11) == float('inf')   # no H: wrong at every threshold


def test_accuracy_counts_failures_and_the_threshold_inclusively():
    records = [dict(kind='illumination', m=dict(corner_error=1.0)), dict(kind='viewpoint', m=dict(corner_error=3.0)),
               dict(kind='viewpoint', m=dict(corner_error=float('inf')))]
    summary = summarize(records, ['m'])['m']
    assert summary['all'] == pytest.approx(dict(pairs=3, failed=1, mean_error=2.0, **{'acc@1': 100 / 3,
                                                                                       'acc@3': 200 / 3,
                                                                                       'acc@5': 200 / 3}))
    assert summary['viewpoint']['acc@3'] == 50 and summary['illumination']['acc@1'] == 100


def test_mutual_nearest_neighbours_keep_only_mutual_pairs():
    a = np.array([[1, 0], [0, 1], [0.7, 0.7]], np.float32)
    b = np.array([[0, 1], [1, 0]], np.float32)
    # a[2]'s nearest is b[0], but b[0]'s is a[0]: not mutual
    assert mutual_nearest_neighbours(a, b).tolist() == [[0, 1], [1, 0]]
    assert mutual_nearest_neighbours(a, b[:0]).shape == (0, 2)


def test_identity_and_a_known_homography_are_recovered():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (40, 2))
    H, inliers = estimate_homography(points, points)
    assert inliers.all() and corner_error(H, np.eye(3), 100, 80) < 1e-6
    true = np.array([[0.9, 0.1, 5], [-0.05, 1.1, -3], [1e-4, 2e-4, 1]])
    moved = np.c_[points, np.ones(40)] @ true.T
    moved = moved[:, :2] / moved[:, 2:]
    moved[:5] += 30   # outliers RANSAC must drop
    H, inliers = estimate_homography(points, moved)
    assert corner_error(H, true, 100, 80) < 1e-4 and inliers[5:].all() and not inliers[:5].any()
    H, _ = estimate_homography(points[5:], moved[5:], estimator='lmeds')
    assert corner_error(H, true, 100, 80) < 1e-4
    assert estimate_homography(points[:3], points[:3])[0] is None   # fewer than 4 matches: no H
    with pytest.raises(ValueError, match="estimator must be one of"):
        estimate_homography(points, points, estimator='magsac')


def test_descriptors_are_read_at_pixel_centres_and_normalised_per_level():
    fine, coarse = torch.randn(3, 8, 10), torch.randn(5, 4, 5)
    points = np.array([[0, 0], [9, 7], [4, 3]], np.float32)   # pixels of a 10 x 8 image: fine's own cells
    d = describe([fine, coarse], points, (10, 8))
    assert d.shape == (3, 8) and np.allclose(np.linalg.norm(d, axis=1), 1)
    expected = torch.nn.functional.normalize(fine[:, points[:, 1], points[:, 0]].T, dim=1) / 2 ** 0.5
    assert np.allclose(d[:, :3], expected.numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(d[:, 3:], axis=1), 2 ** -0.5)   # each level weighs the same


def test_embedded_homographies_are_exact(hpatches_root):
    # SIFT's own matches recover every pair's H to a fraction of a pixel: the written H_1_k are the true ones
    pairs = load_hpatches(hpatches_root)
    assert [p.name for p in pairs[:2]] == ['i_000/1-2', 'i_000/1-3'] and len(pairs) == 20
    assert {p.kind for p in pairs} == {'illumination', 'viewpoint'}
    assert all(np.allclose(p.homography, np.eye(3)) for p in pairs if p.kind == 'illumination')
    from PIL import Image
    for pair in pairs:
        a, b = (np.asarray(Image.open(path).convert('RGB')) for path in (pair.source, pair.target))
        (pa, da), (pb, db) = sift_keypoints(a), sift_keypoints(b)
        matches = mutual_nearest_neighbours(*(d / np.linalg.norm(d, axis=1, keepdims=True) for d in (da, db)))
        H, _ = estimate_homography(pa[matches[:, 0]], pb[matches[:, 1]])
        assert corner_error(H, pair.homography, a.shape[1], a.shape[0]) < 2.5, pair.name


def test_hpatches_layout_errors_name_what_is_missing(hpatches_root, tmp_path):
    copy = tmp_path / 'hpatches-sequences-release'
    shutil.copytree(hpatches_root, copy)
    assert len(load_hpatches(tmp_path)) == 20   # the release folder's parent works too
    shutil.copytree(copy / 'i_000', copy / 'i_dc')   # one of the 8 D2-Net deletes: left out unless asked
    assert len(load_hpatches(copy)) == 20 and len(load_hpatches(copy, exclude=())) == 25
    (copy / 'v_001' / 'H_1_4').unlink()
    with pytest.raises(FileNotFoundError, match=r'missing homography .*v_001/H_1_4'):
        load_hpatches(copy)
    (copy / 'v_001' / 'H_1_4').write_text('1 0 0\n0 1 0\n')
    with pytest.raises(ValueError, match=r'H_1_4 is not an invertible 3 x 3 homography'):
        load_hpatches(copy)
    with pytest.raises(ValueError, match=r'holds no HPatches sequences: expected folders i_\*/ and v_\*/'):
        load_hpatches(tmp_path / 'hpatches-sequences-release' / 'i_000')
    with pytest.raises(FileNotFoundError, match='make-correspondence DIR --task geometric'):
        load_hpatches(tmp_path / 'nowhere')


@pytest.fixture(scope='module')
def geometric_result(hpatches_root):
    return evaluate_correspondence('test_sd_tiny', hpatches_root, task='geometric', image_size=64, pictures=2)


def test_evaluate_geometric_reports_every_split_and_saves(geometric_result, tmp_path):
    result = geometric_result
    assert isinstance(result, GeometricResult) and result.methods == ['test_sd_tiny (random)', 'SIFT']
    assert result.working_size == (64, 64) and len(result.pairs) == 20
    for method in result.methods:
        assert set(result.summary[method]) == {'all', 'illumination', 'viewpoint'}
        assert result.summary[method]['all']['pairs'] == 20
    assert result.summary['SIFT']['all']['acc@3'] == 100   # the known homographies, by SIFT's matches
    record = result.pairs[0]
    assert record['pair'] == 'i_000/1-2' and record['test_sd_tiny (random)']['matches'] > 0
    table = result.table()
    assert re.search(r'\nSIFT +viewpoint +10 +0 +\d+\.\d\d +[\d.]+ +100\.0 +100\.0', table)
    out = result.save(tmp_path / 'run')
    saved = json.loads((out / 'geometric.json').read_text())
    assert saved['summary'] == json.loads(json.dumps(result.summary)) and saved['settings']['pretrained'] is False
    assert sorted(p.name for p in (out / 'pictures').glob('*.png')) == ['i_000_1-6.png', 'v_001_1-6.png']
    with pytest.raises(FileExistsError, match='overwrite'):
        result.save(out)


def test_identical_images_give_zero_corner_error(hpatches_root, tmp_path):
    # every image a copy of image 1 and every H the identity: each keypoint matches itself, any backbone
    root = tmp_path / 'same'
    shutil.copytree(hpatches_root / 'v_000', root / 'v_000')
    for k in range(2, 7):
        shutil.copy(root / 'v_000' / '1.ppm', root / 'v_000' / f'{k}.ppm')
        (root / 'v_000' / f'H_1_{k}').write_text('1 0 0\n0 1 0\n0 0 1\n')
    result = evaluate_geometric('test_sd_tiny', root, image_size=64, sift_baseline=False, pictures=0)
    errors = [r['test_sd_tiny (random)']['corner_error'] for r in result.pairs]
    assert len(errors) == 5 and max(errors) < 1e-6
    assert result.summary['test_sd_tiny (random)']['all']['acc@1'] == 100


def test_bad_arguments_are_explained(hpatches_root):
    with pytest.raises(ValueError, match="detector must be 'sift' or a callable"):
        evaluate_geometric('test_sd_tiny', hpatches_root, detector='orb')
    with pytest.raises(ValueError, match="task must be one of"):
        evaluate_correspondence('test_sd_tiny', hpatches_root, task='optical-flow')
    with pytest.raises(ValueError, match="preset= and protocol= are the semantic task's"):
        evaluate_correspondence('test_sd_tiny', hpatches_root, task='geometric', protocol='trained')


def test_a_custom_detector_is_used(hpatches_root):
    grid = np.stack(np.meshgrid(np.arange(8, 180, 12), np.arange(8, 130, 12)), -1).reshape(-1, 2)
    result = evaluate_geometric('test_sd_tiny', hpatches_root, detector=lambda image: grid, image_size=64,
                                kinds=('illumination',), pictures=0)
    assert result.methods == ['test_sd_tiny (random)']   # SIFT's row needs SIFT's keypoints
    assert all(r['keypoints'] == [len(grid), len(grid)] for r in result.pairs) and len(result.pairs) == 10


def test_geometric_command_end_to_end(hpatches_root, tmp_path, capsys):
    out = tmp_path / 'run'
    argv = ['correspondence', 'test_sd_tiny', '--task', 'geometric', '--data', str(hpatches_root), '--image-size',
            '64', '--out', str(out), '--pictures', '1']
    assert diffbackbones_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith('HPatches homography estimation: 20 pairs; working size 64 x 64; RANSAC threshold 3 px')
    assert re.search(r'\nSIFT +all +20 +0 ', printed) and f'written to {out}' in printed
    saved = json.loads((out / 'geometric.json').read_text())
    assert saved['settings']['command']['task'] == 'geometric' and saved['settings']['prompt'] == ''
    with pytest.raises(SystemExit, match='overwrite'):   # an earlier run is never overwritten silently
        diffbackbones_main(argv)
    with pytest.raises(SystemExit, match="--protocol: the semantic task's, not --task geometric's"):
        diffbackbones_main(argv[:-4] + ['--protocol', 'trained', '--out', str(tmp_path / 'other')])
