"""Label-scarce segmentation (DDPM-seg protocol): metric, features, classifier rules, data, the library call
(``diffbackbones.evaluate_probe``) end to end, and the ``diffbackbones probe`` command."""
import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffbackbones.commands import main as diffbackbones_command
from diffbackbones.commands.probe import main as probe_command
from diffbackbones.tasks.label_scarce.evaluate import ProbeResult, evaluate_probe, palette
from diffbackbones.tasks.label_scarce.pixel_classifier import (EarlyStop, PixelClassifier, PixelFeatures,
                                                               StackedClassifiers, clean_labels, compute_iou,
                                                               find_split, label_map_of, load_pair, majority_vote,
                                                               predict, read_label_map, redraw_split, train_ensemble)
from diffbackbones.data.shapes import make_shapes_dataset

from conftest import REPO

# the fast setting of the end-to-end runs: 64 px labels, 3 classifiers, 3 epochs, 256-pixel batches
FAST = dict(resolution=64, models=3, max_epochs=3, batch_size=256)
FAST_FLAGS = ['--resolution', '64', '--models', '3', '--max-epochs', '3', '--batch-size', '256']


def test_miou_on_hand_made_predictions_counts_an_absent_class_as_zero():
    gt = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])
    result = compute_iou([pred], [gt], n_classes=3, ignore=255)
    # class 0: inter 3 {(0,0),(1,0),(1,1)}, union 5; class 1: inter 2, union 5 (the ignored pixel predicted 1
    # counts, as in the original); class 2: absent from both -> IoU 0
    assert result['intersection'] == {0: 3, 1: 2, 2: 0} and result['union'] == {0: 5, 1: 5, 2: 0}
    assert result['iou'][0] == pytest.approx(0.6) and result['iou'][1] == pytest.approx(0.4)
    assert result['iou'][2] == 0
    assert result['miou'] == pytest.approx((0.6 + 0.4 + 0) / 3)
    assert result['miou_present'] == pytest.approx(0.5)
    # summed over the test set, not averaged per image
    two = compute_iou([pred, torch.zeros_like(pred)], [gt, torch.zeros_like(gt)], n_classes=2, ignore=255)
    assert two['iou'][0] == pytest.approx((3 + 8) / (5 + 8))
    # ignore=0 (DDPM-seg's Bedroom-28): class 0 is left out of the mean
    assert set(compute_iou([pred], [gt], n_classes=3, ignore=0)['iou']) == {1, 2}


@pytest.mark.parametrize('native,out', [((7, 5), (32, 32)), ((16, 16), (64, 48)), ((3, 9), (20, 20))])
def test_sampled_pixel_features_equal_full_upsampling(native, out):
    torch.manual_seed(0)
    levels = [torch.randn(3, 4, *native), torch.randn(3, 2, native[0] * 2, native[1] * 2)]
    features = PixelFeatures(levels, out)
    for n in range(3):
        full = features.upsampled(n)
        ys, xs = torch.meshgrid(torch.arange(out[0]), torch.arange(out[1]), indexing='ij')
        got = features.gather(torch.full((ys.numel(),), n), ys.flatten(), xs.flatten())
        assert torch.allclose(got.T.reshape(full.shape), full, atol=1e-6)
    assert features.channels == 6 and features.nbytes == sum(level.numel() * 4 for level in levels)


def test_predictions_from_sampled_features_equal_those_from_full_upsampling():
    torch.manual_seed(0)
    features = PixelFeatures([torch.randn(2, 8, 6, 6), torch.randn(2, 4, 3, 3)], (24, 24))
    models = [PixelClassifier(12, 3, torch.Generator().manual_seed(s)).eval() for s in range(3)]
    for n in range(2):
        full = features.upsampled(n).flatten(1).T  # (576, 12)
        with torch.no_grad():
            expected = majority_vote(torch.stack([m(full).argmax(1) for m in models], 1)).view(24, 24)
        assert torch.equal(predict(models, features, n, chunk=100), expected)


def test_majority_vote_takes_the_most_frequent_label_and_the_smallest_on_ties():
    votes = torch.tensor([[2, 2, 1], [0, 1, 1], [3, 1, 2], [4, 4, 4]])
    assert majority_vote(votes).tolist() == [2, 1, 1, 4]


def test_early_stop_waits_past_epoch_three_then_counts_iterations_without_a_new_best():
    stop = EarlyStop()
    assert not any(stop.step(epoch, 5.0) for epoch in range(4) for _ in range(100))  # epochs 0..3: never
    assert not stop.step(4, 1.0)  # first counted iteration: a new best
    assert not any(stop.step(4, 1.0) for _ in range(50))  # 50 without beating it: not yet (> 50 stops)
    assert stop.step(4, 1.0)  # the 51st
    stop = EarlyStop()
    for _ in range(40):
        stop.step(5, 2.0)
    assert not stop.step(5, 0.5) and stop.count == 0  # a new best resets the count


def test_classifier_architecture_and_init_are_ddpm_segs():
    small, large = PixelClassifier(10, 21), PixelClassifier(10, 34)
    assert [m.out_features for m in small if isinstance(m, torch.nn.Linear)] == [128, 32, 21]
    assert [m.out_features for m in large if isinstance(m, torch.nn.Linear)] == [256, 128, 34]
    assert [type(m).__name__ for m in small] == ['Linear', 'ReLU', 'BatchNorm1d'] * 2 + ['Linear']
    big = PixelClassifier(3000, 21)
    assert big[0].weight.detach().std().item() == pytest.approx(0.02, rel=0.02)
    assert float(big[0].bias.detach().abs().sum()) == 0


def test_small_classes_become_ignore_in_training_labels():
    label = torch.zeros(16, 16, dtype=torch.long)
    label[:5, :4] = 1  # 20 pixels: kept
    label[10, :16] = 2  # 16 pixels: dropped
    label[15, 15] = 3  # 1 pixel: dropped
    cleaned = clean_labels(label, ignore=255)
    assert int((cleaned == 1).sum()) == 20 and not (cleaned == 2).any() and not (cleaned == 3).any()
    assert int((cleaned == 255).sum()) == 17


def _separable():
    level = torch.zeros(2, 2, 8, 8)
    level[:, 0, :, :4], level[:, 1, :, 4:] = 1.0, 1.0  # left half vs right half
    level += 0.1 * torch.randn(level.shape, generator=torch.Generator().manual_seed(1))
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing='ij')
    pixels = torch.stack([torch.arange(128) // 64, ys.flatten().repeat(2), xs.flatten().repeat(2)], 1)
    return PixelFeatures([level], (8, 8)), pixels, (pixels[:, 2] >= 4).long()


def test_ensemble_learns_separable_pixels_and_stops_by_the_rule():
    features, pixels, targets = _separable()
    models, logs = train_ensemble(features, pixels, targets, 2, seeds=[0, 1, 2], max_epochs=40, batch_size=16)
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing='ij')
    for model in models:
        assert not model.training and torch.equal(predict([model], features, 1), (xs >= 4).long())
    assert not any(log['early_stopped'] for log in logs)  # the loss kept improving: all 40 epochs
    # labels that cannot be learnt: the loss stalls and the rule stops each classifier on its own, no
    # earlier than 51 counted iterations after epoch index 3 (8 iterations an epoch)
    noise = torch.randint(0, 2, targets.shape, generator=torch.Generator().manual_seed(0))
    _, logs = train_ensemble(features, pixels, noise, 2, seeds=[0, 1, 2], max_epochs=40, batch_size=16)
    assert all(log['early_stopped'] and log['iterations'] > 4 * 8 + 51 for log in logs)
    assert len({log['iterations'] for log in logs}) > 1


def test_stacked_classifiers_compute_what_each_member_computes():
    """The batched ensemble is only an implementation: outputs, gradients and BatchNorm statistics of each
    member equal those of its PixelClassifier (so Adam, elementwise, takes the same steps)."""
    members = [PixelClassifier(12, 3, torch.Generator().manual_seed(s)) for s in range(2)]
    stacked = StackedClassifiers(members).train()
    x = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(5))
    targets = torch.randint(0, 3, (2, 16), generator=torch.Generator().manual_seed(6))
    out = stacked(x)
    losses = torch.nn.functional.cross_entropy(out.flatten(0, 1), targets.flatten(), reduction='none')
    losses.view(2, 16).mean(1).sum().backward()
    for m, member in enumerate(members):
        member.train()
        alone = member(x[m])
        torch.nn.functional.cross_entropy(alone, targets[m]).backward()
        assert torch.allclose(out[m], alone, atol=1e-6)
        for k, i in enumerate((0, 3, 6)):
            assert torch.allclose(stacked.weights[k].grad[m].T, member[i].weight.grad, atol=1e-6)
            assert torch.allclose(stacked.biases[k].grad[m, 0], member[i].bias.grad, atol=1e-6)
    copies = [PixelClassifier(12, 3) for _ in range(2)]
    stacked.write_back(copies)
    for member, copy in zip(members, copies):  # running statistics moved as BatchNorm1d moves them
        for key, value in member.state_dict().items():
            if 'num_batches' not in key:
                assert torch.allclose(value, copy.state_dict()[key], atol=1e-6), key
    stacked.eval()
    with torch.no_grad():
        assert torch.allclose(stacked(x)[1], copies[1].eval()(x[1]), atol=1e-6)


def test_data_layouts_and_errors_name_the_file(tmp_path):
    ddpm = make_shapes_dataset(tmp_path / 'ddpm', n_train=3, n_val=2, layout='ddpm-seg')
    mm = make_shapes_dataset(tmp_path / 'mm', n_train=3, n_val=2)
    assert [p.name for p, _ in find_split(ddpm, 'test')] == ['00000.png', '00001.png']
    assert find_split(ddpm, 'train')[0][1].suffix == '.npy'
    assert find_split(mm, 'test')[0][1] == mm / 'ann_dir' / 'val' / '00000.png'  # mmseg: val serves as test
    image, label = load_pair(*find_split(ddpm, 'train')[0], resolution=64)
    assert image.shape == (3, 64, 64) and label.shape == (64, 64) and -1 <= image.min() and image.max() <= 1
    assert set(label.unique().tolist()) <= {0, 1, 2, 3}
    with pytest.raises(FileNotFoundError, match=r'No .train. split under .*real/train'):
        find_split(tmp_path / 'nowhere', 'train')
    (ddpm / 'real' / 'train' / '00001.npy').unlink()
    with pytest.raises(FileNotFoundError, match=r'00001.png has no label map: expected .*00001.npy'):
        find_split(ddpm, 'train')
    np.save(ddpm / 'real' / 'train' / '00001.npy', np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match=r'00001.npy: label map of shape \(10, 12\) does not match'):
        load_pair(*find_split(ddpm, 'train')[1])
    Image.new('RGB', (20, 10)).save(ddpm / 'real' / 'train' / '00002.png')
    np.save(ddpm / 'real' / 'train' / '00002.npy', np.zeros((10, 20), np.uint8))
    with pytest.raises(ValueError, match='square images'):
        load_pair(*find_split(ddpm, 'train')[2])


def test_a_label_map_is_never_the_image_and_npy_wins_where_both_exist(tmp_path):
    """DDPM-seg keeps STEM.npy beside STEM.png: looking in the image's own folder must find the .npy."""
    Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
    with pytest.raises(FileNotFoundError, match=r'a.png has no label map: expected a.npy or a.png .*not its label map'):
        label_map_of(tmp_path / 'a.png', tmp_path)
    np.save(tmp_path / 'a.npy', np.ones((8, 8), np.uint8))
    assert label_map_of(tmp_path / 'a.png', tmp_path) == tmp_path / 'a.npy'
    labels = tmp_path / 'ann'
    labels.mkdir()
    Image.new('L', (8, 8)).save(labels / 'a.png')
    assert label_map_of(tmp_path / 'a.png', labels) == labels / 'a.png'        # mmseg: a PNG in another folder
    np.save(labels / 'a.npy', np.ones((8, 8), np.uint8))
    assert label_map_of(tmp_path / 'a.png', labels) == labels / 'a.npy'
    Image.new('RGB', (8, 8)).save(labels / 'b.png')
    with pytest.raises(ValueError, match=r'b.png: a label map holds one class id per pixel, \(H, W\); got shape \(8, 8, 3\)'):
        read_label_map(labels / 'b.png')


def test_redrawn_splits_keep_sizes_and_depend_on_the_seed():
    a, b = redraw_split(30, 20, seed=0), redraw_split(30, 20, seed=1)
    assert len(a[0]) == 30 and len(a[1]) == 20 and sorted(a[0] + a[1]) == list(range(50))
    assert a != b and a == redraw_split(30, 20, seed=0)


@pytest.fixture(scope='module')
def probed(tmp_path_factory):
    """One library run on a small embedded set (6 train / 4 test, DDPM-seg's layout), two redrawn splits."""
    data = make_shapes_dataset(tmp_path_factory.mktemp('probe') / 'shapes-ddpm', n_train=6, n_val=4,
                               layout='ddpm-seg')
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        result = evaluate_probe('shapes_sd_tiny', data, splits=2, **FAST)
    assert printed.getvalue() == ''  # a library call: no prints, no progress bars unless progress=True
    return data, result


@pytest.mark.slow
def test_evaluate_probe_beats_chance_clearly(probed):
    data, result = probed
    assert isinstance(result, ProbeResult)
    # chance: labelling every pixel background gives IoU(background) ~ its share and 0 elsewhere
    labels = [torch.from_numpy(np.load(p)) for p in sorted((data / 'real' / 'test').glob('*.npy'))]
    chance = compute_iou([torch.zeros_like(lbl) for lbl in labels], labels, 4)['miou']
    assert result.miou_mean / 100 > chance + 0.2, (result.miou_mean, chance)
    assert len(result.splits) == 2 and result.splits[0]['test'] != result.splits[1]['test']
    mious = [100 * split['miou'] for split in result.splits]
    assert result.miou_mean == pytest.approx(np.mean(mious)) and result.miou_std == pytest.approx(np.std(mious, ddof=1))
    assert result.miou_present_mean == pytest.approx(np.mean([100 * s['miou_present'] for s in result.splits]))
    for k, split in enumerate(result.splits):  # redrawn splits of the published sizes, seeds seed + k
        assert split['seed'] == k and len(split['train']) == 6 and len(split['test']) == 4
        assert sorted(split['train'] + split['test']) == sorted(map(str, (data / 'real').glob('*/*.png')))
        assert len(split['classifiers']) == 3 and all(log['epochs'] == 3 for log in split['classifiers'])
    settings = result.settings
    assert settings['n_classes'] == 4 and settings['model'] == 'shapes_sd_tiny' and settings['splits'] == 2
    assert settings['backbone_options']['image_size'] == 128 and settings['backbone_options']['resize_features'] is False
    assert settings['t'] == 50 and len(settings['levels']) == len(settings['channels']) == 3
    assert result.features['channels'] == sum(settings['channels']) == sum(c for c, _, _ in result.features['level_shapes'])
    # split 1's test images, with the predictions its IoUs were computed from
    assert [p.name for p in result.pictures] == [f'{Path(p).parent.name}-{Path(p).stem}.png'
                                                 for p in result.splits[0]['test']]
    again = compute_iou([p.pred for p in result.pictures], [p.label for p in result.pictures], 4)
    assert again['iou'] == result.splits[0]['iou']
    assert all(p.image.shape == (3, 64, 64) and p.pred.shape == p.label.shape == (64, 64) for p in result.pictures)
    table = result.table().splitlines()
    assert table[0].split() == ['class', 'split', '1', 'split', '2'] and len(table) == 1 + 4 + 1
    assert table[-1].split() == ['mIoU'] + [f'{m:.2f}' for m in mious]
    assert table[2].split() == ['1'] + [f'{100 * s["iou"][1]:.2f}' for s in result.splits]


@pytest.mark.slow
def test_a_probe_result_saves_its_report_and_pictures_and_keeps_an_earlier_run(probed, tmp_path):
    _, result = probed
    out = result.save(tmp_path / 'out', pictures=3)
    saved = json.loads((out / 'probe.json').read_text())
    assert saved == json.loads(json.dumps(result.to_dict(), default=str))
    assert set(saved) == {'settings', 'splits', 'miou_mean', 'miou_std', 'miou_present_mean', 'peak_rss_gb', 'seconds'}
    assert saved['miou_mean'] == pytest.approx(result.miou_mean) and saved['splits'][1]['iou']['2'] == result.splits[1]['iou'][2]
    drawn = sorted((out / 'pictures').glob('*.png'))
    assert [p.name for p in drawn] == sorted(p.name for p in result.pictures[:3])
    first = result.pictures[0]
    picture = np.asarray(Image.open(out / 'pictures' / first.name))
    assert picture.shape == (64, 3 * 64, 3)  # image | labels | prediction
    assert np.array_equal(picture[:, 64:128], palette(4)[first.label.numpy()])
    assert np.array_equal(picture[:, 128:], palette(4)[first.pred.numpy()])
    rgb = ((first.image.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    assert np.array_equal(picture[:, :64], rgb)
    with pytest.raises(FileExistsError, match=r'probe.json holds an earlier run; choose another folder or pass overwrite=True'):
        result.save(out)
    assert json.loads((out / 'probe.json').read_text()) == saved  # kept
    result.save(out, pictures=8, overwrite=True)  # every test image of split 1 (4 of them)
    assert len(list((out / 'pictures').glob('*.png'))) == 4


def test_evaluate_probe_refuses_bad_settings_and_data(tmp_path):
    data = make_shapes_dataset(tmp_path / 'shapes-ddpm', n_train=2, n_val=1, layout='ddpm-seg')
    with pytest.raises(ValueError, match='splits must be a positive integer; got 0'):
        evaluate_probe('test_sd_tiny', data, splits=0)
    with pytest.raises(ValueError, match="Unknown diffusion model 'nope'"):
        evaluate_probe('nope', data)
    with pytest.raises(FileNotFoundError, match=r"No 'train' split under .*nowhere"):
        evaluate_probe('test_sd_tiny', tmp_path / 'nowhere')
    with pytest.raises(ValueError, match=r'\.npy holds class id 3, beyond num_classes=2'):
        evaluate_probe('test_sd_tiny', data, num_classes=2, resolution=32)


@pytest.mark.slow
def test_the_probe_command_end_to_end_and_its_refusals(tmp_path, capsys):
    # the command's plumbing, on the smallest set (1 train / 1 test image): the accuracy is the library's test
    data = make_shapes_dataset(tmp_path / 'shapes-ddpm', n_train=1, n_val=1, layout='ddpm-seg')
    out = tmp_path / 'cli'
    status = diffbackbones_command(['probe', 'shapes_sd_tiny', '--data', str(data), '--out', str(out),
                                    '--pictures', '1', *FAST_FLAGS])
    assert status == 0
    printed = capsys.readouterr().out.splitlines()
    saved = json.loads((out / 'probe.json').read_text())
    assert printed[0].startswith('features: 224 channels per pixel from levels [(32, 16, 16), (64, 8, 8), (128, 4, 4)]')
    assert printed[1] == (f'split 1: mIoU {100 * saved["splits"][0]["miou"]:.2f} '
                          f'(present classes: {100 * saved["splits"][0]["miou_present"]:.2f})')
    assert printed[2] == '' and printed[3].split() == ['class', 'split', '1']
    assert printed[-2] == (f'mIoU {saved["miou_mean"]:.2f} +- 0.00 over 1 split(s) (absent classes count 0; '
                           f'over present classes: {saved["miou_present_mean"]:.2f})')
    assert printed[-1].startswith('peak memory ') and printed[-1].endswith(f'pictures in {out / "pictures"}')
    # probe.json records the flags, as the tool always did, with what the backbone resolved
    assert saved['settings']['weights'] is None and saved['settings']['out'] == str(out)
    assert saved['settings']['resolution'] == 64 and saved['settings']['n_classes'] == 4
    assert 'command' not in saved['settings'] and len(saved['settings']['levels']) == 3
    assert [p.name for p in (out / 'pictures').iterdir()] == ['test-00000.png']
    # an earlier run is refused before any work: the data is not even looked at (tools/probe.py, same flags)
    spec = importlib.util.spec_from_file_location('probe_tool', REPO / 'tools' / 'probe.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main is probe_command
    with pytest.raises(SystemExit, match=r'probe.json holds an earlier run; choose another folder or pass .*--overwrite'):
        tool.main(['shapes_sd_tiny', '--data', str(tmp_path / 'nowhere'), '--out', str(out)])
    with pytest.raises(SystemExit, match=r"No 'train' split under .*nowhere"):  # the library's errors, as messages
        tool.main(['shapes_sd_tiny', '--data', str(tmp_path / 'nowhere'), '--out', str(out), '--overwrite'])
