"""What the commands share: how a command names its model (the zoo name first, ``diffbackbones extract
test_sd_tiny ...``), how ``--weights``/``--activations`` map to backbone arguments, and how an image file
becomes the backbone's input (stopping the command with the file's name when it cannot)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from diffbackbones.utils import images
from diffbackbones.utils.images import IMAGE_SUFFIXES
from diffbackbones.models.zoo import ModelSpec, default_weights

__all__ = ['IMAGE_SUFFIXES', 'add_model_argument', 'resolve_model', 'pretrained_option', 'activations_option',
           'given_options', 'read_image']

ZOO_NAMES = 'sd15, sdxl, shapes_sd_tiny, test_sd_tiny, ...'


class _Default(str):
    """A command's default model as the parser leaves it when none is named: marked, so that the same name
    typed on the command line (an equal, perhaps even identical, string) can be told from it."""


def _name_model(parser: argparse.ArgumentParser, namespace: argparse.Namespace, name: str, spelling: str,
                other: str) -> None:
    """Store the model that ``spelling`` names; the ``other`` spelling may have named it already, but not
    differently (which of the two was meant cannot be guessed)."""
    named = getattr(namespace, 'model', None)
    if named is not None and not isinstance(named, _Default) and named != name:
        parser.error(f'{spelling} {name!r} and {other} {named!r} name different models: name the model once, '
                     f'first (`{parser.prog} MODEL ...`)')
    namespace.model = name


class _ModelPositional(argparse.Action):
    """The positional ``model``."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None or isinstance(values, _Default):  # none typed: argparse hands in the default
            return
        _name_model(parser, namespace, values, 'model', '--model')


class _DeprecatedModelOption(argparse.Action):
    """The old ``--model NAME``: still accepted, with a warning on stderr in argparse's own format (what
    Python 3.13's ``deprecated=True`` prints), so that scripts keep working while they are moved over."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f'{parser.prog}: warning: --model is deprecated: name the model first, '
              f'`{parser.prog} {values} ...`', file=sys.stderr)
        _name_model(parser, namespace, values, '--model', 'model')


def add_model_argument(parser: argparse.ArgumentParser, help: str = f'zoo name ({ZOO_NAMES})',
                       default: str | None = None, optional: bool = False, choices=None) -> None:
    """Let a command take its model as every command does: the zoo name, first (``diffbackbones extract
    test_sd_tiny --images ...``), and still as the deprecated ``--model NAME``.

    Sets the usage line to ``PROG model [options]`` (``[model]`` when it may be left out): the model first,
    the way the examples spell it. ``run`` calls :func:`resolve_model` on the parsed flags.

    Args:
        parser: the command's parser.
        help: what the model is, for ``--help``; the default, if any, is added.
        default: the model when none is named; None: the model is required, unless ``optional``.
        optional: the model may be left out with no default (the command finds it elsewhere, e.g. a preset).
        choices: the names accepted (default: any; unknown names fail when the model is looked up).
    """
    optional = optional or default is not None
    if default is not None:
        help = f'{help} (default: {default})'
    parser.usage = f'%(prog)s {"[model]" if optional else "model"} [options]'
    # Always nargs='?' (the requirement is checked by resolve_model): a required positional would refuse the
    # old spelling `--model NAME` alone, which must keep working.
    parser.add_argument('model', nargs='?', default=None if default is None else _Default(default),
                        choices=choices, metavar='model', action=_ModelPositional,
                        help=f'{help}; the old spelling --model NAME still works (deprecated)')
    # Hidden from --help: one spelling is taught. SUPPRESS: the positional alone sets the default.
    parser.add_argument('--model', dest='model', default=argparse.SUPPRESS, choices=choices, metavar='NAME',
                        action=_DeprecatedModelOption, help=argparse.SUPPRESS)


def resolve_model(args: argparse.Namespace, required: bool = True) -> str | None:
    """After parsing: ``args.model`` as the command uses it, a plain zoo name (or None where ``required`` is
    False and none was named); stops the command when a required model is missing.

    Args:
        args: flags parsed by a parser that :func:`add_model_argument` set up.
        required: whether a missing model stops the command.

    Returns:
        The model's zoo name, also set as ``args.model``.
    """
    model = getattr(args, 'model', None)
    if model is None:
        if required:
            raise SystemExit(f'the following arguments are required: model (a zoo name: {ZOO_NAMES}), named '
                             'first: `diffbackbones COMMAND MODEL [options]`')
        return None
    args.model = str(model)  # a plain str, not the parser's marked default: it is saved in results' settings
    return args.model


def pretrained_option(spec: ModelSpec, weights: str | None) -> bool | str:
    """``--weights``: omitted -> the zoo's weights (random for test models), ``'random'``, or a local
    diffusers folder / hub id."""
    return False if weights == 'random' else default_weights(spec, weights)


def activations_option(text: str) -> str | list[str]:
    """``--activations``: a preset name (or preset file), or comma-separated layer ids."""
    return text.split(',') if ',' in text else text


def given_options(args, names=('t', 'image_size')) -> dict:
    """The backbone options among ``names`` that a command's flags set (None: left to the library's default)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def read_image(path: Path) -> torch.Tensor:
    """``images.read_image`` for a command: an unreadable file stops it with the file's name."""
    try:
        return images.read_image(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
