"""What mmseg's tools need on top of mmengine here: safe checkpoint loading, gloo on CPU, a channel check."""
from __future__ import annotations

import codecs
import os
import pickle

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ['allow_mmengine_checkpoints', 'init_cpu_distributed', 'finish_distributed', 'check_segmentor', 'load_tool_config', 'build_runner']


def _history_buffer_statistic(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling, and resolves only what mmengine writes.

    mmengine pickles ``HistoryBuffer``'s statistics methods (``HistoryBuffer.min`` and so on) by
    qualified name, which pickle encodes as ``getattr(HistoryBuffer, 'min')``. Allowing the real
    ``getattr`` would let a crafted checkpoint reach anything (and run code), so only those
    attributes of that class resolve.
    """
    from mmengine.logging import HistoryBuffer
    # the four built-in statistics (registered lazily by the first HistoryBuffer) plus custom ones
    if owner is HistoryBuffer and name in {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f'refused getattr({owner!r}, {name!r}) in a checkpoint: only HistoryBuffer '
                                 'statistics methods are allowed')


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` (the default since torch 2.6) read mmengine checkpoints.

    mmengine writes its message hub (``HistoryBuffer`` objects holding numpy arrays, scalars and
    statistics methods) into every checkpoint, so ``--resume`` fails with ``UnpicklingError`` as
    shipped. Rather than turning the safe loader off, this allow-lists exactly the globals mmengine
    writes, with ``getattr`` narrowed to the one use mmengine makes of it.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer
    allowed = [HistoryBuffer, np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar,
               codecs.encode, (_history_buffer_statistic, 'builtins.getattr'),
               (_history_buffer_statistic, '__builtin__.getattr')]
    allowed += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool', 'uint8')]
    torch.serialization.add_safe_globals(allowed)


def init_cpu_distributed(launcher: str) -> None:
    """Start a gloo process group for ``--launcher pytorch`` when there is no GPU.

    mmengine's own init calls ``torch.cuda.set_device``, which fails without CUDA; once a group
    exists, mmengine skips its init and uses this one.
    """
    if launcher == 'pytorch' and not torch.cuda.is_available() and not dist.is_initialized():
        if 'RANK' not in os.environ:
            raise RuntimeError('--launcher pytorch needs the RANK/WORLD_SIZE environment of torchrun; '
                               'start with torchrun --nproc_per_node=N tools/train.py ...')
        dist.init_process_group(backend='gloo')


def finish_distributed() -> None:
    """Close the process group once every rank is done, before the interpreter exits.

    Left to interpreter teardown, gloo's worker threads can be destroyed while still joinable, and
    one rank aborts with "terminate called without an active exception" after a run that finished
    (seen once in CI with two ranks); torchrun then reports the whole job as failed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _backbone_channels(backbone: nn.Module) -> list[int] | None:
    info = getattr(backbone, 'feature_info', None)
    if info is None:
        return None
    if hasattr(info, 'channels'):  # timm FeatureInfo (TIMMBackbone route)
        return list(info.channels())
    return [level['num_chs'] for level in info]


def check_segmentor(model: nn.Module) -> None:
    """Raise ``ValueError`` when the neck / heads expect other channels than the backbone gives.

    mmseg would only fail at the first forward, with a convolution shape error; this names the field.
    """
    backbone = getattr(model, 'backbone', None)
    timm_model = getattr(backbone, 'timm_model', None)
    channels = _backbone_channels(timm_model if timm_model is not None else backbone)
    if channels is None:
        return
    neck = getattr(model, 'neck', None)
    if neck is not None:
        expected = list(getattr(neck, 'in_channels', []))
        if expected and expected != channels:
            raise ValueError(f'neck.in_channels={expected} but the backbone gives {channels} channels per level; '
                             f'set model.neck.in_channels={channels}.')
        return
    heads = [('decode_head', getattr(model, 'decode_head', None))]
    aux = getattr(model, 'auxiliary_head', None)
    heads += [(f'auxiliary_head[{i}]', h) for i, h in enumerate(aux)] if isinstance(aux, nn.ModuleList) \
        else [('auxiliary_head', aux)]
    for name, head in heads:
        if head is None or not hasattr(head, 'in_index'):
            continue
        index = head.in_index
        try:
            expected = [channels[i] for i in index] if isinstance(index, (list, tuple)) else channels[index]
        except IndexError:
            raise ValueError(f'{name}.in_index={index} but the backbone has only {len(channels)} levels '
                             f'(channels {channels}).') from None
        if getattr(head, 'input_transform', None) == 'resize_concat':
            expected = sum(expected)
        got = list(head.in_channels) if isinstance(head.in_channels, (list, tuple)) else head.in_channels
        if got != expected:
            raise ValueError(f'{name}.in_channels={got} does not match the backbone: levels {index} give '
                             f'{expected} channels (all levels: {channels}); set model.{name}.in_channels={expected}.')


def load_tool_config(config: str, cfg_options: dict | None, work_dir: str | None, launcher: str):
    """A tool's config: the file, then ``--cfg-options``; work_dir from the command line, the config,
    or ``./work_dirs/<config name>``, as mmseg's tools do."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = os.path.join('./work_dirs', os.path.splitext(os.path.basename(config))[0])
    return cfg


def build_runner(cfg):
    """The mmengine Runner (or the config's ``runner_type``, e.g. ``FlexibleRunner`` for FSDP) with safe
    checkpoint loading, gloo on CPU and the channel check done."""
    from mmengine.registry import RUNNERS
    allow_mmengine_checkpoints()
    init_cpu_distributed(cfg.launcher)
    runner = RUNNERS.get(cfg.get('runner_type', 'Runner')).from_cfg(cfg)
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    if isinstance(model, nn.Module):  # FlexibleRunner builds its model when training starts: checked there
        check_segmentor(model)
    return runner
