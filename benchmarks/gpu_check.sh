#!/usr/bin/env bash
# The device check (issue 15) as one command: benchmarks/bench_gpu.py with the image's python3 and the working
# tree on PYTHONPATH (no virtualenv, the package not installed), under a hard time limit.
#
#   benchmarks/gpu_check.sh               # on the GPU machine
#   benchmarks/gpu_check.sh --cpu-smoke   # every section at tiny sizes on a CPU (what tests/test_bench_gpu.py runs)
#
# Prints the JSON document on stdout; when $OUT is set, also writes it to $OUT/gpu_check.json and the progress
# log (stderr) to $OUT/gpu_check.log. Extra arguments go to bench_gpu.py. The exit status is bench_gpu.py's
# (1: a section failed or a correctness check did not hold); 124: the hard limit ($GPU_CHECK_TIMEOUT_S, default
# 300 s) stopped it, and the JSON of the sections finished by then is printed all the same.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
limit=${GPU_CHECK_TIMEOUT_S:-300}
dir=${OUT:-$(mktemp -d)}
mkdir -p "$dir"
json="$dir/gpu_check.json"
log="$dir/gpu_check.log"
rm -f "$json"
timeout --kill-after=10 "$limit" "$python" benchmarks/bench_gpu.py --out "$json" --budget-s "$((limit - 15))" "$@" \
  > /dev/null 2> >(tee "$log" >&2)
status=$?
wait  # the tee of the log
if [ -s "$json" ]; then
  cat "$json"
  echo
else
  echo '{"benchmark": "vpt_ray device check (issue 15)", "error": "bench_gpu.py wrote no JSON (exit status '"$status"'); see gpu_check.log"}'
fi
[ -z "${OUT:-}" ] && rm -rf "$dir"
exit "$status"
