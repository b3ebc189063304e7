#!/usr/bin/env python
"""Fine-tune RWKV6 with Bone, LoRA or PiSSA adapters (or every weight) on Lightning + DeepSpeed.

    python train.py --peft bone --bone_b 64 --load_model BASE.pth --data_file DATA --proj_dir OUT
    python train.py --help

See src/train/launch.py for how a run is launched and src/train/args.py for the flags.
"""
import sys

from src.train.launch import main

if __name__ == "__main__":
    sys.exit(main())
