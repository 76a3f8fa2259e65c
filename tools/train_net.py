#!/usr/bin/env python
"""Train or evaluate CPCL with FastReID's trainer, evaluator and launcher.

    python tools/train_net.py --config-file configs/CPCL/cuhk.yml
    python tools/train_net.py --config-file configs/CPCL/cuhk.yml --num-gpus 4
    torchrun --nproc_per_node 4 tools/train_net.py --config-file configs/CPCL/cuhk.yml
    srun python tools/train_net.py --config-file configs/CPCL/cuhk.yml    # in an sbatch script
    python tools/train_net.py --config-file configs/CPCL/cuhk.yml --eval-only MODEL.WEIGHTS model.pth
    python tools/train_net.py --config-file configs/CPCL/cuhk.yml --resume

`python tools/train_net.py --help` lists the flags; any config key can follow as KEY VALUE. The
work is cpcl_plugin/train.py's (also `python -m cpcl_plugin.train`); processes are started by
cpcl_plugin/engine/launch.py.
"""
import os
import sys

# Run from a checkout without installing: the package beside this folder comes first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cpcl_plugin.train import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
