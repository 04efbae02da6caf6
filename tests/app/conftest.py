"""Dashboard tests import the pages' shared code as `app.*`: the repository root goes on sys.path (the launcher
`moesim dashboard` sets PYTHONPATH the same way)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
