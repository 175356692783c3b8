#!/usr/bin/env bash
# Session 14, call 8: where the mxfp4 and nvfp4 linear's time goes at 7B qkv and fc1 (for issue 16's next step).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
cd benchmarks
for recipe in mxfp4 nvfp4; do for n in 12288 22016; do
  echo "== $recipe 8192x4096 -> $n" >> $OUT/call_8_profile_blocks.txt
  timeout 60 python3 profile_linear.py --recipe $recipe --n $n --rows 14 2>&1 | grep -v -i "warn\|run_backward" >> $OUT/call_8_profile_blocks.txt
done; done
cat $OUT/call_8_profile_blocks.txt | cut -c1-160 | grep -v "^---" | head -150
