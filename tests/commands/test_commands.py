"""The `diffbackbones` command: every subcommand is listed, each --help opens with a runnable example of
itself, and the small commands that no task test runs (list, make-correspondence) work end to end."""
import importlib
import json

import pytest

from diffbackbones.commands import COMMANDS, main
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
