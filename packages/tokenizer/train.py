"""MedITok training entry point.

deepspeed packages/tokenizer/train.py --config packages/tokenizer/configs/tiny-cpu-stage1.yaml [key=value ...]
python packages/tokenizer/train.py --config ...            # one process
torchrun --nproc_per_node 2 packages/tokenizer/train.py --config ...
"""

import sys

from meditok.tokenizer.training import main

if __name__ == "__main__":
    sys.exit(main())
