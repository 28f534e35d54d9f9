"""Sharded fine-tuning through mmengine: FlexibleRunner + FSDPStrategy (PyTorch FSDP, FULL_SHARD) on two CPU
ranks (gloo, real torchrun), against one process on the same global batch, on the shipped toy config."""
import json

import pytest
import torch

pytest.importorskip('mmseg')
from mmengine.config import Config  # noqa: E402

from diffbackbones import DiffusionBackbone  # noqa: E402
from diffbackbones.data.shapes import make_shapes_dataset  # noqa: E402

from conftest import REPO  # noqa: E402
from test_segmentation import run_tool  # noqa: E402

TOY = REPO / 'configs' / 'toy' / 'fcn_shapes-sd-tiny-finetune_fsdp-2xb2-4_shapes-64x64.py'
ITERS = 3
# measured: the per-iteration losses of the two runs agree to about 1e-7 relative; the bound leaves room for
# the order of floating-point sums (the gradients are reduced across ranks, not summed in one process)
LOSS_TOLERANCE = 1e-4


def derived_config(tmp_path, name, data, batch_size, **changes):
    """The toy config with the probe hook, the test's data, ``batch_size`` per rank and ``changes`` (each
    assigned whole: a name given twice in a config file keeps only its last value), written beside the runs."""
    lines = [f"_base_ = [{str(TOY)!r}]",
             "custom_imports = dict(imports=['diffbackbones', 'fsdp_probe'], allow_failed_imports=False)",
             "custom_hooks = [dict(type='LeanCheckpointHook'), dict(type='RankRecordHook')]",
             f"train_dataloader = dict(batch_size={batch_size}, dataset=dict(data_root={str(data)!r}))",
             f"train_cfg = dict(max_iters={ITERS})",
             f"default_hooks = dict(checkpoint=dict(interval={ITERS}))"]
    lines += [f'{key} = {value!r}' for key, value in changes.items()]
    path = tmp_path / f'{name}.py'
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.mark.slow
def test_two_rank_fsdp_fine_tuning_shards_the_denoiser_matches_one_process_and_saves_a_full_checkpoint(tmp_path):
    data = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2)
    env = dict(PYTHONPATH=str(REPO / 'tests' / 'integrations' / 'helpers'))
    sharded = derived_config(tmp_path, 'sharded', data, batch_size=2)
    run_tool('train.py', sharded, '--launcher', 'pytorch', '--work-dir', tmp_path / 'sharded', env_extra=env,
             launcher=['--nproc_per_node=2', '--master_port=29533'])
    # one process, the same global batch (4 = 2 ranks x 2), no sharding: the same FlexibleRunner (so the model is
    # built at the same point of the same random stream) with its single-device strategy
    single = derived_config(tmp_path, 'single', data, batch_size=4,
                            strategy=dict(_delete_=True, type='SingleDeviceStrategy'))
    run_tool('train.py', single, '--work-dir', tmp_path / 'single', env_extra=env)

    ranks = [json.loads((tmp_path / 'sharded' / f'rank{r}.json').read_text()) for r in (0, 1)]
    reference = json.loads((tmp_path / 'single' / 'rank0.json').read_text())
    assert [r['wrapper'] for r in ranks] == ['MMFullyShardedDataParallel'] * 2 and ranks[0]['world'] == 2
    assert reference['wrapper'] != 'MMFullyShardedDataParallel'

    # each rank holds half of the model (each FSDP unit's flat vector is split in two, padded to even sizes) and
    # about half of the denoiser: the root unit is one vector of the denoiser's unwrapped parts, the VAE and the
    # head, whose split falls where it falls within the denoiser's share (measured: 52 / 48 %)
    total = reference['denoiser_held']
    assert total == sum(p.numel() for p in DiffusionBackbone('shapes_sd_tiny', 'practical').denoiser.parameters())
    for record in ranks:
        assert record['model_held'] == pytest.approx(reference['model_held'] / 2, rel=1e-3)
        assert record['denoiser_held'] == pytest.approx(total / 2, rel=0.1)
    assert sum(r['denoiser_held'] for r in ranks) == total

    # the mean of the two ranks' losses (2 images each) is the one-process loss on the 4 images, step after step
    assert len(reference['losses']) == ITERS
    for step, images in enumerate(reference['images']):   # the same global batch: the ranks interleave it
        assert sorted(ranks[0]['images'][step] + ranks[1]['images'][step]) == sorted(images)
    for step, expected in enumerate(reference['losses']):
        mean = (ranks[0]['losses'][step] + ranks[1]['losses'][step]) / 2
        assert mean == pytest.approx(expected, rel=LOSS_TOLERANCE), (step, mean, expected)
    assert reference['losses'][-1] < reference['losses'][0]  # and it trains

    # the checkpoint: the whole (unsharded) state dict, lean (no frozen VAE), loads strictly into a plain backbone
    checkpoint = torch.load(tmp_path / 'sharded' / f'iter_{ITERS}.pth', map_location='cpu', weights_only=False)
    weights = {k[len('backbone.'):]: v for k, v in checkpoint['state_dict'].items() if k.startswith('backbone.')}
    assert not any(k.startswith('vae.') for k in weights)
    backbone = DiffusionBackbone('shapes_sd_tiny', 'practical', trainable_denoiser=True)
    shipped = {k: v.clone() for k, v in backbone.denoiser.state_dict().items()}
    backbone.load_state_dict(weights, strict=True)
    loaded = backbone.denoiser.state_dict()
    assert all(loaded[k].shape == v.shape for k, v in shipped.items())
    assert any(not torch.equal(loaded[k], shipped[k]) for k in shipped)   # the fine-tuned weights, not the shipped
    single_weights = torch.load(tmp_path / 'single' / f'iter_{ITERS}.pth', map_location='cpu', weights_only=False)
    for key, value in single_weights['state_dict'].items():   # and the same weights as one process trained
        torch.testing.assert_close(checkpoint['state_dict'][key], value, rtol=1e-4, atol=1e-6)


SDXL_FSDP = REPO / 'configs' / 'depth' / 'vpd-diffusers_sdxl-practical_fsdp-8xb4-25k_nyu-480x480.py'


def test_the_sdxl_vpd_fsdp_config_changes_only_the_runner_and_wraps_the_blocks_without_activations():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from diffbackbones.backbone.denoiser.capture import HOLDS_CAPTURE
    from diffbackbones.integrations.mmseg.fsdp import diffusion_block_wrap_policy, is_diffusion_block
    from conftest import collapse_keys, config_differences
    register_all_modules(init_default_scope=False)
    ours = Config.fromfile(SDXL_FSDP)
    base = Config.fromfile(SDXL_FSDP.parent / 'vpd-diffusers_sdxl-practical_4xb8-25k_nyu-480x480.py')
    changed = {'runner_type', 'strategy', 'train_dataloader.batch_size'}
    assert collapse_keys(config_differences(ours.to_dict(), base.to_dict()), changed) == changed
    assert ours.train_dataloader.batch_size * 8 == base.train_dataloader.batch_size * 4   # the same global batch
    assert ours.strategy.model_wrapper.auto_wrap_policy.type == 'diffusion_block_wrap_policy'
    ours.model.backbone.pretrained = False
    with torch.device('meta'):
        model = MODELS.build(ours.model)
    denoiser = model.backbone.denoiser
    blocks = [m for m in denoiser.modules() if is_diffusion_block(m)]
    wrapped = [m for m in blocks if diffusion_block_wrap_policy(m, recurse=False)]
    kept = [m for m in blocks if getattr(m, HOLDS_CAPTURE, False)]
    assert wrapped and kept and len(wrapped) + len(kept) == len(blocks)
    assert not any(diffusion_block_wrap_policy(m, recurse=False) for m in model.modules() if not is_diffusion_block(m))
    count = lambda modules: sum(p.numel() for m in modules for p in m.parameters())
    assert count(wrapped) > 0.8 * count([denoiser])   # most of SDXL's denoiser is sharded block by block
