"""The wheel a user installs, built from this checkout and installed into a clean virtualenv.

The clean environment gets its third-party dependencies from the project's environment through a folder of links
that leaves out evostream's own editable install, so it sees exactly what the wheel ships and nothing of the checkout,
without downloading torch again."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = ("evostream", "__editable__", "_evostream", "evostream_jsonl")  # the checkout's install, never the wheel's deps


LEFT_OUT = (".git", "build", "dist", "*.egg-info", "node_modules", "__pycache__", ".*_cache", ".venv")
"""What a fresh source tree lacks; the dashboard's built assets (static/vendor) are copied, as the image builds them."""


def build(out: Path) -> Path:
    """``pip wheel`` of a copy of this checkout (links kept as links, no earlier build/ to reuse), without build
    isolation: setuptools is in the environment, nothing is fetched."""
    src = out / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*LEFT_OUT))
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*cmd, str(src)], check=True, timeout=600)
    (wheel,) = out.glob("evostream-*.whl")
    return wheel


def top_level(wheel: Path) -> set[str]:
    """The top-level import packages and modules the wheel installs into site-packages."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if ".dist-info/" not in n and ".data/" not in n]
    return {n.split("/")[0].removesuffix(".py") for n in names}


def clean_venv(root: Path, wheel: Path) -> Path:
    """A new virtualenv under ``root`` holding the wheel (and the third-party dependencies by link); its python."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = root / "deps"
    deps.mkdir()
    ours = Path(sysconfig.get_path("purelib"))
    for entry in ours.iterdir():
        if not entry.name.startswith(OWN) and entry.name != "__pycache__":
            (deps / entry.name).symlink_to(entry)
    # addsitedir (not a plain path line) so the dependencies' own .pth files are read, as in a real install
    (site / "evostream-test-deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=300)
    return python
