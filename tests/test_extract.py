"""tools/extract.py and FeatureStore: exact round trip, resume after a real kill, torchrun ranks, refusals."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from diffbackbones import DiffusionBackbone, FeatureStore
from diffbackbones.segmentation.shapes import make_shapes_dataset
from diffbackbones.store import shard_records

from conftest import REPO

sys.path.insert(0, str(REPO / 'tools'))
import extract as extract_tool  # noqa: E402  (tools/extract.py)

ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')


@pytest.fixture(scope='session')
def image_dir(tmp_path_factory):
    root = make_shapes_dataset(tmp_path_factory.mktemp('shapes') / 'shapes', n_train=0, n_val=24)
    return root / 'img_dir' / 'val'


def _cmd(images, out, *extra):
    return [sys.executable, str(REPO / 'tools' / 'extract.py'), '--model', 'test_sd_tiny', '--images', str(images),
            '--out', str(out), '--shard-size', '2', *map(str, extra)]


def _run(cmd, launcher=None):
    if launcher:
        cmd = [sys.executable, '-m', 'torch.distributed.run', *launcher, *cmd[1:]]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _contents(root):
    store = FeatureStore(root)
    return {path: store[path] for path in store.images}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for path in a:
        assert a[path].keys() == b[path].keys()
        for name in a[path]:
            assert torch.equal(a[path][name], b[path][name]), (path, name)


@pytest.fixture(scope='session')
def full_run(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('full') / 'features'
    _run(_cmd(image_dir, out))
    return out


def test_store_round_trips_the_backbone_output_exactly(image_dir, tmp_path):
    backbone = DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)
    args = extract_tool.parse_args(['--model', 'test_sd_tiny', '--images', str(image_dir), '--out', str(tmp_path / 'f'),
                                    '--store-dtype', 'fp32', '--shard-size', '5'])
    result = extract_tool.extract(args, backbone)
    assert result['written'] == 24 and result['total'] == 24
    store = FeatureStore(tmp_path / 'f')
    assert len(store) == 24 and len(list((tmp_path / 'f').glob('shard-*.safetensors'))) == 5
    image = extract_tool.read_image(image_dir / '00003.png')
    with torch.no_grad():
        levels = backbone(image[None])
    for i, level in enumerate(levels):
        assert torch.equal(store.level(str(image_dir / '00003.png'), i), level[0])
    assert store.activations == [n for level in backbone.levels for n in level]
    assert store.get(3, store.activations[0]).dtype == torch.float32
    with pytest.raises(KeyError, match='is not stored'):
        store.get(3, 'up-level0-upsampler-out')
    # --aggregate: one tensor, every level at the finest grid
    args = extract_tool.parse_args(['--model', 'test_sd_tiny', '--images', str(image_dir), '--out', str(tmp_path / 'a'),
                                    '--aggregate'])
    extract_tool.extract(args, backbone)
    aggregate = FeatureStore(tmp_path / 'a')[0]['aggregate']
    assert aggregate.dtype == torch.float16
    assert aggregate.shape == (sum(i['num_chs'] for i in backbone.feature_info), *levels[0].shape[-2:])


def test_resume_after_a_kill_equals_an_uninterrupted_run(image_dir, full_run, tmp_path):
    out = tmp_path / 'features'
    proc = subprocess.Popen(_cmd(image_dir, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob('shard-*.safetensors')) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = list(out.glob('shard-*.safetensors'))
    assert shards and not (out / 'index.json').exists(), 'the run was not killed part way'
    partial = FeatureStore(out)          # a killed run's store reads back from its complete shards
    assert 0 < len(partial) < 24
    with pytest.raises(subprocess.CalledProcessError):   # no silent overwrite without --resume
        subprocess.run(_cmd(image_dir, out), cwd=REPO, env=ENV, check=True, capture_output=True)
    log = _run(_cmd(image_dir, out, '--resume'))
    assert f'{len(partial)} there before' in log
    _assert_same(_contents(out), _contents(full_run))


@pytest.mark.slow
def test_torchrun_two_ranks_write_every_image_once(image_dir, full_run, tmp_path):
    out = tmp_path / 'features'
    _run(_cmd(image_dir, out), launcher=['--nproc_per_node=2', '--master_port=29533'])
    seen = [r['index'] for shard in out.glob('shard-*.safetensors') for r in shard_records(shard)]
    assert sorted(seen) == list(range(24))                        # every image, once
    assert {s.name.split('-')[1] for s in out.glob('shard-*.safetensors')} == {'r0', 'r1'}   # both ranks wrote
    _assert_same(_contents(out), _contents(full_run))


def test_refusals_name_the_setting_or_file(image_dir, full_run, tmp_path):
    def run(*argv):
        with pytest.raises(SystemExit) as error:
            extract_tool.extract(extract_tool.parse_args(['--model', 'test_sd_tiny', *map(str, argv)]))
        return str(error.value)
    assert "t: 50 there, 100 now" in run('--images', image_dir, '--out', full_run, '--resume', '--t', '100')
    assert '--resume' in run('--images', image_dir, '--out', full_run)
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('a user file')
    assert 'not empty' in run('--images', image_dir, '--out', tmp_path / 'mine')
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'a user file'
    (tmp_path / 'empty').mkdir()
    assert 'holds no images' in run('--images', tmp_path / 'empty', '--out', tmp_path / 'o1')
    bad = tmp_path / 'bad'
    bad.mkdir()
    Image.new('RGB', (64, 64)).save(bad / 'a.png')
    (bad / 'b.png').write_bytes(b'not a png')
    assert f'cannot read image {bad / "b.png"}' in run('--images', bad, '--out', tmp_path / 'o2')
    listing = tmp_path / 'list.txt'
    listing.write_text('missing.png\n')
    assert 'do not exist' in run('--images', listing, '--out', tmp_path / 'o3')
    assert json.loads((full_run / 'settings.json').read_text())['t'] == 50    # the earlier run is intact
