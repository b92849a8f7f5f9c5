"""`make install`: progress, not noise, and never a failure hidden."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORED = ("WARNING: Location 'file:///srv/simple/torch/' is ignored: it is neither a file "
           "nor a directory.")


def pip_sh(*command: str) -> subprocess.CompletedProcess[str]:
    """scripts/pip.sh over a stand-in for pip: a command printing what pip would."""
    return subprocess.run(["bash", str(ROOT / "scripts" / "pip.sh"), *command],
                          capture_output=True, text=True, timeout=30)


def test_pip_notes_on_locations_without_a_package_are_left_out() -> None:
    done = pip_sh("bash", "-c", f'echo "{IGNORED}" >&2; echo "Successfully installed x-1.0"; '
                  'echo "WARNING: a real warning" >&2')
    assert done.returncode == 0
    assert done.stdout == "Successfully installed x-1.0\n"
    assert done.stderr == "WARNING: a real warning\n"


def test_a_failing_pip_fails_with_its_errors_shown() -> None:
    done = pip_sh("bash", "-c",
                  f'echo "{IGNORED}" >&2; echo "ERROR: No matching distribution" >&2; exit 3')
    assert done.returncode == 3
    assert done.stderr == "ERROR: No matching distribution\n"


def test_setuptools_note_on_editable_installs_is_left_out_and_other_warnings_kept() -> None:
    done = pip_sh(sys.executable, "-c", "import warnings; "
                  "warnings.warn('Editable installation.\\n!!'); warnings.warn('real')")
    assert done.returncode == 0
    assert "Editable installation" not in done.stderr and "UserWarning: real" in done.stderr


def test_the_build_backend_reads_the_project_without_a_deprecation() -> None:
    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")

    assert [str(w.message) for w in seen if "project." in str(w.message)] == []
    assert dist.metadata.license_expression == "Apache-2.0"
