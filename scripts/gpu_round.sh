#!/usr/bin/env bash
# One training round of the default model on a lent GPU machine (the device tool's `run`).
#
# Prepare here (the folder must be ignored by git and named in the run's `carry`):
#   mkdir -p gpu_carry && echo /gpu_carry/ >> .git/info/exclude
#   python scripts/train_default_model.py slim --cache pbc_cache.npz --out gpu_carry/train.npz --jpeg-quality 95
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d gpu_carry diffusers==0.42.1
#   (a later round: also copy the previous round's model folder, as it came back, to gpu_carry/model)
# Run there (command of `run`, carry ["gpu_carry"], timeout_s a minute above SECONDS + ~90 s of setup):
#   bash scripts/gpu_round.sh gpu_carry default|gpu_carry/model SECONDS [more train options]
# The model folder comes back under $OUT/model (unet/, scheduler/, cytodiffusion.json; 11 MB), the
# log as $OUT/train.log. The byte budget is in scripts/train_default_model.py's docstring.
# GPU_ROUND_DEVICE=cpu runs the same round on this machine (a dry run with a few steps).
set -euo pipefail
carry=$1 init=$2 seconds=$3
shift 3
out=${OUT:?the device tool sets OUT}
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$carry"/*.whl
export PYTHONPATH="$PWD/src:$site" PYTHONUNBUFFERED=1
python3 -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
run=$(mktemp -d)/run
python3 scripts/train_default_model.py train --cache "$carry/train.npz" --out "$run" --init-from "$init" \
  --device "${GPU_ROUND_DEVICE:-cuda}" --max-seconds "$seconds" --steps 1000000 "$@" 2>&1 | tee "$out/train.log"
mkdir -p "$out/model/unet" "$out/model/scheduler"
cp "$run/cytodiffusion.json" "$out/model/"
cp "$run"/unet/* "$out/model/unet/"
cp "$run"/scheduler/* "$out/model/scheduler/"
ls -la "$out/model" "$out/model/unet"
