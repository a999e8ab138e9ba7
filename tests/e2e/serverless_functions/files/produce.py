"""Write a report into the function's data folder (DATA_PATH)."""

import os
import tarfile
from pathlib import Path

from qiskit_serverless import get_arguments, save_result

data = Path(os.environ["DATA_PATH"])
text = get_arguments().get("text", "hello")
(Path("report.txt")).write_text(text)
with tarfile.open(data / "report.tar.gz", "w:gz") as tar:
    tar.add("report.txt")
save_result({"archived": "report.tar.gz"})
