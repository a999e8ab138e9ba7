"""Read back what produce.py (or the user) left in DATA_PATH."""

import os
import tarfile
from pathlib import Path

from qiskit_serverless import save_result

data = Path(os.environ["DATA_PATH"])
with tarfile.open(data / "report.tar.gz", "r:gz") as tar:
    member = tar.extractfile("report.txt")
    text = member.read().decode() if member else ""
uploaded = (data / "notes.txt").read_text() if (data / "notes.txt").exists() else None
save_result({"text": text, "notes": uploaded})
