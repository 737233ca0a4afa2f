"""Where the tests find things: the repository, its fixtures, and the real sample data beside it."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DSPREP_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURES = REPO / "fixtures"
