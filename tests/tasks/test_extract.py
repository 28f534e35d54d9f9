"""extraction.extract and FeatureStore: exact round trip, resume after a real kill, torchrun ranks, refusals;
the command end to end (in process, and as ``tools/extract.py`` in the subprocess runs)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffbackbones import DiffusionBackbone, FeatureStore
from diffbackbones.commands import main as diffbackbones_main
from diffbackbones.tasks.extraction.extract import extract
from diffbackbones.utils.images import read_image
from diffbackbones.data.shapes import make_shapes_dataset
from diffbackbones.tasks.extraction.store import shard_records

from conftest import REPO

ENV = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')


@pytest.fixture(scope='session')
def image_dir(tmp_path_factory):
    root = make_shapes_dataset(tmp_path_factory.mktemp('shapes') / 'shapes', n_train=0, n_val=24)
    return root / 'img_dir' / 'val'


def _cmd(images, out, *extra):
    """The command as users run it from the source tree: the ``tools/extract.py`` shim."""
    return [sys.executable, str(REPO / 'tools' / 'extract.py'), 'test_sd_tiny', '--images', str(images),
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
    store = extract('test_sd_tiny', image_dir, tmp_path / 'f', backbone=backbone, store_dtype='fp32', shard_size=5)
    assert isinstance(store, FeatureStore) and store.root == tmp_path / 'f'
    assert len(store) == 24 and len(list((tmp_path / 'f').glob('shard-*.safetensors'))) == 5
    image = read_image(image_dir / '00003.png')
    with torch.no_grad():
        levels = backbone(image[None])
    for i, level in enumerate(levels):
        assert torch.equal(store.level(str(image_dir / '00003.png'), i), level[0])
    assert store.activations == [n for level in backbone.levels for n in level]
    assert store.get(3, store.activations[0]).dtype == torch.float32
    with pytest.raises(KeyError, match='is not stored'):
        store.get(3, 'up-level0-upsampler-out')

    # aggregate=True: one tensor, every activation at the finest grid. A list of paths, two to a forward:
    # the image of another size between same-size neighbours goes alone and keeps its own grid.
    odd = tmp_path / 'odd.png'
    Image.open(image_dir / '00001.png').resize((80, 48)).save(odd)
    paths = [image_dir / '00000.png', image_dir / '00002.png', odd, image_dir / '00003.png']
    aggregate = extract(None, paths, tmp_path / 'a', backbone=backbone, aggregate=True, batch_size=2)
    assert aggregate.images == [str(p) for p in paths]
    first = aggregate.get(0, 'aggregate')
    assert first.dtype == torch.float16
    assert first.shape == (sum(i['num_chs'] for i in backbone.feature_info), *levels[0].shape[-2:])
    for path in paths[:2] + paths[3:]:  # the activations of the exact store, resized and joined
        size = store.get(str(path), store.activations[0]).shape[-2:]
        expected = torch.cat([F.interpolate(store.get(str(path), n)[None], size=size, mode='bilinear',
                                            align_corners=False)[0] for n in store.activations])
        torch.testing.assert_close(aggregate.get(str(path), 'aggregate').float(), expected,
                                   rtol=2e-3, atol=2e-3 * float(expected.abs().max()))
    with torch.no_grad():
        odd_grid = backbone(read_image(odd)[None])[0].shape[-2:]
    assert aggregate.get(str(odd), 'aggregate').shape[-2:] == odd_grid != first.shape[-2:]


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
    with pytest.raises(ValueError, match='holds an earlier run'):   # no silent overwrite without resume
        extract('test_sd_tiny', image_dir, out, shard_size=2)
    assert sorted(out.glob('shard-*.safetensors')) == sorted(shards)
    log = _run(_cmd(image_dir, out, '--resume'))
    assert f'24 / 24 images in {out} ({24 - len(partial)} new on rank 0, {len(partial)} there before)' in log
    _assert_same(_contents(out), _contents(full_run))


@pytest.mark.slow
def test_torchrun_two_ranks_write_every_image_once(image_dir, full_run, tmp_path):
    out = tmp_path / 'features'
    _run(_cmd(image_dir, out), launcher=['--nproc_per_node=2', '--master_port=29533'])
    seen = [r['index'] for shard in out.glob('shard-*.safetensors') for r in shard_records(shard)]
    assert sorted(seen) == list(range(24))                        # every image, once
    assert {s.name.split('-')[1] for s in out.glob('shard-*.safetensors')} == {'r0', 'r1'}   # both ranks wrote
    _assert_same(_contents(out), _contents(full_run))


def test_refusals_name_the_setting_or_file(image_dir, full_run, tmp_path, monkeypatch):
    def refusal(images, out, error=ValueError, **options):
        with pytest.raises(error) as caught:
            extract('test_sd_tiny', images, out, **options)
        return str(caught.value)
    # the library's defaults record what the command's do: only the changed setting differs
    message = refusal(image_dir, full_run, resume=True, t=100)
    assert message.endswith('noise.t: 50 there, 100 now') and message.count(' there, ') == 1, message
    assert 'resume=True (--resume)' in refusal(image_dir, full_run)
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('a user file')
    assert 'not empty' in refusal(image_dir, tmp_path / 'mine')
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'a user file'
    (tmp_path / 'empty').mkdir()
    assert 'holds no images' in refusal(tmp_path / 'empty', tmp_path / 'o1')
    bad = tmp_path / 'bad'
    bad.mkdir()
    Image.new('RGB', (64, 64)).save(bad / 'a.png')
    (bad / 'b.png').write_bytes(b'not a png')
    assert f'cannot read image {bad / "b.png"}' in refusal(bad, tmp_path / 'o2')
    listing = tmp_path / 'list.txt'
    listing.write_text('missing.png\n')
    assert 'do not exist' in refusal(listing, tmp_path / 'o3', FileNotFoundError)
    assert str(tmp_path / 'gone.png') in refusal([image_dir / '00000.png', tmp_path / 'gone.png'], tmp_path / 'o4',
                                                 FileNotFoundError)
    assert 'neither an image folder nor a list file' in refusal(tmp_path / 'nothing', tmp_path / 'o5', FileNotFoundError)
    assert 'store_dtype' in refusal(image_dir, tmp_path / 'o6', store_dtype='fp8')
    monkeypatch.setenv('WORLD_SIZE', '2')   # torchrun's processes without a process group: not all writing rank 0
    assert 'init_process_group' in refusal(image_dir, tmp_path / 'o7', RuntimeError)
    assert not any((tmp_path / f'o{i}').exists() for i in (1, 3, 4, 5, 6, 7))
    assert json.loads((full_run / 'settings.json').read_text())['noise.t'] == 50    # the earlier run is intact


def test_the_command_end_to_end(image_dir, full_run, tmp_path, capsys):
    # a list file of relative paths (relative to the file), two images to a forward, fp32 stored
    names = ['00000.png', '00001.png', '00002.png']
    listing = tmp_path / 'list.txt'
    listing.write_text(''.join(os.path.relpath(image_dir / n, tmp_path) + '\n' for n in names))
    out = tmp_path / 'features'
    argv = ['extract', 'test_sd_tiny', '--images', str(listing), '--out', str(out), '--shard-size', '2',
            '--batch-size', '2', '--store-dtype', 'fp32']
    assert diffbackbones_main(argv) == 0
    assert f'3 / 3 images in {out} (3 new on rank 0, 0 there before)' in capsys.readouterr().out
    store, reference = FeatureStore(out), FeatureStore(full_run)
    assert store.images == [str(tmp_path / os.path.relpath(image_dir / n, tmp_path)) for n in names]
    assert len(list(out.glob('shard-*.safetensors'))) == 2
    differ = {k for k in store.settings.keys() | reference.settings.keys()
              if store.settings.get(k) != reference.settings.get(k)}
    assert differ == {'images', 'n_images', 'store_dtype'}   # the flags map as in the subprocess run
    assert store.settings['images'] == str(listing.resolve())
    for i, name in enumerate(names):
        for activation in store.activations:
            torch.testing.assert_close(store.get(i, activation).half(), reference.get(i, activation),
                                       rtol=2e-3, atol=2e-3)
    with pytest.raises(SystemExit) as stop:   # the library's ValueError, as the command's exit message
        diffbackbones_main(argv)
    assert '--resume' in str(stop.value) and str(out) in str(stop.value)
