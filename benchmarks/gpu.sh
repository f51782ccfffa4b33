#!/usr/bin/env bash
# Throughput on a GPU in under 5 minutes. Run from anywhere on a machine whose JAX sees a GPU
# (no install needed if jax, flax, optax and orbax-checkpoint are there):
#     bash benchmarks/gpu.sh            # results in benchmarks/results/*_gpu.jsonl
# The tutorial's whole figure is the guided row of batch 80 at 1000 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import jax
assert jax.default_backend() == "gpu", f"no GPU visible to JAX: {jax.devices()}"
print(jax.devices())
PY
# Sampling (batches 8, 80, 256; guided and unguided) and compile time for 100 vs 1000 steps.
python benchmarks/throughput.py --sections sample,compile --steps 1000 --repeats 3 \
    --out benchmarks/results/throughput_gpu.jsonl
# Training images/s (XLA's convolutions are the choice on GPU; "auto" equals "xla" there).
python benchmarks/throughput.py --sections train --train-steps 20 --repeats 3 \
    --out benchmarks/results/train_gpu.jsonl
# Data-parallel scaling over the real devices present.
n=$(python -c "import jax; print(jax.device_count())")
counts=1; k=2
while [ "$k" -le "$n" ]; do counts="$counts,$k"; k=$((k * 2)); done
python benchmarks/scaling.py --real --devices "$counts" --batch 256 --steps 1000 \
    --train-steps 20 --out benchmarks/results/scaling_gpu.jsonl
