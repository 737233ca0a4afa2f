"""The core imports none of the heavy, optional libraries (they belong to the integrations' extras)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paths import FIXTURES

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


def test_a_packed_convert_does_not_import_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas on its first NumPy conversion (0.2 s of CPU): a tokenized, packed convert needs none."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dsprep.config import ConvertConfig\n"
        "from dsprep.pipeline import convert\n"
        "config = ConvertConfig(inputs=(sys.argv[1],), out=Path(sys.argv[2]), tokenizer='mistral:tekken',\n"
        "                       template='chatml', pack=512, workers=1, cache=False)\n"
        "assert convert(config).rows_kept\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(FIXTURES / "formats" / "openai.jsonl"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
