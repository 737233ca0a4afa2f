"""The HTML report renders in headless Chromium with its histograms and highlighted token examples."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dsprep.report.cli import inspect_command
from paths import FIXTURES

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    args = [str(FIXTURES / "formats" / "openai.jsonl"), "--tokenizer", "mistral:tekken", "--template", "chatml",
            "--max-len", "64", "--show", "2", "--quiet", "--html", str(out)]  # fmt: skip
    result = CliRunner().invoke(inspect_command, args)
    assert result.exit_code == 0, result.output
    return out


def test_html_is_self_contained(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"<script|<link|src=|url\(|https?://(?!www\.w3\.org/2000/svg)", text)
    assert text.count('<svg class="histogram"') == 2  # characters per row, tokens per row


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install -y chromium)")
def test_html_renders_in_chromium(page: Path, tmp_path: Path) -> None:
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    histograms = re.findall(r'<svg class="histogram".*?</svg>', dom, re.S)
    assert len(histograms) == 2
    assert all(re.search(r'<rect class="bar[^"]*" [^>]*height="(?!0\.0")', h) for h in histograms)
    assert dom.count('class="example"') == 2
    trained = re.findall(r'<span class="tok trained">', dom)
    assert trained and dom.count('<span class="tok">') > 0  # prompt tokens unhighlighted, answers highlighted
