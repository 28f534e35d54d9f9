"""The denoiser families: one module each under diffbackbones/models/families/, one registry."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from diffbackbones.models import families
from diffbackbones.models.families import FAMILIES, DenoiserFamily, family_by_class


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_each_family_lives_in_its_own_module_named_after_it(name):
    family = FAMILIES[name]
    assert isinstance(family, DenoiserFamily) and family.name == name
    assert type(family).__module__ == f'diffbackbones.models.families.{name}'
    assert family_by_class(family.class_name) is family


def test_every_family_module_is_registered():
    # a new family module that nobody added to FAMILIES would be dead code: the registry must see it
    folder = Path(families.__file__).parent
    modules = {p.stem for p in folder.glob('*.py')} - {'__init__', 'base'}
    registered = {type(f).__module__.rpartition('.')[2] for f in FAMILIES.values()}
    assert modules == registered, f'family modules not in FAMILIES: {sorted(modules - registered)}'
    for module in modules:
        assert importlib.import_module(f'diffbackbones.models.families.{module}').__doc__


def test_an_unknown_denoiser_class_names_the_supported_ones():
    with pytest.raises(TypeError, match='UNet2DConditionModel'):
        family_by_class('NoSuchTransformer2DModel')
