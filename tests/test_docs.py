"""The documentation: the MkDocs site builds with --strict, and the Python examples of README.md and
docs/*.md run as written.

Every ```python block of a page runs, in page order, in one namespace per page (a later block may use
names from an earlier one), in a temporary working directory, offline (HF_HUB_OFFLINE=1). A block whose
nearest preceding non-blank line is ``<!-- docs-test: skip (reason) -->`` does not run (it needs real
weights, a GPU or a dataset); its reason is printed, and a page whose blocks are all skipped is skipped
with the reasons. A failure names the page and the Markdown line of the failing statement: each block
is compiled under the page's path, at its own line numbers. Shell blocks are not executed.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
PYTHON_INFO = {'python', 'py', 'python3'}
FENCE = re.compile(r'^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$')
SKIP = re.compile(r'^\s*<!--\s*docs-test:\s*skip\b\s*(?:\((?P<reason>.*)\))?\s*-->\s*$')
MARKER = re.compile(r'^\s*<!--\s*docs-test\b')


@dataclass
class Block:
    page: Path
    line: int           # 1-based line of the first code line
    code: str
    skip: str | None    # the reason, when marked skip

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(ROOT)}:{self.line}'

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.code.splitlines() if line.strip()), '')


def python_blocks(page: Path) -> list[Block]:
    """The page's fenced Python blocks, in order, each with its skip reason if marked."""
    lines = page.read_text(encoding='utf-8').splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = len(match['indent']), match['fence']
        info = (match['info'].split() or [''])[0].lower().lstrip('{.')
        start, j = i + 1, i + 1
        while j < len(lines) and not re.match(rf'^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$', lines[j]):
            j += 1
        if info in PYTHON_INFO:
            prev = i - 1
            while prev >= 0 and not lines[prev].strip():
                prev -= 1
            skip = SKIP.match(lines[prev]) if prev >= 0 else None
            code = '\n'.join(line[indent:] if line[:indent].strip() == '' else line for line in lines[start:j])
            blocks.append(Block(page, start + 1, code, skip and (skip['reason'] or '').strip()))
        i = j + 1
    return blocks


RUNNABLE_PAGES = [page for page in PAGES if python_blocks(page)]


def _offline(monkeypatch) -> None:
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    # huggingface_hub and diffusers read the variable once, at import: set their copies too.
    for module in ('huggingface_hub.constants', 'diffusers.utils.constants'):
        constants = sys.modules.get(module)
        if constants is not None and hasattr(constants, 'HF_HUB_OFFLINE'):
            monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)


@pytest.mark.parametrize('page', RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    skipped = [b for b in blocks if b.skip is not None]
    for block in skipped:
        print(f'not run: {block.where} ({block.skip})')
    if len(skipped) == len(blocks):
        pytest.skip('every Python block is marked skip: ' + '; '.join(f'{b.where} ({b.skip})' for b in skipped))
    monkeypatch.chdir(tmp_path)
    _offline(monkeypatch)
    # The examples use tiny models: one thread runs them as fast, and a busy 2-core machine's
    # oversubscribed thread pool (other jobs beside this one) made them up to ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_blocks(page, blocks)
    finally:
        torch.set_num_threads(threads)


def _run_blocks(page: Path, blocks: list[Block]) -> None:
    namespace = {'__name__': '__docs__'}
    for block in blocks:
        if block.skip is not None:
            continue
        # Padded to its place in the page, so tracebacks give the Markdown file's own line numbers.
        source = '\n' * (block.line - 1) + block.code + '\n'
        failure = None
        try:
            exec(compile(source, str(page), 'exec'), namespace)
        except (Exception, SystemExit) as e:  # SystemExit from an example is a failure too
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(page)]
            at = f' (line {frames[-1].lineno}: {frames[-1].line!r})' if frames else ''
            failure = (f'{block.where}: the block starting {block.first_line!r} failed{at}:\n'
                       + ''.join(traceback.format_exception(type(e), e, e.__traceback__)))
        if failure is not None:
            pytest.fail(failure, pytrace=False)


def test_skip_markers_are_attached_and_explained():
    """Every docs-test marker is a well-formed skip, with a reason, right before a Python block."""
    problems = []
    for page in PAGES:
        lines = page.read_text(encoding='utf-8').splitlines()
        attached = {b.line for b in python_blocks(page) if b.skip is not None}
        for n, line in enumerate(lines, 1):
            if not MARKER.search(line):
                continue
            match = SKIP.match(line)
            if not match or not (match['reason'] or '').strip():
                problems.append(f'{page.relative_to(ROOT)}:{n}: write <!-- docs-test: skip (reason) -->')
                continue
            following = n
            while following < len(lines) and not lines[following].strip():
                following += 1
            if following + 2 not in attached:  # the block's first code line follows its fence
                problems.append(f'{page.relative_to(ROOT)}:{n}: the marker is not right before a ```python block')
    assert not problems, '\n'.join(problems)


def test_readme_is_a_landing_page():
    """The README stays short, and its relative links (into docs/) resolve on GitHub as in the sdist."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 200, 'README.md is the landing page: move details into docs/'
    for command in ('make demo', 'make test'):
        assert command in text
    missing = []
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue
        if not (ROOT / target.split('#')[0]).exists():
            missing.append(target)
    assert not missing, f'README.md links to missing files: {missing}'


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec('mkdocs') is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]' (make install does)")
    env = dict(os.environ, NO_MKDOCS_2_WARNING='1')
    result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(tmp_path / 'site')],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f'mkdocs build --strict failed:\n{result.stderr}\n{result.stdout}'
    assert (tmp_path / 'site' / 'api' / 'index.html').is_file()
    # the Layout page's package map is made at build time from the package: it shows every module
    layout = (tmp_path / 'site' / 'layout' / 'index.html').read_text()
    assert 'denoiser/capture.py' in layout and 'Capture named activations from a denoiser' in layout
    assert PACKAGE_MAP_MARKER not in layout


PACKAGE_MAP_MARKER = '<!-- package map: made by docs/_hooks/package_map.py at build time -->'


def _package_map_hook():
    spec = importlib.util.spec_from_file_location('package_map', ROOT / 'docs' / '_hooks' / 'package_map.py')
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_the_layout_page_names_every_module_with_its_docstring():
    hook = _package_map_hook()
    assert hook.MARKER == PACKAGE_MAP_MARKER and PACKAGE_MAP_MARKER in (ROOT / 'docs' / 'layout.md').read_text()
    package_map = hook.package_map()
    undocumented, unnamed = [], []
    for path in hook.modules():
        name = str(path.relative_to(hook.PACKAGE))
        if not hook.docstring(path):
            undocumented.append(name)
        if f'`{hook.label(path)}`' not in package_map:
            unnamed.append(name)
    assert not undocumented, f'modules without a docstring (its first line says what lives there): {undocumented}'
    assert not unnamed, f'modules missing from the Layout page: {unnamed}'
    # and the map is no fixed text: one row or heading per module, the package's own __init__ included
    assert package_map.count('\n| `') + package_map.count('\n### `') == len(hook.modules()) > 80
