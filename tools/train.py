"""Train a segmentor: mmseg's tools/train.py, plus what CPU machines and torch >= 2.6 need.

    python tools/train.py configs/toy/upernet_test-sd-tiny-practical_1xb8-400_shapes-128x128.py --work-dir work_dirs/x
    torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch --work-dir work_dirs/x

Differences from mmseg's script, all explicit: the gloo process group is started here when there is
no GPU; mmengine checkpoints are loaded through an allow-list (so --resume works with torch's safe
loader); the neck/head channels are checked against the backbone before training starts.
"""
import argparse
import os

from mmengine.config import DictAction

from diffbackbones.integrations.mmseg import build_runner, finish_distributed, load_tool_config


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument('--amp', action='store_true', default=False, help='enable automatic-mixed-precision training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value pairs, e.g. model.backbone.noise.t=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume

    runner = build_runner(cfg)
    runner.train()
    finish_distributed()


if __name__ == '__main__':
    main()
