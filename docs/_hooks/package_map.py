"""MkDocs hook: the package map on the Layout page is made at build time from the package itself (each
folder's and module's own docstring), so it cannot fall behind the code; tests/test_docs.py checks that it
names every module and that every module has a docstring to show."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / 'diffbackbones'
MARKER = '<!-- package map: made by docs/_hooks/package_map.py at build time -->'


def docstring(path: Path) -> str | None:
    """The first paragraph of a module's docstring, on one line (None when it has none)."""
    text = ast.get_docstring(ast.parse(path.read_text(encoding='utf-8')))
    return re.sub(r'\s+', ' ', text.split('\n\n')[0]).strip() if text else None


def summary(path: Path) -> str:
    """The first sentence of the docstring: what lives there."""
    text = docstring(path) or ''
    first = re.split(r'(?<=\.)\s+(?=[A-Z`(])', text, maxsplit=1)[0]
    return first.replace('|', '\\|')


def modules(package: Path = PACKAGE) -> list[Path]:
    """Every module of the package, folders' ``__init__.py`` included, in path order."""
    return sorted(p for p in package.rglob('*.py') if '__pycache__' not in p.parts)


def label(path: Path, package: Path = PACKAGE) -> str:
    """How the map names a module: its path in the package, a folder's ``__init__.py`` as the folder."""
    rel = path.relative_to(package)
    return f'{rel.parent.as_posix()}/' if path.name == '__init__.py' and path.parent != package else rel.as_posix()


def _row(path: Path) -> str:
    return f'| `{label(path)}` | {summary(path)} |'


def package_map(package: Path = PACKAGE) -> str:
    """Markdown: the top-level modules, then one section per room (subpackage) with a row per module."""
    lines = ['| module | what lives there |', '| --- | --- |']
    lines += [_row(p) for p in modules(package) if p.parent == package]
    for room in sorted(p for p in package.iterdir() if (p / '__init__.py').exists()):
        lines += ['', f'### `{label(room / "__init__.py")}`', '', docstring(room / '__init__.py') or '', '',
                  '| module | what lives there |', '| --- | --- |']
        lines += [_row(p) for p in modules(room) if p != room / '__init__.py']
    return '\n'.join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == 'layout.md':
        return markdown.replace(MARKER, package_map())
    return markdown
