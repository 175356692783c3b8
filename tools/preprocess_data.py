"""Text or JSONL -> Megatron indexed dataset with an offline BPE tokenizer (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_fp4.tools.preprocess_data import main  # noqa: E402

if __name__ == "__main__":
    main()
