"""What every subcommand module provides, and how one runs on its own (the ``tools/*.py`` shims).

A command module has (its one-line summary sits in ``COMMANDS``, ``__init__.py``):
    - a docstring: the ``--help`` text, with a runnable example first;
    - ``add_arguments(parser)``: its flags;
    - ``run(args)``: calls the library (the work itself lives in the package, not here) and prints
      what a user of the command wants to see; returns the library's result.
"""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any, Sequence

__all__ = ['command_parser', 'run_command']


def command_parser(module: ModuleType, prog: str, parser: argparse.ArgumentParser | None = None
                   ) -> argparse.ArgumentParser:
    """The parser of one command (a new one, or a subparser handed in by ``diffbackbones``)."""
    parser = parser or argparse.ArgumentParser(prog=prog)
    parser.description = module.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    module.add_arguments(parser)
    return parser


def run_command(module_name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> Any:
    """Parse ``argv`` with the command's flags and run it (``tools/screen.py`` calls this)."""
    module = importlib.import_module(module_name)
    name = module_name.rpartition('.')[2].replace('_', '-')
    args = command_parser(module, prog or f'diffbackbones {name}').parse_args(argv)
    return module.run(args)
