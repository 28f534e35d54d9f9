"""The package as users get it: a wheel (and an sdist) carrying its run-time data, used outside the tree."""
import os
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import REPO

PACKAGE_DATA = sorted(str(p.relative_to(REPO)) for p in (REPO / 'diffbackbones').rglob('*')
                      if p.is_file() and p.suffix not in ('.py', '.pyc'))

# Runs in a fresh interpreter, outside the source tree, on the installed copy only.
USE_THE_WHEEL = r'''
import sys, torch, diffbackbones
target = sys.argv[1]
assert diffbackbones.__file__.startswith(target), f'imported from {diffbackbones.__file__}, not the wheel'
from diffusers import UNet2DConditionModel
from diffbackbones.models.zoo import MODELS, load_config
backbone = diffbackbones.DiffusionBackbone('test_sd_tiny', 'practical', pretrained=False)
with torch.no_grad():
    feats = backbone(torch.rand(1, 3, 64, 64) * 2 - 1)
print('levels', [tuple(f.shape) for f in feats])
with torch.device('meta'):
    unet = UNet2DConditionModel.from_config(load_config(MODELS['sdxl'], 'unet'))
print('sdxl activations', len(diffbackbones.list_activations(unet, (128, 128))))
flux = diffbackbones.DiffusionBackbone('test_flux_tiny', 'default', pretrained=False)  # transformer configs ship too
with torch.no_grad():
    print('flux levels', [tuple(f.shape) for f in flux(torch.rand(1, 3, 64, 96) * 2 - 1)])
from diffbackbones.models.loading import build_denoiser
print('flux_dev blocks', sum(a.kind == 'vit-block-out' for a in
                             diffbackbones.list_activations(build_denoiser(MODELS['flux_dev'], 'meta'), (64, 64))))
shipped = diffbackbones.DiffusionBackbone('shapes_sd_tiny', 'practical', pretrained=True)  # weights in the wheel
assert str(shipped.spec.weights_dir).startswith(target)
with torch.no_grad():
    print('shipped levels', [tuple(f.shape) for f in shipped(torch.rand(1, 3, 128, 128) * 2 - 1)])
import tempfile
import diffbackbones.tasks.correspondence as corr  # the subpackage ships too
assert corr.__file__.startswith(target)
pairs = corr.find_pairs(corr.make_correspondence_dataset(tempfile.mkdtemp() + '/pairs', 3, 1, 1), 'trn')
print('correspondence pairs', len(pairs), sorted({p.category for p in pairs}))
'''


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_wheel_and_sdist_carry_the_data_and_the_installed_package_runs(tmp_path):
    assert any(p.endswith('.json') for p in PACKAGE_DATA)
    # --no-build-isolation: build with this environment's setuptools, as `make` installed it (offline-safe)
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path / 'dist'),
          str(REPO)], cwd=tmp_path)
    (wheel,) = (tmp_path / 'dist').glob('diffbackbones-*.whl')
    assert set(PACKAGE_DATA) <= set(zipfile.ZipFile(wheel).namelist())
    _run([sys.executable, 'setup.py', '-q', 'sdist', '-d', str(tmp_path / 'sdist')], cwd=REPO)
    (sdist,) = (tmp_path / 'sdist').glob('diffbackbones-*.tar.gz')
    in_sdist = {name.split('/', 1)[1] for name in tarfile.open(sdist).getnames() if '/' in name}
    assert set(PACKAGE_DATA) <= in_sdist

    site = tmp_path / 'site'
    _run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)])
    outside = tmp_path / 'elsewhere'
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE='1')
    out = _run([sys.executable, '-c', USE_THE_WHEEL, str(site)], cwd=outside, env=env)
    assert 'levels [(1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]' in out
    assert 'shipped levels [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4)]' in out
    assert int(re.search(r'sdxl activations (\d+)', out).group(1)) > 500
    assert 'flux levels [(1, 16, 4, 6), (1, 16, 4, 6), (1, 16, 4, 6), (1, 16, 4, 6)]' in out
    assert 'flux_dev blocks 57' in out
    assert "correspondence pairs 3 ['pentagon', 'trapezoid', 'triangle']" in out

    # The installed command (console script) and the library call, on embedded data, outside the tree.
    command = [str(site / 'bin' / 'diffbackbones')]
    assert 'diffbackbones screen test_sd_tiny --images' in _run(command + ['screen', '--help'], cwd=outside, env=env)
    # mmseg is optional: the embedded sets and the commands need none of it (blocked here, as if not installed)
    no_mmseg = ("import sys; sys.modules['mmseg'] = None; from diffbackbones.commands import main; "
                "main(['make-shapes', 'work_dirs/s', '--train', '2', '--val', '3'])")
    _run([sys.executable, '-c', no_mmseg], cwd=outside, env=env)
    val = ['--images', 'work_dirs/s/img_dir/val']
    _run(command + ['extract', 'test_sd_tiny', *val, '--out', 'work_dirs/features'], cwd=outside, env=env)
    assert (outside / 'work_dirs' / 'features' / 'settings.json').is_file()
    _run(command + ['screen', 'test_sd_tiny', *val, '--labels', 'work_dirs/s/ann_dir/val', '--n-images', '2',
                    '--seeds', '2', '--levels', 'up-level2', '--out', 'work_dirs/screen'], cwd=outside, env=env)
    from_python = ("import diffbackbones; r = diffbackbones.screen('test_sd_tiny', 'work_dirs/s/img_dir/val', "
                   "labels='work_dirs/s/ann_dir/val', n_images=2, seeds=2, levels=['up-level2']); "
                   "r.save('work_dirs/screen-py'); print(len(r.rows), len(r.candidates()))")
    _run([sys.executable, '-c', from_python], cwd=outside, env=env)
    for screen_dir in ('screen', 'screen-py'):
        assert (outside / 'work_dirs' / screen_dir / 'screen.csv').read_text() == \
            (outside / 'work_dirs' / 'screen' / 'screen.csv').read_text()  # the command is the library call
