"""Temporal correspondence (DAVIS-2017 label propagation, JHMDB keypoints): J, F and PCK against hand-computed
values, DINO's propagation on known answers (a still video, a moving one), a still video propagated perfectly
through the whole DAVIS path, the layouts and their errors, ``evaluate_temporal`` and the command end to end."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffbackbones.commands import main as diffbackbones_main
from diffbackbones.tasks.correspondence import evaluate_correspondence
from diffbackbones.tasks.correspondence.temporal import (Propagation, TemporalResult, boundary_f_measure,
                                                         boundary_map, keypoint_maps, load_davis, load_jhmdb,
                                                         make_temporal_dataset, pck, propagate, read_keypoints,
                                                         region_similarity, score_video)
from diffbackbones.tasks.correspondence.temporal.davis import write_labels
from diffbackbones.tasks.correspondence.temporal.evaluate import davis_working_size, run_davis
from diffbackbones.tasks.correspondence.temporal.propagation import one_hot


@pytest.fixture(scope='session')
def video_root(tmp_path_factory):
    return make_temporal_dataset(tmp_path_factory.mktemp('temporal') / 'video', videos=2, frames=5)


def _square(size, rows, cols):
    mask = np.zeros((size, size), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_region_similarity_by_hand():
    assert region_similarity(_square(6, (1, 3), (1, 3)), _square(6, (1, 4), (1, 3))) == pytest.approx(4 / 6)
    assert region_similarity(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0   # both empty
    assert region_similarity(_square(4, (0, 1), (0, 1)), np.zeros((4, 4))) == 0.0


def test_boundary_map_is_the_official_seg2bmap():
    # the 2 x 2 square at rows/cols 2..3 of a 6 x 6 mask (the official code's output, checked by hand)
    expected = [[0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0], [0, 1, 1, 1, 0, 0],
                [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert boundary_map(_square(6, (2, 4), (2, 4))).astype(int).tolist() == expected
    assert not boundary_map(np.ones((5, 6), bool)).any()   # a full frame has no boundary


def test_boundary_f_measure_by_hand():
    true = _square(8, (2, 4), (2, 4))
    assert boundary_f_measure(true, true) == 1.0
    # one pixel of tolerance (a cross): shifted one column every boundary pixel is matched; shifted two,
    # 5 of the 8 on each side are (worked out cell by cell), so P = R = F = 5/8
    assert boundary_f_measure(_square(8, (2, 4), (3, 5)), true, tolerance=1) == 1.0
    assert boundary_f_measure(_square(8, (2, 4), (4, 6)), true, tolerance=1) == pytest.approx(5 / 8)
    assert boundary_f_measure(np.zeros((8, 8)), true) == 0.0     # nothing predicted: P = 1, R = 0
    assert boundary_f_measure(np.zeros((8, 8)), np.zeros((8, 8))) == 1.0
    # the official tolerance: ceil(0.008 x diagonal), 8 px at 854 x 480; far masks do not match
    far_true, far = np.zeros((480, 854), bool), np.zeros((480, 854), bool)
    far_true[100:150, 100:150], far[100:150, 109:159] = True, True
    assert boundary_f_measure(far, far_true) < 1.0
    far[100:150, 100:150], far[100:150, 150:159] = True, False
    far[100:150, 108:158] = False
    far[100:150, 108:158] = True   # 8 columns off: all within the disk of radius 8
    assert boundary_f_measure(far, far_true) == 1.0


def test_score_video_scores_frames_between_the_first_and_the_last():
    true = [np.array([[1, 0], [2, 2]], np.uint8)] * 4
    wrong = np.zeros((2, 2), np.uint8)
    # frames 1 and 2 are scored: object 1 right in frame 1 only, object 2 right in both
    predicted = [wrong, true[0], np.array([[0, 0], [2, 2]], np.uint8), wrong]
    scores = score_video(predicted, true)
    assert scores[1]['J'] == 0.5 and scores[2]['J'] == 1.0


def test_pck_by_hand():
    true = np.array([[[0, 0], [3, 4], [1, 1]]] * 2, float)          # frame 1: box diagonal 5, x 0.6 = 3
    predicted = np.array([[[9, 9]] * 3, [[0.2, 0], [3, 4.5], [1, 1]]])  # off by 0.2 / 3, 0.5 / 3 and 0
    assert pck([predicted], [true]) == pytest.approx({0.1: 200 / 3, 0.2: 100.0})   # frame 0 is not scored
    predicted[1, 2] = -1   # joint 3 invisible: left out (the box is that of the visible joints, the same here)
    assert pck([predicted], [true]) == {0.1: 50.0, 0.2: 100.0}


def test_keypoints_survive_their_heat_maps():
    points = np.array([[3.0, 4.0], [10.0, 2.0], [-5.0, 3.0]])
    maps = keypoint_maps(points, 8, 12)
    assert maps.shape == (4, 8, 12) and maps[2, 2, 10] == 1.0 and maps[3].sum() == 0   # off the grid: no mass
    assert torch.equal(maps[0], (maps[1:].sum(0) == 0).float())                        # background channel
    read = read_keypoints(maps)
    assert np.abs(read[:2] - points[:2]).max() < 0.25 and (read[2] == -1).all()


def _position_features(h, w, shift=0):
    """One feature per position (a one-hot), the whole grid moved ``shift`` columns: distinct everywhere."""
    features = torch.eye(h * w).reshape(h * w, h, w)
    return torch.roll(features, shift, dims=2)


def test_a_still_video_propagates_perfectly_and_a_moving_one_follows():
    labels = torch.zeros(6, 8, dtype=torch.long)
    labels[1:4, 2:5], labels[4:6, 5:7] = 1, 2
    first = one_hot(labels, 3)
    still = list(propagate(first, [_position_features(6, 8)] * 5))
    assert len(still) == 4 and all(torch.equal(soft.argmax(0), labels) for soft in still)
    # frame 1's context is frame 0 alone: its cell, exp(1 / 0.1), against the 47 others' exp(0) (ties with the
    # 5th value are kept, as DINO keeps them); a cell of object 2 (4 cells) has 44 others of other labels.
    # Later frames also read the soft labels predicted before them, so the gap grows, slowly.
    assert (still[0] - first).abs().max() == pytest.approx(44 / (np.exp(10) + 47), rel=1e-4)
    assert all((soft - first).abs().max() < 5e-3 for soft in still[1:])
    # every frame the whole grid one column further right (wrapping): the labels move with it
    protocol = Propagation(context=2, radius=0, topk=5, temperature=0.1)   # radius 0: no neighbourhood (it wraps)
    moving = list(propagate(first, [_position_features(6, 8, t) for t in range(4)], protocol))
    assert all(torch.equal(soft.argmax(0), torch.roll(labels, t + 1, dims=1)) for t, soft in enumerate(moving))


class _PositionSource:
    """A feature source (what ``build_feature_source`` returns) whose features name each grid cell."""
    size = (64, 48)

    def __call__(self, path, category):
        return [_position_features(6, 8)]


def test_a_still_video_keeps_grid_aligned_masks_through_the_davis_path(tmp_path):
    # bands of whole 8-pixel cell rows survive nearest downsampling, propagation, bilinear upsampling and
    # min-max + argmax exactly: J = F = 1 for every object (a convex corner would not: bilinear upsampling of
    # one-hot maps rounds it off, in DINO's pipeline as here)
    labels = np.zeros((48, 64), np.uint8)
    labels[8:24], labels[32:40] = 1, 2
    for folder in ('JPEGImages/480p/still', 'Annotations/480p/still'):
        (tmp_path / folder).mkdir(parents=True)
    for t in range(5):
        Image.new('RGB', (64, 48)).save(tmp_path / 'JPEGImages/480p/still' / f'{t:05d}.jpg')
        write_labels(tmp_path / 'Annotations/480p/still' / f'{t:05d}.png', labels)
    predictions, scores, held = run_davis(_PositionSource(), load_davis(tmp_path), Propagation())
    assert all(np.array_equal(p, labels) for p in predictions['still'])
    assert scores == {'still': {1: dict(J=1.0, F=1.0), 2: dict(J=1.0, F=1.0)}}
    assert held == scores   # a still video: holding frame 0 is the truth too


def test_dino_working_size():
    assert davis_working_size((854, 480), 480) == (832, 480)   # DINO: 480 x 832 for DAVIS
    assert davis_working_size((480, 854), 128) == (128, 192)
    assert davis_working_size((228, 128), 128) == (192, 128)


def test_embedded_videos_in_both_layouts(video_root):
    videos = load_davis(video_root)
    assert [v.name for v in videos] == ['shapes_000', 'shapes_001'] and len(videos[0].frames) == 5
    first = np.array(Image.open(videos[0].annotations[0]))
    assert Image.open(videos[0].annotations[0]).mode == 'P' and set(np.unique(first)) == {0, 1, 2, 3}
    tracks = load_jhmdb(video_root / 'jhmdb')
    assert [v.name for v in tracks] == ['shapes/shapes_000', 'shapes/shapes_001']
    assert tracks[0].joints.shape == (5, 6, 2) and len(tracks[0].frames) == 5
    # the tracked pentagon's centre (the last joint) lies inside object 1's mask, or under an occluder
    x, y = np.round(tracks[0].joints[0, -1]).astype(int)
    assert first[y, x] in (1, 2, 3)
    still = make_temporal_dataset(video_root.parent / 'still', videos=1, frames=3, static=True)
    frames = [np.array(Image.open(p)) for p in load_davis(still)[0].annotations]
    assert all(np.array_equal(f, frames[0]) for f in frames)


def test_layout_errors_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'neither DAVIS .* nor JHMDB'):
        evaluate_correspondence('test_sd_tiny', tmp_path, task='temporal')
    with pytest.raises(FileNotFoundError, match='is not a DAVIS folder'):
        load_davis(tmp_path)
    (tmp_path / 'JPEGImages/480p/a').mkdir(parents=True)
    (tmp_path / 'Annotations/480p/a').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(tmp_path / 'JPEGImages/480p/a/00000.jpg')
    with pytest.raises(FileNotFoundError, match=r'1 annotation\(s\) of a missing'):
        load_davis(tmp_path)


@pytest.fixture(scope='module')
def temporal_result(video_root):
    return evaluate_correspondence('test_sd_tiny', video_root, task='temporal', pictures=1)


def test_evaluate_temporal_reports_both_sets_and_saves(temporal_result, tmp_path):
    result = temporal_result
    assert isinstance(result, TemporalResult) and result.label == 'test_sd_tiny (random)'
    davis, jhmdb = result.results['davis'], result.results['jhmdb']
    assert (davis['videos'], davis['objects'], davis['working_size']) == (2, 6, [64, 64])
    assert davis['JF'] == pytest.approx((davis['J'] + davis['F']) / 2) and 0 <= davis['JF'] <= 100
    assert set(davis['per_video']['shapes_000']) == {1, 2, 3}
    assert jhmdb['videos'] == 2 and 0 <= jhmdb['PCK@0.1'] <= jhmdb['PCK@0.2'] <= 100
    assert np.array(jhmdb['predicted']['shapes/shapes_000']).shape == (5, 6, 2)
    assert re.search(r'\ntest_sd_tiny \(random\) +[\d.]+ +[\d.]+ +[\d.]+\n', result.table())
    out = result.save(tmp_path / 'run')
    saved = json.loads((out / 'temporal.json').read_text())
    assert saved['settings']['davis'] == dict(context=7, radius=12, topk=5, temperature=0.1)
    assert [p.name for p in (out / 'pictures').glob('*.png')] == ['shapes_000.png']
    with pytest.raises(FileExistsError, match='overwrite'):
        result.save(out)


def test_temporal_command_end_to_end(video_root, tmp_path, capsys):
    out = tmp_path / 'run'
    argv = ['correspondence', 'test_sd_tiny', '--task', 'temporal', '--data', str(video_root / 'jhmdb'),
            '--short-side', '64', '--out', str(out), '--pictures', '0']
    assert diffbackbones_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith('JHMDB keypoint propagation (2 videos; working size 64 x 64)') and 'DAVIS' not in printed
    assert json.loads((out / 'temporal.json').read_text())['settings']['short_side'] == 64
    with pytest.raises(SystemExit, match='--short-side'):
        diffbackbones_main(argv[:-6] + ['--image-size', '64', '--out', str(tmp_path / 'other')])


def test_on_still_videos_the_held_still_baseline_is_perfect(video_root):
    still = make_temporal_dataset(video_root.parent / 'still-baseline', videos=1, frames=4, static=True)
    result = evaluate_correspondence('test_sd_tiny', still, task='temporal', pictures=0)
    assert result.results['davis']['held_still'] == dict(JF=100.0, J=100.0, F=100.0)
    assert result.results['jhmdb']['held_still'] == {'PCK@0.1': 100.0, 'PCK@0.2': 100.0}
    assert re.search(r'\nframe 0 held still +100\.0 +100\.0 +100\.0\n', result.table())
