"""The README's first command: the quick start runs end to end and answers through the pipeline."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_answers(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--output-dir", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Q: what color is the circle?" in result.stdout
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "model" / "processor_config.json").exists()
