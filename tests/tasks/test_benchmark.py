"""tools/benchmark.py on the tiny model: it runs, and its arithmetic says what the backbone skips.

No timing is asserted (the machines are noisy); FLOP counts and the feature check are exact.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO


@pytest.fixture(scope='module')
def report() -> str:
    cmd = [sys.executable, str(REPO / 'tools' / 'benchmark.py'), 'test_sd_tiny', '--size', '64',
           '--reps', '1', '--threads', '1', '--inversion', '--control']
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, 'HF_HUB_OFFLINE': '1'},
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _table(report: str) -> dict[str, list[float]]:
    """Variant key ('a'..'d', 'i', 'k') -> its numeric columns: images/s, latency, memory, TFLOP/image, TFLOP/s, % matmul."""
    rows = {}
    for line in report.splitlines():
        if m := re.match(r'\(([abcdik])\) ', line):
            cells = re.split(r'\s{2,}', line.strip())[1:]
            rows[m.group(1)] = [float(c.rstrip('%')) for c in cells]
    return rows


def _number(report: str, pattern: str) -> float:
    m = re.search(pattern, report)
    assert m, f'{pattern!r} not in the report:\n{report}'
    return float(m.group(1))


def test_backbone_computes_the_full_forwards_features(report):
    assert _number(report, r'max relative L2 error ([0-9.e+-]+)') < 1e-5


def test_flop_counts_show_the_early_exit_and_the_cache(report):
    rows = _table(report)
    assert set(rows) == set('abcdik'), report
    flops = {k: v[3] for k, v in rows.items()}
    vae = _number(report, r'of which VAE encode\s+([0-9.e+-]+)')
    assert flops['c'] == flops['b'] < flops['a']  # the backbone does exactly the floor's arithmetic
    assert flops['d'] == pytest.approx(flops['c'] - vae, rel=1e-3)  # a warm cache skips just the VAE encoder
    assert _number(report, r'FLOP bound a/b: ([0-9.]+)x') == pytest.approx(flops['a'] / flops['b'], abs=0.01)


def test_inversion_costs_its_whole_denoiser_forwards(report):
    """(i), DDIM inversion to t=50 on the 100-step schedule: (c)'s arithmetic plus 5 whole-denoiser forwards,
    each what (a) computes beyond the VAE encoder."""
    flops = {k: v[3] for k, v in _table(report).items()}
    vae = _number(report, r'of which VAE encode\s+([0-9.e+-]+)')
    assert _number(report, r'against sampled noise, (\d+) extra whole-denoiser forwards') == 5
    assert flops['i'] == pytest.approx(flops['c'] + 5 * (flops['a'] - vae), rel=2e-3)  # 4 printed digits
    assert _number(report, r'FLOP ratio i/c ([0-9.]+)x') == pytest.approx(flops['i'] / flops['c'], abs=0.01)
    assert _number(report, r'i/c time: ([0-9.]+)x') > 0


def test_controlnet_variant_runs_the_controlnet_whole(report):
    """(k), a random ControlNet on the practical preset (up blocks: its residuals are consumed): (c)'s arithmetic
    plus exactly one ControlNet call, counted on its own; and the residuals change the features."""
    flops = {k: v[3] for k, v in _table(report).items()}
    call = _number(report, r'one ControlNet call ([0-9.e+-]+) TFLOP/image')
    assert 'ControlNet consumed: True' in report
    assert call > 0 and flops['k'] > flops['c']
    assert flops['k'] == pytest.approx(flops['c'] + call, rel=2e-3)  # 4 printed digits
    assert _number(report, r'FLOP ratio k/c ([0-9.]+)x') == pytest.approx(flops['k'] / flops['c'], abs=0.01)
    assert _number(report, r'k/c time: ([0-9.]+)x') > 0
    assert _number(report, r'\(k\) vs \(c\) features, max relative L2 difference ([0-9.e+-]+)') > 1e-3


def test_controlnet_variant_is_skipped_for_down_and_mid_activations():
    """Activations in the down blocks / mid block never see the residuals: (k) does (c)'s arithmetic."""
    from diffbackbones import DiffusionBackbone
    from diffbackbones.tasks.benchmarking import control_stage, count_flops, make_variants
    bb = DiffusionBackbone('test_sd_tiny', ['down-level1-downsampler-out', 'mid-repeat1-res-out'],
                           pretrained=False, prune=False)
    control = control_stage(bb)
    assert not control.consumed
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    variants = make_variants(bb, images, control=control)
    with torch.inference_mode():
        assert count_flops(variants['k']) == count_flops(variants['c'])
        assert all(torch.equal(k, c) for k, c in zip(variants['k'](), variants['c']()))
    assert not control.consumed and next(bb.control.parameters(), None) is None  # restored after each call


def test_rates_are_put_against_the_measured_matmul_rate(report):
    rate = _number(report, r'matmul rate: ([0-9.e+-]+) TFLOP/s')
    assert rate > 0
    for key, (images_per_s, latency_ms, _, tflop, tflop_per_s, percent) in _table(report).items():
        assert images_per_s == pytest.approx(1e3 / latency_ms, rel=0.02), key
        assert tflop_per_s == pytest.approx(tflop * images_per_s, rel=0.02), key
        assert percent == pytest.approx(100 * tflop_per_s / rate, rel=0.05, abs=0.1), key


def test_pruned_parameter_memory_is_below_the_full_pipeline(report):
    m = re.search(r'backbone ([0-9.]+) MiB \(pruned; ([0-9.]+) MiB unpruned\) vs full pipeline ([0-9.]+) MiB', report)
    assert m, report
    pruned, unpruned, pipeline = map(float, m.groups())
    assert pruned < unpruned < pipeline


def test_format_benchmark_times_both_parts_in_both_formats():
    cmd = [sys.executable, str(REPO / 'tools' / 'benchmark_formats.py'), '--model', 'test_sd_tiny', '--size', '64',
           '--reps', '1', '--threads', '1']
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, 'HF_HUB_OFFLINE': '1'},
                          timeout=600)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r'^(VAE encoder|denoiser to the last activation)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)x$',
                      done.stdout, re.M)
    assert [r[0] for r in rows] == ['VAE encoder', 'denoiser to the last activation'], done.stdout
    for _, default_ms, cl_ms, ratio in rows:
        assert float(ratio) == pytest.approx(float(default_ms) / float(cl_ms), rel=0.02, abs=0.01)


def test_flops_counted_on_meta_are_those_of_a_real_forward():
    # the cost table's FLOPs come from meta-device forwards; on a tiny model they are a CPU forward's own count with
    # attention in its math form (the CPU's fused kernel has no FLOP formula: it would count as none)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from diffbackbones import DiffusionBackbone
    from diffbackbones.tasks.memory import backbone_flops
    vae, kept, whole = backbone_flops('test_qwen_image_tiny', 'default', size=64)
    # on meta no text encoder runs: the prompt is the entry's full length (512 tokens), as here
    backbone = DiffusionBackbone('test_qwen_image_tiny', 'default', pretrained=False, dtype='bf16',
                                 conditioning=dict(prompt_embeds=torch.zeros(1, 512, 32)))
    working, work_hw = backbone.working_input(torch.zeros(1, 3, 64, 64))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counted:
        latents = backbone.encode(working)
    assert counted.get_total_flops() == vae > 0
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counted:
        backbone.extract(latents, work_hw, working)
    assert counted.get_total_flops() == kept
    assert 0 < kept < whole  # 'default' stops after block 1 of 2
    assert backbone_flops('test_lumina2_tiny', 'default', size=64) is None  # its forward reads caption lengths
