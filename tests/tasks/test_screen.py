"""Screening: the three indices on synthetic activations with known answers, the paper's rules, ranking
through the library call (``diffbackbones.screen``; its preset.json loads in DiffusionBackbone, timm and
mmseg), and the ``diffbackbones screen`` command end to end."""
import csv
import json
import math

import pytest
import torch

import diffbackbones
from diffbackbones import DiffusionBackbone, Preset
from diffbackbones.commands import main as diffbackbones_command
from diffbackbones.tasks.screening.properties import screen_samples, select_candidates, spearman
from diffbackbones.data.shapes import make_shapes_dataset

G = torch.Generator().manual_seed(0)
YY, XX = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing='ij')


def seeds(pattern: torch.Tensor, noise: float, s: int = 4) -> torch.Tensor:
    """S samples of a fixed (C, h, w) pattern with independent noise."""
    return pattern[None].repeat(s, 1, 1, 1) + noise * torch.randn(s, *pattern.shape, generator=G)


def test_dni_is_near_one_for_noise_and_near_zero_for_a_fixed_pattern():
    noise = screen_samples(torch.randn(4, 8, 32, 32, generator=G))
    fixed = screen_samples(seeds(torch.randn(8, 32, 32, generator=G), 0.01))
    assert noise['dni'] > 0.9 and fixed['dni'] < 0.01
    # a smooth pattern under fine-grained noise: the noise lives above a quarter of Nyquist
    smooth = torch.stack([torch.sin(2 * math.pi * (XX + YY) / 32 + k) for k in range(4)])
    mixed = screen_samples(seeds(smooth, 0.5))
    assert mixed['dni_high'] > 0.9 and mixed['dni_low'] < 0.2


def test_gi_orders_low_and_high_frequency_patterns_in_cycles_per_image():
    def gi(cycles, side=32):
        yy, xx = torch.meshgrid(torch.arange(float(side)), torch.arange(float(side)), indexing='ij')
        pattern = torch.stack([torch.sin(2 * math.pi * xx * cycles / side + k) for k in range(4)])
        return screen_samples(seeds(pattern, 0.05))['gi']
    assert gi(2) < gi(6) < gi(12)
    assert gi(2) == pytest.approx(2, abs=0.5) and gi(12) == pytest.approx(12, abs=1)
    assert gi(4, side=16) == pytest.approx(gi(4, side=64), abs=0.5)   # cycles per image: resolution-free


def test_li_is_positive_for_position_and_negative_for_class():
    labels = ((XX // 8 + YY // 8) % 2).long()                      # a checkerboard of two classes
    position = torch.stack([torch.sin(2 * math.pi * XX / 64), torch.cos(2 * math.pi * XX / 64),
                            torch.sin(2 * math.pi * YY / 64), torch.cos(2 * math.pi * YY / 64)])
    klass = torch.stack([(labels == 0).float(), (labels == 1).float()])
    assert screen_samples(seeds(position, 0.01), labels)['li'] > 0.5
    assert screen_samples(seeds(klass, 0.1), labels)['li'] < -0.5
    assert math.isnan(screen_samples(seeds(klass, 0.1))['li'])   # no labels, no LI


def test_rules_drop_increments_noise_and_redundant_qk():
    def row(name, kind, stride, dni, li):
        return dict(name=name, kind=kind, stride=stride, dni=dni, li=li)
    rows = select_candidates([
        row('a', 'res-increment', 8, 0.1, 0.0), row('b', 'ffn-inner', 8, 0.1, 0.0), row('c', 'self-v', 8, 0.1, 0.0),
        row('d', 'res-out', 8, 0.8, 0.0),      # noisy
        row('e', 'self-q', 16, 0.8, 0.3),      # noisy, but the structure is locality: kept (no clean at 16)
        row('f', 'self-k', 8, 0.2, 0.3),       # local q/k where a clean activation exists at 8: dropped
        row('g', 'vit-out', 8, 0.2, -0.1),     # clean
        row('h', 'self-k', 32, 0.2, float('nan')),  # no LI known: kept
    ], dni_max=0.5, li_max=0.05)
    kept = {r['name'] for r in rows if r['keep']}
    assert kept == {'e', 'g', 'h'}
    assert next(r for r in rows if r['name'] == 'f')['reason'].startswith('self-k with LI 0.30')


def test_spearman_matches_the_definition():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    a, b = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    scipy_stats = pytest.importorskip('scipy.stats')
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0])
    assert math.isnan(spearman([1, 2, float('nan')], [1, 2, 3]))   # fewer than 3 pairs left


@pytest.fixture(scope='module')
def screened(tmp_path_factory):
    # DDPM-seg's layout: each image's .npy label map beside it, so --labels is the --images folder itself
    root = make_shapes_dataset(tmp_path_factory.mktemp('shapes') / 'shapes', n_train=6, n_val=6, layout='ddpm-seg')
    out = tmp_path_factory.mktemp('screen') / 'out'
    report = diffbackbones.screen('test_sd_tiny', root / 'real' / 'test', labels=root / 'real' / 'test', n_images=3,
                                  seeds=2, levels=['up-level1', 'up-level2'])
    assert report.preset is None and not (out / 'preset.json').exists()
    preset = report.rank(root, pixels=200, epochs=1, k=3, per_stride=1, validate=True)
    assert preset is report.preset and preset.model == 'test_sd_tiny'
    report.save(out)
    return out, report.to_dict()


def test_screen_writes_every_output_and_a_preset_the_backbone_loads(screened):
    out, report = screened
    rows = list(csv.DictReader(open(out / 'screen.csv')))
    assert rows and all(r['name'].startswith(('up-level1', 'up-level2')) for r in rows)
    assert {'dni', 'dni_low', 'dni_high', 'gi', 'li', 'keep', 'reason'} <= set(rows[0])
    assert all(0 <= float(r['dni']) <= 1 for r in rows) and any(r['li'] != 'nan' for r in rows)
    for picture in ('screen.png', 'pca.png'):
        assert (out / picture).stat().st_size > 1000
    candidates = json.loads((out / 'candidates.json').read_text())
    assert candidates['candidates'] == [r['name'] for r in rows if r['keep'] == 'True']
    assert not any(r['kind'] in ('res-increment', 'ffn-inner', 'self-v') for r in rows if r['keep'] == 'True')
    preset = json.loads((out / 'preset.json').read_text())
    strides = [next(r['stride'] for r in report['ranked'] if r['name'] == level[0]) for level in preset['levels']]
    assert strides == sorted(set(strides)) and sum(len(level) for level in preset['levels']) == 3  # one per stride
    ranked = [r['miou'] for r in preset['ranking']]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == len(candidates['candidates'])
    check = json.loads((out / 'validation.json').read_text())
    assert set(check['spearman']) == {'dni', 'gi', 'li'}
    assert set(check['miou']) == {'preset.json', 'best single', 'legacy (upsampler outputs)'}
    assert check['choices']['best single'] == [preset['ranking'][0]['name']]
    backbone = DiffusionBackbone('test_sd_tiny', str(out / 'preset.json'), pretrained=False)
    assert [list(level) for level in backbone.levels] == preset['levels']
    with torch.no_grad():
        assert len(backbone(torch.rand(1, 3, 64, 64) * 2 - 1)) == len(preset['levels'])


def test_the_preset_file_works_in_timm_and_mmseg(screened):
    import timm
    from mmseg.registry import MODELS
    out, _ = screened
    path = str(out / 'preset.json')
    levels = json.loads((out / 'preset.json').read_text())['levels']
    model = timm.create_model('test_sd_tiny_practical', features_only=True, activations=path)
    assert len(model.feature_info.channels()) == len(levels)
    backbone = MODELS.build(dict(type='DiffusionBackbone', model='test_sd_tiny', activations=path, pretrained=False))
    assert [list(level) for level in backbone.levels] == levels


def test_a_preset_file_for_another_topology_or_missing_is_refused(tmp_path):
    other = tmp_path / 'sdxl.json'
    other.write_text(json.dumps(dict(model='test_sdxl_tiny', levels=[['up-level1-upsampler-out']])))
    with pytest.raises(ValueError, match="written for 'test_sdxl_tiny'.*layer ids differ"):
        DiffusionBackbone('test_sd_tiny', str(other), pretrained=False)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        DiffusionBackbone('test_sd_tiny', str(tmp_path / 'nope.json'), pretrained=False)
    (tmp_path / 'bad.json').write_text('{"levels": []}')
    with pytest.raises(ValueError, match='must hold'):
        DiffusionBackbone('test_sd_tiny', str(tmp_path / 'bad.json'), pretrained=False)


def test_a_preset_saves_and_loads_with_its_ranking(screened, tmp_path):
    out, report = screened
    preset = Preset.load(out)  # a folder reads its preset.json
    assert [list(level) for level in preset.levels] == report['preset']['levels']
    assert preset.info['ranking'] == report['preset']['ranking'] and preset.info['t'] == 50
    again = Preset.load(preset.save(tmp_path / 'copy.json'))
    assert again == preset and again.info == preset.info
    backbone = DiffusionBackbone('test_sd_tiny', again, pretrained=False)
    assert backbone.levels == preset.levels
    with pytest.raises(ValueError, match="written for 'test_sdxl_tiny'"):
        DiffusionBackbone('test_sd_tiny', Preset('test_sdxl_tiny', [['up-level1-upsampler-out']]), pretrained=False)


def test_the_screen_command_end_to_end_and_its_refusals(tmp_path):
    # DDPM-seg's layout: each image's .npy label map beside it, so --labels is the --images folder itself
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=2, n_val=2, layout='ddpm-seg')
    out = tmp_path / 'cli'
    images = str(root / 'real' / 'test')
    status = diffbackbones_command(['screen', 'test_sd_tiny', '--images', images, '--labels', images,
                                    '--n-images', '2', '--seeds', '2', '--levels', 'up-level2', '--out', str(out)])
    assert status == 0
    rows = list(csv.DictReader(open(out / 'screen.csv')))
    assert rows and all(r['name'].startswith('up-level2') for r in rows) and any(r['li'] != 'nan' for r in rows)
    assert (out / 'pca.png').is_file() and not (out / 'preset.json').exists()
    with pytest.raises(SystemExit, match='--overwrite'):
        diffbackbones_command(['screen', 'test_sd_tiny', '--images', images, '--out', str(out)])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(SystemExit, match='holds no images'):
        diffbackbones_command(['screen', 'test_sd_tiny', '--images', str(empty), '--out', str(tmp_path / 'o')])
    (empty / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match=f'cannot read image {empty / "broken.png"}'):
        diffbackbones.screen('test_sd_tiny', empty, pretrained=False)
    with pytest.raises(ValueError, match=r"kinds \['nope'\] not in this model"):
        diffbackbones.screen('test_sd_tiny', images, kinds=['nope'])
