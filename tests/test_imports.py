"""The package's house rules, checked on its source: imports form no cycle, and no class is huge."""
from __future__ import annotations

import ast
from pathlib import Path

import diffbackbones

PACKAGE_DIR = Path(diffbackbones.__file__).parent
MAX_CLASS_LINES = 250


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob('*.py'))}


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file, function-level imports included
    (an import deferred into a function to dodge a cycle is still a cycle)."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name: the deepest module
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    # the check below could pass by finding nothing at all: it must see a cycle that is there
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert _cycles(graph) == [['a', 'b', 'c', 'a']]
    sources = _sources()
    graph = {name: _imports(name, path, set(sources)) for name, path in sources.items()}
    assert 'diffbackbones.families' in graph['diffbackbones.catalog']  # the reader sees real edges


def test_the_package_imports_form_no_cycle():
    sources = _sources()
    graph = {name: _imports(name, path, set(sources)) for name, path in sources.items()}
    # A package's __init__ importing its own modules is how packages work; a module importing its
    # package back (`from diffbackbones import X` inside diffbackbones) closes a cycle and counts.
    assert _cycles(graph) == [], 'import cycles (each a path that returns to its start)'


def test_no_class_is_over_the_size_limit():
    too_big = []
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_big.append(f'{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines')
    assert not too_big, f'classes over {MAX_CLASS_LINES} lines: {too_big}'
