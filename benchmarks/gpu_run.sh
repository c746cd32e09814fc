#!/usr/bin/env bash
# One GPU session's work in one command (the device machine has no network: build without
# isolation against its own torch, setuptools and pybind11). Logs and tables go to $OUT.
#   OUT=/tmp/out bash benchmarks/gpu_run.sh [steps...]
# steps: build tests conv round graph_round relu_pool search layout quick paper (default: all but
# paper).
# DEVICE=cpu runs the search steps on the CPU (to try the script on a machine without a GPU).
# TESTS_ARGS adds pytest arguments to the tests step (e.g. "-n 8": pytest-xdist is in the image).
# "paper" runs the full CIFAR-10 protocol (--preset paper --table, bfloat16 autocast) into
# runs/gpu-paper, resuming it there if an earlier call was cut off by its time limit.
set -uo pipefail
OUT=${OUT:-/tmp/plantops-gpu}
mkdir -p "$OUT"
steps=${*:-build tests conv round graph_round relu_pool search layout quick}
DEVICE=${DEVICE:-cuda}
{
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -1
} > "$OUT/versions.txt" 2>&1
for step in $steps; do
  start=$(date +%s)
  case $step in
    build)
      PLANTOPS_CUDA_ARCHS=${PLANTOPS_CUDA_ARCHS:-90} python3 -m pip install --no-build-isolation \
        --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
      python3 -c "import plantops; print(plantops.backends('cuda'))" >> "$OUT/build.log" 2>&1 ;;
    tests)
      timeout ${TESTS_TIMEOUT:-300} python3 -m pytest tests -q -rs --maxfail=30 -p no:cacheprovider ${TESTS_ARGS:-} \
        > "$OUT/tests.log" 2>&1 ;;
    conv)
      PLANTOPS_BENCH_TABLE="$OUT/conv_table.md" timeout ${CONV_TIMEOUT:-300} python3 -m pytest \
        benchmarks/test_bench_planted_conv.py --benchmark-only -q -p no:cacheprovider \
        ${CONV_K:+-k "$CONV_K"} > "$OUT/bench_conv.log" 2>&1 ;;
    round)
      PLANTOPS_BENCH_TABLE="$OUT/round_table.md" timeout ${ROUND_TIMEOUT:-200} python3 -m pytest \
        benchmarks/test_bench_planted_round.py --benchmark-only -q -s -p no:cacheprovider \
        > "$OUT/bench_round.log" 2>&1 ;;
    graph_round)
      PLANTOPS_BENCH_TABLE="$OUT/graph_round_table.md" timeout ${GRAPH_ROUND_TIMEOUT:-200} python3 -m pytest \
        benchmarks/test_bench_graph_round.py --benchmark-only -q -s -p no:cacheprovider \
        > "$OUT/bench_graph_round.log" 2>&1 ;;
    relu_pool)
      PLANTOPS_BENCH_TABLE="$OUT/relu_pool_table.md" timeout ${POOL_TIMEOUT:-100} python3 -m pytest \
        benchmarks/test_bench_relu_pool.py --benchmark-only -q -p no:cacheprovider \
        > "$OUT/bench_relu_pool.log" 2>&1 ;;
    quick)
      rm -rf runs/gpu-quick
      timeout ${QUICK_TIMEOUT:-300} python3 -m plantops.search --dataset folder \
        --data ${PLANTOPS_DATA:-.data/cifar10-jpeg.tar.gz} --device $DEVICE --out runs/gpu-quick \
        > "$OUT/quick.log" 2>&1
      rc=$?; cp runs/gpu-quick/result.json "$OUT/quick_result.json" 2>/dev/null; (exit $rc) ;;
    search)
      PLANTOPS_BENCH_TABLE="$OUT/search_table.md" PLANTOPS_DATA=${PLANTOPS_DATA:-.data/cifar10-jpeg.tar.gz} \
        timeout ${SEARCH_TIMEOUT:-200} python3 -m pytest benchmarks/test_bench_search.py \
        --benchmark-only -q -s -p no:cacheprovider > "$OUT/bench_search.log" 2>&1 ;;
    layout)
      PLANTOPS_BENCH_TABLE="$OUT/layout_table.md" timeout ${LAYOUT_TIMEOUT:-200} python3 -m pytest \
        benchmarks/test_bench_layout.py --benchmark-only -q -p no:cacheprovider \
        > "$OUT/bench_layout.log" 2>&1 ;;
    paper)
      dir=runs/gpu-paper
      if [ -f $dir/config.json ]; then args=(--resume $dir); else
        args=(--preset paper --table --dataset folder --data ${PLANTOPS_DATA:-.data/cifar10-jpeg.tar.gz}
              --compare-with cifar10 --device $DEVICE --precision ${PRECISION:-bfloat16} --out $dir); fi
      timeout ${PAPER_TIMEOUT:-540} python3 -m plantops.search "${args[@]}" >> "$OUT/paper.log" 2>&1
      rc=$?; cp $dir/*.md $dir/*.json $dir/*.png $dir/log.jsonl "$OUT/" 2>/dev/null; (exit $rc) ;;
  esac
  echo "$step: rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt"
done
tail -n 5 "$OUT"/*.log
