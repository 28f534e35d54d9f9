"""``make detect``: Mask R-CNN (MMDetection's own recipe, at CPU scale) on the frozen features of the shipped
shapes_sd_tiny and on random ones, trained and tested through mmdet's own tools/train.py and tools/test.py on the
embedded shapes-instances set; prints COCO bbox and segm mAP (pycocotools) of both, and where mmdet drew the
predicted masks. From Python: ``diffbackbones.integrations.mmdet.detect.run_detect``.

    python tools/detect.py [CONFIG] [--data data/shapes-instances] [--work-dir work_dirs/detect] [--iters N]
"""
import argparse
import sys
import time

from diffbackbones.integrations.mmdet.detect import detection_table, run_detect

DEFAULT = 'configs/toy/mask-rcnn_shapes-sd-tiny-practical_1xb8-300_shapes-instances-128x128.py'


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', default=DEFAULT)
    parser.add_argument('--data', default='data/shapes-instances')
    parser.add_argument('--work-dir', default='work_dirs/detect')
    parser.add_argument('--iters', type=int, default=None, help="training iterations (default: the config's)")
    args = parser.parse_args(argv)
    start = time.time()
    runs = run_detect(args.config, args.data, args.work_dir, args.iters, progress=True)
    print(detection_table(runs))
    for run in runs:
        print(f'{run.weights}: ground truth | prediction drawn in {run.pictures}')
    print(f'{time.time() - start:.0f} s')


if __name__ == '__main__':
    main(sys.argv[1:])
