"""docker-compose.yml as Debian's docker-compose resolves it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.processes import REPO


def compose_config(tmp_path: Path, **env: str) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is needed to validate the compose file: apt-get install docker-compose")
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    result = subprocess.run([exe, "-f", str(tmp_path / "docker-compose.yml"), "config"], capture_output=True,
                            text=True, env={**os.environ, **env}, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)
