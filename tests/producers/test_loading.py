"""Loading a model by folder or Hugging Face id: a source that is not there is a clear ModelLoadError naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evostream.models.loading import ModelLoadError, load_model
from tests.producers.models import tiny

CACHED_ID = "evostream-test/tiny-gpt2"


def load_offline(source: str, hf_home: Path) -> subprocess.CompletedProcess[str]:
    """``load_model(source)`` in a fresh interpreter whose Hugging Face cache is ``hf_home`` and whose hub is off:
    prints the version, or the ModelLoadError's message and exits 3."""
    code = (
        "import sys\nfrom evostream.models.loading import ModelLoadError, load_model\n"
        f"try:\n    print(load_model({source!r}, device='cpu').version)\n"
        "except ModelLoadError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_missing_folder_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    for missing in ["/no/such/path", str(tmp_path / "no" / "such" / "model"), "./no/such/model"]:
        with pytest.raises(ModelLoadError, match=f"^no model folder at {re.escape(missing)}: the path does not exist$"):
            load_model(missing)


def test_a_folder_without_a_config_is_not_taken_for_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=f"^{re.escape(str(tmp_path))} is not a model folder: it has no config"):
        load_model(str(tmp_path))


def test_an_id_missing_from_the_cache_is_a_clear_error_offline(tmp_path: Path) -> None:
    done = load_offline("evostream-test/not-cached", tmp_path / "hf")
    assert done.returncode == 3, done.stderr
    assert done.stdout == (
        f"model 'evostream-test/not-cached' is neither an existing folder nor in the local Hugging "
        f"Face cache ({tmp_path / 'hf' / 'hub'}); evostream loads models offline\n"
    )
    assert "Traceback" not in done.stderr


def test_an_id_in_the_cache_loads_offline(tmp_path: Path) -> None:
    """The check above must not refuse what the cache does hold: a model saved in the hub cache's layout loads."""
    repo = tmp_path / "hf" / "hub" / f"models--{CACHED_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    lm = tiny("gpt2")
    lm.model.save_pretrained(snapshot)
    lm.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    done = load_offline(CACHED_ID, tmp_path / "hf")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"{CACHED_ID}\n"
