"""Semantic correspondence (SPair-71k protocols): PCK, matching, both data formats, the embedded set,
the trained head, per-category prompts, ``evaluate_correspondence`` (both protocols, presets) and the
``diffbackbones correspondence`` command end to end."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffbackbones import DiffusionBackbone
from diffbackbones.commands import main as diffbackbones_main
from diffbackbones.commands.correspondence import parse_args
from diffbackbones.tasks.correspondence import (DIFT_PROMPT, CorrespondenceHead, CorrespondenceResult, FeatureSource,
                                                PCKTable, clip_loss, evaluate_correspondence, evaluate_pairs,
                                                find_pairs, keypoint_index, load_pair_list, make_correspondence_dataset,
                                                match_points, pck_correct, train_steps, training_schedule)


@pytest.fixture(scope='session')
def pairs_root(tmp_path_factory):
    return make_correspondence_dataset(tmp_path_factory.mktemp('pairs') / 'shapes-pairs', 12, 6, 6)


@pytest.fixture(scope='session')
def tiny_backbone():
    categories = ('pentagon', 'trapezoid', 'triangle')
    return DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False, image_size=64, resize_features=False,
                             prompt=[f'a photo of a {c}' for c in categories])


def test_pck_on_hand_made_matches():
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [0.0, 0.0], [90.0, 20.0]])
    predicted = truth + np.array([[3.0, 4.0], [6.0, 0.0], [0.0, 12.0], [0.0, 30.0]])   # distances 5, 6, 12, 30
    bbox, image_wh = (0, 0, 40, 60), (200, 100)          # thresholds: bbox 0.1 * 60 = 6, img 0.1 * 200 = 20
    correct = pck_correct(predicted, truth, bbox, image_wh)
    assert correct['bbox'].tolist() == [True, True, False, False]      # 6 <= 6: inclusive, as DIFT and the paper
    assert correct['img'].tolist() == [True, True, True, False]
    table = PCKTable()
    table.add('cat', correct)
    table.add('cat', pck_correct(truth[:2], truth[:2], bbox, image_wh))  # a perfect pair of 2 keypoints
    table.add('dog', pck_correct(predicted[3:], truth[3:], bbox, image_wh))
    s = table.summary()
    assert s['cat']['bbox_per_point'] == pytest.approx(100 * 4 / 6)          # pooled keypoints
    assert s['cat']['bbox_per_image'] == pytest.approx(100 * (0.5 + 1) / 2)  # mean over pairs
    assert s['all']['bbox_per_image'] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert s['all']['img_per_point'] == pytest.approx(100 * 5 / 7) and s['all']['pairs'] == 3
    assert 'dog' in table.format() and 'all' in table.format()


def test_matching_equals_full_upsampling_and_cosine_argmax():
    g = torch.Generator().manual_seed(0)
    source = [torch.randn(6, 5, 7, generator=g), torch.randn(3, 3, 4, generator=g)]
    target = [torch.randn(6, 9, 6, generator=g), torch.randn(3, 5, 3, generator=g)]
    points = np.array([[0.0, 0.0], [20.0, 3.0], [7.4, 15.6], [26.0, 16.0]])   # (x, y); 7.4 rounds to 7
    src_wh, trg_wh = (27, 17), (23, 31)
    # bands of two rows: the argmax crosses band boundaries
    predicted = match_points(source, target, points, src_wh, trg_wh, band_bytes=2 * 4 * 23 * 9)
    full_s = torch.cat([F.interpolate(m[None], (17, 27), mode='bilinear', align_corners=False)[0] for m in source])
    full_t = torch.cat([F.interpolate(m[None], (31, 23), mode='bilinear', align_corners=False)[0] for m in target])
    xs, ys = np.round(points[:, 0]).astype(int), np.round(points[:, 1]).astype(int)
    sims = F.normalize(full_s[:, ys, xs].T, dim=1) @ F.normalize(full_t, dim=0).flatten(1)
    best = sims.argmax(1)
    assert predicted.tolist() == torch.stack([best % 23, best // 23], 1).tolist()


def _pair_list(root, split: str, n: int | None = None, identity: bool = False) -> str:
    """A list-of-pairs JSON (the paper's format) in ``root``/JPEGImages: the first ``n`` pairs of ``split``, or
    with ``identity`` each source image matched with itself. Returns its name."""
    entries = [{'source_path': f'{p.category}/{p.source.name}', 'category': p.category,
                'target_path': f'{p.category}/{(p.source if identity else p.target).name}',
                'source_points': p.source_points.tolist(),
                'target_points': (p.source_points if identity else p.target_points).tolist(),
                'source_bounding_box': list(p.source_bbox),
                'target_bounding_box': list(p.source_bbox if identity else p.target_bbox)}
               for p in find_pairs(root, split)[:n]]
    name = f'{"identity" if identity else split}-{n or "all"}.json'
    (root / 'JPEGImages' / name).write_text(json.dumps(entries))
    return name


def test_identity_pairs_give_pck_100_with_any_backbone(pairs_root, tiny_backbone):
    listing = _pair_list(pairs_root, 'test', identity=True)
    same = load_pair_list(pairs_root / 'JPEGImages' / listing)
    features = FeatureSource(tiny_backbone, (64, 64), 'a photo of a {category}')
    for grid in (None, 96):  # DIFT's grid (each image's size) and the paper's square grid
        table, _ = evaluate_pairs(same, features, grid=grid)
        s = table.summary()['all']
        assert s['bbox_per_point'] == 100 and s['img_per_point'] == 100
    # another family, one activation: DIFT's preset (up-level1-upsampler-out, t=261, its prompt, zero-shot)
    # through evaluate_correspondence on the tiny SDXL. The call's own values win and the preset fills in the
    # rest; its ensemble_size=8 yields to noise=dict(ensemble=1) (given both ways, the backbone refuses)
    result = evaluate_correspondence(preset='dift', data=pairs_root, test=listing, model='test_sdxl_tiny',
                                     pretrained=False, image_size=64, noise=dict(ensemble=1))
    assert result.pck['all']['bbox_per_point'] == 100 and result.pck['all']['pairs'] == len(same)
    assert (result.model, result.protocol, result.split, result.training) == \
           ('test_sdxl_tiny', 'zero-shot', 'test', None)
    assert result.levels == [['up-level1-upsampler-out']] and result.pair_counts == {'test': len(same)}
    assert result.settings['prompt'] == DIFT_PROMPT and result.settings['pretrained'] is False
    assert result.settings['backbone_options'] == dict(image_size=64, noise=dict(ensemble=1), t=261,
                                                       resize_features=False)
    assert [r['pair'] for r in result.pairs] == [p.name for p in same]
    assert all(r['correct_bbox'] == [True] * len(r['predicted']) for r in result.pairs)
    assert 'training' not in result.table() and result.table().endswith(result.pck_table.format())


def test_embedded_set_reads_flips_and_similarity_transforms(pairs_root):
    pairs = find_pairs(pairs_root, 'trn')
    assert len(pairs) == 12 and {p.category for p in pairs} == {'pentagon', 'trapezoid', 'triangle'}
    mirrored = 0
    for pair in pairs:
        ann = json.loads(next((pairs_root / 'PairAnnotation' / 'trn').glob(f'{pair.name}.json')).read_text())
        matrix = np.array(ann['transform'])
        mapped = pair.source_points @ matrix[:, :2].T + matrix[:, 2]
        # the loader keeps (x, y) order and the pairing: the target is the transformed source, to rounding
        assert np.abs(mapped - pair.target_points).max() <= 1.5
        assert (np.linalg.det(matrix[:, :2]) < 0) == bool(ann['mirror'])
        mirrored += ann['mirror']
        assert pair.source_size == tuple(ann['src_imsize'][:2]) and pair.target_size == tuple(ann['trg_imsize'][:2])
        x0, y0, x1, y1 = pair.target_bbox
        assert (pair.target_points >= [x0 - 1, y0 - 1]).all() and (pair.target_points <= [x1, y1]).all()
    assert 0 < mirrored < len(pairs)
    # predicting by the recorded transform scores 100; by a transposed reading (y, x) it does not
    table, swapped = PCKTable(), PCKTable()
    for pair in pairs:
        matrix = np.array(json.loads(next((pairs_root / 'PairAnnotation' / 'trn').glob(f'{pair.name}.json'))
                                     .read_text())['transform'])
        mapped = pair.source_points @ matrix[:, :2].T + matrix[:, 2]
        table.add(pair.category, pck_correct(mapped, pair.target_points, pair.target_bbox, pair.target_size))
        swapped.add(pair.category, pck_correct(mapped[:, ::-1], pair.target_points, pair.target_bbox, pair.target_size))
    assert table.summary()['all']['bbox_per_point'] == 100
    assert swapped.summary()['all']['bbox_per_point'] < 50


def test_both_data_formats_load_the_same_pairs(pairs_root, tmp_path):
    spair = find_pairs(pairs_root, 'val')
    # the paper's list format: paths relative to JPEGImages with the category folder (val-360), or without
    # it (test-6); the list next to the images
    entries = [{'source_path': f'{p.category}/{p.source.name}' if i % 2 else p.source.name,
                'target_path': f'{p.category}/{p.target.name}', 'source_points': p.source_points.astype(int).tolist(),
                'target_points': p.target_points.astype(int).tolist(), 'category': p.category,
                'source_bounding_box': list(p.source_bbox), 'target_bounding_box': list(p.target_bbox)}
               for i, p in enumerate(spair)]
    (pairs_root / 'JPEGImages' / 'val-list.json').write_text(json.dumps(entries))
    listed = find_pairs(pairs_root, 'val-list.json')
    assert len(listed) == len(spair)
    for a, b in zip(spair, listed):
        assert (a.source, a.target, a.category, a.source_size, a.target_size, a.target_bbox) == \
               (b.source, b.target, b.category, b.source_size, b.target_size, b.target_bbox)
        assert np.array_equal(a.source_points, b.source_points) and np.array_equal(a.target_points, b.target_points)
    assert find_pairs(pairs_root, 'train')[0].name == find_pairs(pairs_root, 'trn')[0].name  # alias


def _copy_set(root, tmp_path):
    copy = tmp_path / 'copy'
    shutil.copytree(root, copy)
    return copy, next((copy / 'PairAnnotation' / 'test').glob('*.json'))


@pytest.mark.parametrize('tamper,message', [
    (lambda ann: ann.update(trg_imsize=[ann['trg_imsize'][1] + 1, ann['trg_imsize'][0], 3]), 'but the annotation records'),
    (lambda ann: ann['src_kps'].__setitem__(0, [10_000, 5]), 'lie outside'),
    (lambda ann: ann['src_kps'].append([1, 1]), 'must pair up one to one'),
    (lambda ann: ann.update(category='giraffe'), "category 'giraffe' has no image folder"),
    (lambda ann: ann.pop('trg_kps'), "missing SPair-71k fields ['trg_kps']"),
])
def test_bad_annotations_name_the_file_and_what_was_expected(pairs_root, tmp_path, tamper, message):
    root, file = _copy_set(pairs_root, tmp_path)
    ann = json.loads(file.read_text())
    tamper(ann)
    file.write_text(json.dumps(ann))
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(file.name)) as error:
        find_pairs(root, 'test')
    assert message in str(error.value)


def test_missing_split_and_wrong_root_are_explained(pairs_root, tmp_path):
    root, _ = _copy_set(pairs_root, tmp_path)
    shutil.rmtree(root / 'PairAnnotation' / 'val')
    with pytest.raises(FileNotFoundError, match=r'PairAnnotation/val.*expected SPair-71k'):
        find_pairs(root, 'val')
    with pytest.raises(FileNotFoundError, match='not an SPair-71k root'):
        find_pairs(tmp_path, 'test')
    with pytest.raises(ValueError, match='unknown SPair-71k split'):
        find_pairs(root, 'training')


def test_clip_loss_equals_the_full_similarity_matrix_form():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 6, 6, generator=g), torch.randn(8, 6, 6, generator=g)
    si, ti = torch.tensor([0, 7, 35, 12]), torch.tensor([3, 3, 20, 30])
    # the original: every pixel against every pixel, then the keypoint rows
    fa, fb = F.normalize(a.flatten(1).T, dim=1), F.normalize(b.flatten(1).T, dim=1)
    full = fa @ fb.T / 0.07
    expected = (F.cross_entropy(full[si], ti) + F.cross_entropy(full.T[ti], si)) / 2
    assert torch.allclose(clip_loss(a, b, si, ti), expected, atol=1e-5)
    # keypoints to indices: rescaled to the grid, rounded half to even, clipped
    assert keypoint_index(np.array([[0.0, 0.0], [99.0, 49.0], [25.0, 12.5]]), (100, 50), 4).tolist() == [0, 15, 4 + 1]


def test_trained_head_lowers_its_loss(pairs_root, tiny_backbone):
    pairs = find_pairs(pairs_root, 'trn')[:3]
    features = FeatureSource(tiny_backbone, (64, 64), 'a photo of a {category}')
    torch.manual_seed(0)
    head = CorrespondenceHead(sum(i['num_chs'] for i in tiny_backbone.feature_info), size=32)

    def loss_on(pairs):
        with torch.no_grad():
            return float(np.mean([clip_loss(head(features(p.source, p.category)), head(features(p.target, p.category)),
                                            keypoint_index(p.source_points, p.source_size, 32),
                                            keypoint_index(p.target_points, p.target_size, 32)).item() for p in pairs]))
    before = loss_on(pairs)
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-4, weight_decay=0.01)
    order = training_schedule(len(pairs), 5000, 8, np.random.default_rng(0))
    assert len(order) == 24 and sorted(order[:3]) == [0, 1, 2]   # each epoch a permutation
    train_steps(head, features, pairs, order, optimizer)
    assert loss_on(pairs) < before - 0.1


def test_prompts_per_category_condition_the_features(pairs_root, tiny_backbone):
    pair = find_pairs(pairs_root, 'test')[0]
    features = FeatureSource(tiny_backbone, (64, 64), 'a photo of a {category}', cache_mb=0)
    a = features(pair.source, 'pentagon')
    b = features(pair.source, 'triangle')
    assert not torch.allclose(a[0], b[0])
    assert torch.equal(a[0], features(pair.source, 'pentagon')[0])
    assert tiny_backbone.conditioning.prompt == 'a photo of a pentagon'   # the first prompt is active again
    with pytest.raises(ValueError, match="'a photo of a giraffe' was not encoded.*prompt=\\[...\\]"):
        features(pair.source, 'giraffe')


def test_dift_preset_sets_its_configuration_and_yields_to_explicit_options():
    args = parse_args(['--preset', 'dift', '--data', 'x'])
    assert (args.model, args.activations, args.t, args.ensemble, args.image_size, args.protocol) == \
           ('sd21', 'up-level1-upsampler-out', 261, 8, 768, 'zero-shot')
    assert args.prompt == 'a photo of a {category}' and args.weights == 'stabilityai/stable-diffusion-2-1'
    assert parse_args(['--preset', 'dift', '--data', 'x', '--t', '100']).t == 100
    assert parse_args(['--preset', 'dift', '--data', 'x', '--ensemble=1']).ensemble == 1  # given, though the default
    assert parse_args(['sd15', '--data', 'x']).prompt.startswith('a highly realistic photo')
    assert parse_args(['test_sd_tiny', '--preset', 'dift', '--data', 'x']).model == 'test_sd_tiny'  # named: kept
    with pytest.raises(SystemExit):
        parse_args(['--data', 'x'])   # no model and no --preset


@pytest.fixture(scope='module')
def trained_result(pairs_root):
    # the one training run of this file: 4 training pairs x 4 epochs, validated on 3 pairs (list-of-pairs
    # JSONs) at step 10 (the paper's rule) and the last; the whole test split
    return evaluate_correspondence('test_sd_tiny', pairs_root, protocol='trained',
                                   train=_pair_list(pairs_root, 'trn', 4), val=_pair_list(pairs_root, 'val', 3),
                                   steps_per_epoch=4, epochs=4, val_every=10, feature_size=32, load_size=64,
                                   pictures=2, levels=[0, 2])


def test_trained_protocol_reports_the_test_split_and_saves(trained_result, tmp_path):
    result = trained_result
    assert isinstance(result, CorrespondenceResult) and result.protocol == 'trained'
    assert result.split == 'test' and result.pck['all']['pairs'] == 6
    assert result.pair_counts == {'train': 4, 'val': 3, 'test': 6}
    assert result.levels == [['up-level3-repeat0-vit-block0-self-k'],   # levels 0 and 2 of the preset
                             ['up-level1-repeat1-vit-block0-cross-q', 'up-level1-repeat2-res-out']]
    training = result.training
    assert [v['step'] for v in training['validations']] == [11, 16]   # step 10 (paper's rule) and the last
    assert training['steps'] == len(training['losses']) == 16 and training['selected_step'] in (11, 16)
    text = result.table()
    assert 'PCK@0.1 bbox' in text and 'all' in text and 'step 11: val PCK@0.1' in text
    assert f'weights of step {training["selected_step"]} selected on val' in text
    out = result.save(tmp_path / 'run')
    saved = json.loads((out / 'correspondence.json').read_text())
    assert saved == json.loads(json.dumps(result.to_dict(), default=str))
    assert saved['pck']['all']['keypoints'] == sum(len(p['predicted']) for p in saved['pairs'])
    pictures = sorted((out / 'pictures').glob('*.png'))
    assert [p.stem for p in pictures] == sorted(p['pair'].replace(':', '_') for p in saved['pairs'][:2])
    pair = result.matched[0]
    (sw, sh), (tw, th) = pair.source_size, pair.target_size
    zoom = round(384 / max(sh, th))   # source | target, small images drawn larger
    with Image.open(out / 'pictures' / f'{pair.name.replace(":", "_")}.png') as picture:
        assert zoom > 1 and picture.size == (zoom * (sw + tw), zoom * max(sh, th))
    with pytest.raises(FileExistsError, match='--overwrite'):   # an earlier run is never overwritten silently
        result.save(out)
    assert result.save(out, overwrite=True) == out


def test_evaluate_correspondence_explains_bad_arguments(pairs_root):
    with pytest.raises(ValueError, match=r'model \(or preset\) is required'):
        evaluate_correspondence(data=pairs_root)
    with pytest.raises(ValueError, match="unknown correspondence preset 'difft'.*'dift'"):
        evaluate_correspondence(preset='difft', data=pairs_root)
    with pytest.raises(ValueError, match='protocol must be one of'):
        evaluate_correspondence('test_sd_tiny', pairs_root, protocol='supervised')
    (pairs_root / 'JPEGImages' / 'empty.json').write_text('[]')
    with pytest.raises(ValueError, match=r"the test split \('empty.json'\) of .* has no pairs"):
        evaluate_correspondence('test_sd_tiny', pairs_root, test='empty.json')


def test_correspondence_command_end_to_end(pairs_root, tmp_path, capsys):
    out = tmp_path / 'run'
    # the console script's entry; DIFT's preset (zero-shot, its one activation, t and prompt) yields to the
    # flags given; two test pairs from a list-of-pairs JSON, each image matched with itself: every keypoint
    # is found (as with the same settings from Python in test_identity_pairs_give_pck_100_with_any_backbone)
    argv = ['correspondence', 'test_sdxl_tiny', '--preset', 'dift', '--weights', 'random', '--image-size',
            '64', '--ensemble', '1', '--data', str(pairs_root), '--test',
            _pair_list(pairs_root, 'test', 2, identity=True), '--out', str(out), '--pictures', '1']
    assert diffbackbones_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith('test_sdxl_tiny zero-shot: levels') and 'PCK@0.1 bbox' in printed
    assert re.search(r'\n +all +2 +\d+ +100\.00 +100\.00 +100\.00 +100\.00\n', printed)
    assert f'pictures in {out / "pictures"}' in printed
    saved = json.loads((out / 'correspondence.json').read_text())
    settings = saved['settings']   # the command's flags, the preset applied
    assert (settings['protocol'], settings['prompt'], settings['t'], settings['ensemble'], settings['weights']) == \
           ('zero-shot', DIFT_PROMPT, 261, 1, 'random')
    assert saved['split'] == 'test' and saved['pck']['all']['pairs'] == 2 and saved['training'] is None
    assert saved['pck']['all']['bbox_per_point'] == 100
    assert saved['levels'] == [['up-level1-upsampler-out']]   # the preset's one layer id
    assert len(list((out / 'pictures').glob('*.png'))) == 1
    with pytest.raises(SystemExit, match='--overwrite'):   # an earlier run is never overwritten silently
        diffbackbones_main(argv)
