"""The service definitions in systemd/, installed the way their comments say, point at a runnable daemon."""

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def test_launchd_agent_runs_the_checkouts_daemon_once_installed():
    text = (ROOT / "systemd" / "com.sentimon.daemon.plist").read_text()
    agent = plistlib.loads(text.replace("/Users/YOU/sentimon", str(ROOT)).encode())
    program, *arguments = agent["ProgramArguments"]
    assert Path(program) == ROOT / ".venv" / "bin" / "sentimon" and arguments == ["run"]
    assert Path(program).exists(), "make run / make test install the daemon there"
    assert agent["WorkingDirectory"] == str(ROOT)
    assert "SENTIMON_CONFIG" not in agent["EnvironmentVariables"]  # ./sentimon.toml if present, else defaults
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["ExitTimeOut"] >= 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = (ROOT / "systemd" / "sentimon.service").read_text()
    assert "ExecStart=/opt/sentimon/.venv/bin/sentimon run" in unit
    installed = tmp_path / "sentimon.service"
    installed.write_text(unit.replace("/opt/sentimon/.venv/bin", str(VENV_BIN))
                         .replace("User=sentimon", "User=root").replace("Group=sentimon", "Group=root"))  # fmt: skip
    result = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
