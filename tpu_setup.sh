#!/usr/bin/env bash
# Set up a Cloud TPU VM for sgm_jax: install jax[tpu] (libtpu from PyPI) and this package,
# then print the devices jax sees and, on a pod slice, this worker's process index and count.
#
#   one host (v4-8, v5litepod-8, v6e-8):
#       bash tpu_setup.sh
#       sgm-jax collect --model llava-hf/llava-1.5-7b-hf --dtype bfloat16 --mesh 1,8,1 --data train.jsonl --out store/
#   a pod slice (several hosts): run it on every worker at once, then the same command on every worker
#       gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \
#           --command "git clone REPO sgm_jax && bash sgm_jax/tpu_setup.sh"
#       gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \
#           --command "python3 -m sgm_jax.cli collect --model ... --mesh 1,4,1 --data train.jsonl --out store/"
#
# On a pod slice the workers join one job (jax.distributed finds them itself, as sgm-jax does when no
# --coordinator is given), each takes a share of the batches and worker 0 writes; `--mesh` lays out one
# worker's own chips (4 per host on multi-host slices). So this script must run on all workers together:
# each waits for the others before it prints its index.
#
# Weights are never downloaded by sgm_jax: put checkpoints in the HF cache (`hf download ID`)
# or a local directory first, on every worker. Stops with a clear message on a machine without a TPU.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
dev="${TPU_DEV_ROOT:-/dev}"  # overridable for the project's own test of this script

# TPU VMs expose their chips as /dev/accel* (v2-v4) or VFIO groups (v5e, v5p, v6e).
shopt -s nullglob
chips=("$dev"/accel* "$dev"/vfio/[0-9]*)
shopt -u nullglob
if [ ${#chips[@]} -eq 0 ]; then
    echo "tpu_setup.sh: no TPU on this machine (no /dev/accel* or /dev/vfio/* devices)." >&2
    echo "Run it on a Cloud TPU VM. On CPU or GPU install with: pip install -e \"$here[test]\"" >&2
    exit 1
fi
echo "tpu_setup.sh: found TPU device nodes: ${chips[*]}"

"$python" -m pip install --upgrade pip
"$python" -m pip install -e "$here[tpu]"

"$python" - <<'PY'
import os

import jax

workers = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
if len(workers) > 1:  # a pod slice: join the other workers, as sgm-jax does, to see the whole job
    print(f"tpu_setup.sh: pod slice of {len(workers)} workers; waiting for all of them to join")
    jax.distributed.initialize()
backend = jax.default_backend()
print(f"jax {jax.__version__}, backend {backend}, process {jax.process_index()} of {jax.process_count()}")
print(f"{jax.local_device_count()} local / {jax.device_count()} global devices:")
for device in jax.local_devices():
    print(f"  {device.id}: {device.device_kind} ({device.platform})")
if backend != "tpu":
    raise SystemExit("tpu_setup.sh: jax installed but does not see the TPU (backend is %r); "
                     "check that no other process holds the chips (sudo lsof -w /dev/accel*)" % backend)
if len(workers) > 1 and jax.process_count() != len(workers):
    raise SystemExit(f"tpu_setup.sh: {jax.process_count()} processes joined, the slice has {len(workers)} workers")
PY
