"""The core imports none of the heavy, optional libraries (they belong to the integrations' extras)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "trl", "torchtune", "unsloth", "ray", "datasets", "transformers")


def test_core_and_cli_import_no_heavy_library() -> None:
    code = (
        "import sys, dsprep, dsprep.cli, dsprep.pipeline, dsprep.detect\n"
        "from click.testing import CliRunner\n"
        "CliRunner().invoke(dsprep.cli.main, ['--help'])\n"
        "CliRunner().invoke(dsprep.cli.main, ['formats'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
