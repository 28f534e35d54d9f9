"""The `diffbackbones` command: every subcommand is listed, each --help opens with a runnable example of
itself, every command that takes a model names it first (the old --model still parses, with a warning), and
the small commands that no task test runs (list, make-correspondence) work end to end."""
import importlib
import json
import re

import pytest

from diffbackbones.commands import COMMANDS, main
from diffbackbones.commands.base import command_parser
from diffbackbones.commands.cli import resolve_model
from diffbackbones.tasks.correspondence import find_pairs


def test_every_subcommand_is_listed_and_its_help_opens_with_an_example(capsys):
    with pytest.raises(SystemExit) as stop:
        main(['--help'])
    assert stop.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in COMMANDS)
    for name, (module_name, _) in COMMANDS.items():
        doc = importlib.import_module(f'diffbackbones.commands.{module_name}').__doc__
        examples = [line.strip() for line in doc.splitlines() if line.strip().startswith('diffbackbones ')]
        assert examples and any(e.startswith(f'diffbackbones {name} ') for e in examples), name
    with pytest.raises(SystemExit):
        main(['nope'])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_list_prints_the_catalog_and_make_correspondence_writes_pairs(tmp_path, capsys):
    rows = main(['list', 'test_sd_tiny', '--kind', 'res-out']) == 0 and capsys.readouterr().out.splitlines()
    assert rows[0].startswith('layer id') and len(rows) > 3
    assert all(' res-out ' in row for row in rows[1:]) and 'down-level0-repeat0-res-out' in rows[1]
    with pytest.raises(SystemExit, match='multiple of the VAE factor 8'):
        main(['list', 'test_sd_tiny', '--size', '100'])
    assert main(['make-correspondence', str(tmp_path / 'pairs'), '--train', '3', '--val', '1', '--test', '2']) == 0
    assert len(find_pairs(tmp_path / 'pairs', 'trn')) == 3 and len(find_pairs(tmp_path / 'pairs', 'test')) == 2
    first = sorted((tmp_path / 'pairs' / 'PairAnnotation' / 'trn').glob('*.json'))[0]
    assert json.loads(first.read_text())['src_kps']


def _parser(name):
    module = importlib.import_module(f'diffbackbones.commands.{COMMANDS[name][0]}')
    return command_parser(module, f'diffbackbones {name}')


# the commands that take a model; the rest (make-shapes, make-correspondence, train-diffusion) take none
MODEL_COMMANDS = {'list', 'extract', 'screen', 'probe', 'correspondence', 'benchmark', 'generate-labelled'}
# the commands whose model may be left out, and what it is then (correspondence: the --preset's, resolved later)
MODEL_DEFAULTS = {'benchmark': 'test_sd_tiny', 'generate-labelled': 'shapes_sd_tiny', 'correspondence': None}


def test_every_command_names_its_model_first_and_still_takes_the_old_flag(capsys):
    for name in COMMANDS:
        parser = _parser(name)
        positionals = [a for a in parser._actions if not a.option_strings]
        if not any(a.dest == 'model' for a in parser._actions):
            assert name not in MODEL_COMMANDS, name
            continue
        assert name in MODEL_COMMANDS, name
        assert positionals[0].dest == 'model' and positionals[0].metavar == 'model', name
        usage = parser.format_help().splitlines()[0]
        optional = name in MODEL_DEFAULTS
        assert usage == f'usage: diffbackbones {name} {"[model]" if optional else "model"} [options]', usage
        # the model is listed as a positional; the old spelling is not listed as an option, only mentioned
        listed = parser.format_help()
        assert re.search(r'^positional arguments:\n  model ', listed, re.M), name
        assert not re.search(r'^  --model\b', listed, re.M), name  # an option's own line
        assert '--model NAME still works (deprecated)' in ' '.join(listed.split()), name
        # the flags a parse needs besides the model (extract: --images and --out, probe: --data, ...)
        needed = [s for a in parser._actions if a.required and a.option_strings for s in (a.option_strings[0], 'x')]
        capsys.readouterr()
        first = parser.parse_args(['test_sd_tiny', *needed])
        assert resolve_model(first, required=not optional) == 'test_sd_tiny', name
        assert capsys.readouterr().err == '', name
        old = parser.parse_args(['--model', 'test_sd_tiny', *needed])
        assert resolve_model(old, required=not optional) == 'test_sd_tiny', name
        assert (f'diffbackbones {name}: warning: --model is deprecated: name the model first, '
                f'`diffbackbones {name} test_sd_tiny ...`') in capsys.readouterr().err
        assert parser.parse_args(['test_sd_tiny', '--model', 'test_sd_tiny', *needed]).model == 'test_sd_tiny'
        for argv in (['sd15', '--model', 'test_sd_tiny'], ['--model', 'test_sd_tiny', 'sd15']):
            with pytest.raises(SystemExit):
                parser.parse_args([*argv, *needed])
            err = capsys.readouterr().err
            assert "model 'sd15'" in err and "--model 'test_sd_tiny'" in err and 'different models' in err, err
        left_out = parser.parse_args(needed)
        if optional:
            assert resolve_model(left_out, required=False) == MODEL_DEFAULTS[name], name
            assert type(left_out.model) is (str if MODEL_DEFAULTS[name] else type(None)), name
        else:
            with pytest.raises(SystemExit, match='required: model'):
                resolve_model(left_out)


def test_extract_takes_the_model_first_through_the_console_script(monkeypatch):
    extract_command = importlib.import_module('diffbackbones.commands.extract')
    parsed = []
    monkeypatch.setattr(extract_command, 'run', parsed.append)  # parse only: main hands the flags to run
    assert main(['extract', 'test_sd_tiny', '--images', 'data/shapes/img_dir/val', '--out', 'work_dirs/f']) == 0
    args, = parsed
    assert (args.model, args.images, args.out, args.activations) == \
           ('test_sd_tiny', 'data/shapes/img_dir/val', 'work_dirs/f', 'practical')
    assert _parser('extract').parse_args(['--images', 'i', 'sd15', '--out', 'o']).model == 'sd15'  # among flags too
    monkeypatch.undo()
    with pytest.raises(SystemExit, match='required: model'):  # before any work: the images are not looked at
        main(['extract', '--images', 'nowhere', '--out', 'nowhere'])
