#!/usr/bin/env bash
# Set up a Cloud TPU VM for sgm_jax: install jax[tpu] (libtpu from PyPI) and this package,
# then print the devices jax sees.
#
#   single host:  bash tpu_setup.sh
#   a pod slice:  gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \
#                   --command "git clone REPO sgm_jax && bash sgm_jax/tpu_setup.sh"
#
# Weights are never downloaded by sgm_jax: put checkpoints in the HF cache (`hf download ID`)
# or a local directory first. Stops with a clear message on a machine without a TPU.
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
import jax

backend = jax.default_backend()
print(f"jax {jax.__version__}, backend {backend}, process {jax.process_index()} of {jax.process_count()}")
print(f"{jax.local_device_count()} local / {jax.device_count()} global devices:")
for device in jax.local_devices():
    print(f"  {device.id}: {device.device_kind} ({device.platform})")
if backend != "tpu":
    raise SystemExit("tpu_setup.sh: jax installed but does not see the TPU (backend is %r); "
                     "check that no other process holds the chips (sudo lsof -w /dev/accel*)" % backend)
PY
