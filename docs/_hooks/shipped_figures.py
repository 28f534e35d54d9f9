"""MkDocs hook: the figures of the shipped shapes_sd_tiny are served from the package itself
(``diffbackbones/models/weights/shapes_sd_tiny``), never copied into docs/, so they cannot go stale."""
from pathlib import Path

from mkdocs.structure.files import File

SHIPPED = Path(__file__).resolve().parents[2] / 'diffbackbones' / 'models' / 'weights' / 'shapes_sd_tiny'
FIGURES = {'img/losses.png': 'training/losses.png', 'img/samples.png': 'training/samples.png',
           'img/reconstructions.png': 'training/reconstructions.png', 'img/screen.png': 'screening/screen.png'}


def on_files(files, config):
    for served, shipped in FIGURES.items():
        files.append(File.generated(config, served, abs_src_path=str(SHIPPED / shipped)))
    return files
