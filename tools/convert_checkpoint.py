"""Checkpoint conversion (see megatron_fp4/tools/convert_checkpoint.py): export / import."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_fp4.tools.convert_checkpoint import main  # noqa: E402

if __name__ == "__main__":
    main()
