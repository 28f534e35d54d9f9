"""The package's house rules, checked on its source: the rooms' layering and no import cycle (import-linter's
contracts in setup.cfg), and no class is huge."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import diffbackbones

from conftest import REPO

PACKAGE_DIR = Path(diffbackbones.__file__).parent
CONTRACTS = REPO / 'setup.cfg'
MAX_CLASS_LINES = 250

pytest.importorskip('importlinter')


def _lint_imports(root: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """import-linter's own command on the package found under ``package_parent`` (first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    command = 'from importlinter.cli import lint_imports_command; lint_imports_command()'
    return subprocess.run([sys.executable, '-c', command, str(CONTRACTS), '--no-cache'], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not CONTRACTS.exists(), reason='the contracts live in the source tree (setup.cfg)')
def test_the_layering_and_acyclic_contracts_hold():
    done = _lint_imports(REPO, PACKAGE_DIR.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert 'Rooms import only the rooms below them KEPT' in done.stdout
    assert 'No import cycles between modules or packages of one parent KEPT' in done.stdout


@pytest.mark.skipif(not CONTRACTS.exists(), reason='the contracts live in the source tree (setup.cfg)')
def test_an_import_against_the_layers_or_a_cycle_breaks_the_suite(tmp_path):
    # The check above could pass by seeing nothing: on a copy of the package, an upward import deferred
    # into a function (model facts reaching for a task), a cycle inside one room and a new room nobody placed
    # must each fail it.
    copy = tmp_path / 'diffbackbones'
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns('__pycache__', 'weights', 'model_configs'))
    zoo = copy / 'models' / 'zoo.py'
    zoo.write_text(zoo.read_text() + '\n\ndef _upward():\n    from ..tasks.screening import ranking  # noqa\n')
    fusion = copy / 'backbone' / 'fusion.py'  # combined imports fusion: this closes a cycle inside one room
    fusion.write_text(fusion.read_text() + '\n\ndef _back():\n    from . import combined  # noqa\n')
    (copy / 'scratch').mkdir()
    (copy / 'scratch' / '__init__.py').write_text('"""A room in no layer."""\n')
    done = _lint_imports(tmp_path, tmp_path)
    assert done.returncode != 0
    assert 'Rooms import only the rooms below them BROKEN' in done.stdout
    assert 'diffbackbones.models.zoo -> diffbackbones.tasks.screening.ranking' in done.stdout
    assert 'diffbackbones.scratch' in done.stdout  # exhaustive: every room must be placed
    assert 'No import cycles between modules or packages of one parent BROKEN' in done.stdout


def _sources() -> dict[str, Path]:
    def name(path: Path) -> str:
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix('').parts
        return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    return {name(p): p for p in sorted(PACKAGE_DIR.rglob('*.py'))}


def test_no_class_is_over_the_size_limit():
    # import-linter has no such rule: this walker stays for it
    too_big = []
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_big.append(f'{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines')
    assert not too_big, f'classes over {MAX_CLASS_LINES} lines: {too_big}'


# Folders of plugins of one kind, one module each, as timm's models/ and diffusers' models/transformers/: a reader
# finds a family by its name there, so such a folder may grow with the model list. Nothing else may be listed.
PLUGIN_FOLDERS = {'diffbackbones/models/families'}


def test_no_folder_holds_more_than_15_modules():
    # a folder of 40 modules of mixed roles hides the architecture; past about 15 a folder wants rooms of its own
    crowded = {str(folder.relative_to(PACKAGE_DIR.parent)): n for folder in [PACKAGE_DIR, *PACKAGE_DIR.rglob('*/')]
               if (n := len(list(folder.glob('*.py')))) > 15}
    assert not {k: n for k, n in crowded.items() if k not in PLUGIN_FOLDERS}, f'folders over 15 modules: {crowded}'
    # (test_families.py checks that every module there registers a family)


def test_importing_the_package_with_torchao_prints_no_third_party_notices():
    # torchao (the quant extra) is imported by diffusers' models; its version-pair notices are dropped by message
    # (diffbackbones/utils/quiet.py). The check that torchao was imported keeps this from passing vacuously.
    pytest.importorskip('torchao')
    code = ('import sys, diffbackbones; from diffusers import UNet2DConditionModel; '
            "assert 'torchao' in sys.modules, 'torchao was not imported'")
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ})
    assert run.returncode == 0, run.stderr
    for notice in ('is an Enum subclass and is now natively supported', 'Unable to import `torchao` Tensor objects'):
        assert notice not in run.stderr
