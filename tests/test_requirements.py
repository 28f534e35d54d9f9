"""The declared lower bounds: setup.py declares what diffbackbones/requirements.py holds, and an import under
an older diffusers or timm fails at once, naming the versions needed."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import pytest

from diffbackbones.requirements import MINIMUM_VERSIONS, _release, check_versions


def test_setup_py_declares_the_minimums_the_package_checks():
    declared = {r.split(';')[0].replace(' ', '') for r in metadata.requires('diffbackbones') or ()}
    for name, version in MINIMUM_VERSIONS.items():
        assert f'{name}>={version}' in declared, f'setup.py does not declare {name}>={version}: {sorted(declared)}'


def test_this_suite_runs_on_at_least_the_declared_minimums():
    # a minimum is a claim that the suite passed on it: the environment running it must not be older
    for name, version in MINIMUM_VERSIONS.items():
        assert _release(metadata.version(name)) >= _release(version), name


def _fake_distribution(root, name: str, version: str) -> None:
    """An installed-package record of ``name`` at ``version``, first on the path: what pip leaves behind."""
    info = root / f'{name}-{version}.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')


def test_importing_under_too_old_diffusers_and_timm_fails_at_once_naming_the_versions(tmp_path):
    _fake_distribution(tmp_path, 'diffusers', '0.30.0')
    _fake_distribution(tmp_path, 'timm', '1.0.9')
    env = dict(os.environ, PYTHONPATH=str(tmp_path), HF_HUB_OFFLINE='1')
    done = subprocess.run([sys.executable, '-c', 'import diffbackbones'], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: diffbackbones needs')
    assert f"diffusers>={MINIMUM_VERSIONS['diffusers']} (found 0.30.0)" in last
    assert f"timm>={MINIMUM_VERSIONS['timm']} (found 1.0.9)" in last
    assert "pip install -U 'diffusers>=" in last


def test_versions_compare_as_releases_not_as_text():
    assert _release('2.14.1+cpu') == (2, 14, 1) and _release('0.43.0.dev0') == (0, 43, 0)
    assert _release('0.9.0') < _release('0.42.1') < _release('0.100.0')  # '0.9' > '0.42' as text
    check_versions({'diffusers': '0.0.1'})  # an old enough minimum passes
    with pytest.raises(ImportError, match=r'diffusers>=999.0 \(found '):
        check_versions({'diffusers': '999.0'})
