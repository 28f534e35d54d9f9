"""Label-scarce segmentation (DDPM-seg protocol): metric, features, classifier rules, data, end to end."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffbackbones.probe import (EarlyStop, PixelClassifier, PixelFeatures, StackedClassifiers, clean_labels,
                                 compute_iou, find_split, label_map_of, load_pair, majority_vote, predict,
                                 read_label_map, redraw_split, train_ensemble)
from diffbackbones.segmentation.shapes import make_shapes_dataset

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import probe as probe_tool  # noqa: E402  (tools/probe.py)


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


@pytest.mark.slow
def test_probe_tool_end_to_end_beats_chance_clearly(tmp_path):
    data = make_shapes_dataset(tmp_path / 'shapes-ddpm', n_train=6, n_val=4, layout='ddpm-seg')
    report = probe_tool.main(['--model', 'shapes_sd_tiny', '--data', str(data), '--out', str(tmp_path / 'out'),
                              '--resolution', '64', '--models', '3', '--max-epochs', '3', '--batch-size', '256',
                              '--splits', '2'])
    # chance: labelling every pixel background gives IoU(background) ~ its share and 0 elsewhere
    labels = [torch.from_numpy(np.load(p)) for p in sorted((data / 'real' / 'test').glob('*.npy'))]
    chance = compute_iou([torch.zeros_like(lbl) for lbl in labels], labels, 4)['miou']
    assert report['miou_mean'] / 100 > chance + 0.2, (report['miou_mean'], chance)
    assert len(report['splits']) == 2 and report['splits'][0]['test'] != report['splits'][1]['test']
    saved = json.loads((tmp_path / 'out' / 'probe.json').read_text())
    assert saved['miou_mean'] == pytest.approx(report['miou_mean'])
    assert len(list((tmp_path / 'out' / 'pictures').glob('*.png'))) == 4
    picture = Image.open(next((tmp_path / 'out' / 'pictures').glob('*.png')))
    assert picture.size == (3 * 64, 64)  # image | labels | prediction
