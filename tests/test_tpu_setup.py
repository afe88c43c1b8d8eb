"""tpu_setup.sh refuses a machine without a TPU, and on a TPU VM installs jax[tpu] and the package."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "tpu_setup.sh"


def _run(tmp_path, dev_root):
    log = tmp_path / "python.log"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\ncat > /dev/null\n')
    fake_python.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake_python), TPU_DEV_ROOT=str(dev_root))
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def test_without_a_tpu_it_stops_before_installing_anything(tmp_path):
    (tmp_path / "dev" / "vfio").mkdir(parents=True)
    (tmp_path / "dev" / "vfio" / "vfio").touch()  # the VFIO control node exists on machines without a TPU
    result, calls = _run(tmp_path, tmp_path / "dev")
    assert result.returncode != 0
    assert "no TPU on this machine" in result.stderr
    assert calls == []


def test_on_a_tpu_vm_it_installs_jax_tpu_and_the_package_then_lists_devices(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "accel0").touch()
    result, calls = _run(tmp_path, tmp_path / "dev")
    assert result.returncode == 0, result.stderr
    assert calls[0] == "-m pip install --upgrade pip"
    assert calls[1] == f"-m pip install -e {SCRIPT.parent}[tpu]"
    assert calls[2] == "-"  # the device listing reads its program from stdin
