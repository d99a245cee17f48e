"""A wheel built from the checkout carries every file the installed program reads, not only the code."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from training.dataset import DataSources

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    # A copy without build/ and *.egg-info: setuptools would otherwise take a stale file list from them.
    source = tmp_path_factory.mktemp("source") / "sentimon"
    ignored = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".cache", "bench-runs", "*.duckdb*")  # fmt: skip
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignored)
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."]
    subprocess.run(build, cwd=source, check=True, capture_output=True)
    (wheel,) = out.glob("sentimon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _in_package(path: Path) -> str:
    """A path as the wheel names it: relative to the import root, without resolving the datasets link."""
    return path.absolute().relative_to(ROOT).as_posix()


def test_wheel_carries_the_training_and_development_data(wheel_files):
    bundled = DataSources.in_folder(None)
    for path in (bundled.team, bundled.finentity, bundled.dev):
        assert path.is_file()
        assert _in_package(path) in wheel_files, f"{_in_package(path)} is not in the wheel"
    assert {"training/datasets/README.md", "training/datasets/finentity/README.md"} <= wheel_files  # licences


def test_wheel_carries_migrations_adapter_aliases_demo_and_licence(wheel_files):
    needed = [*(ROOT / "storage" / "migrations").glob("*.sql"), *(ROOT / "model" / "adapters").iterdir(),
              *(ROOT / "model" / "data").iterdir(),
              *(path for path in (ROOT / "monitor" / "demo" / "data").rglob("*") if path.is_file())]  # fmt: skip
    missing = [_in_package(path) for path in needed if _in_package(path) not in wheel_files]
    assert not missing, f"not in the wheel: {missing}"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel_files)
    assert not any(name.startswith(("tests/", "bench/")) for name in wheel_files)
