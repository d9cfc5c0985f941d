"""Build the GPT Lab book: ``python book/_scripts/build_book.py`` from the repository root.

1. Makes formulas render without a network: installs MathJax 3 from npm (never committed) and
   copies the part the site needs (~3 MB) into ``_mathjax_extra/mathjax``. The book's Sphinx
   extension (``book/_ext/gptlab_book.py``) serves it from the site when it is there. Without npm
   (or offline with an empty npm cache) the book still builds and loads MathJax from the CDN;
   this script says so.
2. Runs ``jupyter-book build --all -W -n --keep-going .``: every page rebuilt, warnings are
   errors, stored notebook outputs rendered as they are (``execute_notebooks: off``).

The tests import :func:`build_site` so they build exactly what the README's command builds.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATHJAX_VERSION = "3.2.2"
MATHJAX_TARGET = Path("_mathjax_extra") / "mathjax"
# The single entry script plus what it loads on demand: TeX extensions and the CHTML fonts.
MATHJAX_SUBSET = ("tex-chtml.js", "input", "output/chtml/fonts/woff-v2")
BUILD_COMMAND = ("build", "--all", "-W", "-n", "--keep-going", ".")


@dataclass(frozen=True)
class BuildResult:
    returncode: int
    log: str
    html_dir: Path
    mathjax_local: bool


def ensure_mathjax(root: Path = ROOT, *, quiet: bool = False) -> bool:
    """Put MathJax into ``root/_mathjax_extra/mathjax``; return whether it is there.

    Reuses an existing copy of the pinned version; otherwise runs ``npm install``. Any failure
    (no npm, no network and no cache) leaves the CDN fallback and prints a notice.
    """
    target = root / MATHJAX_TARGET
    stamp = target / "VERSION"
    if (target / "tex-chtml.js").is_file() and _read(stamp) == MATHJAX_VERSION:
        return True
    npm = shutil.which("npm")
    if npm is None:
        _notice("npm was not found", quiet)
        return False
    with tempfile.TemporaryDirectory(prefix="gptlab-mathjax-") as tmp:
        cmd = [
            npm,
            "install",
            "--prefix",
            tmp,
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            f"mathjax@{MATHJAX_VERSION}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        source = Path(tmp) / "node_modules" / "mathjax" / "es5"
        if proc.returncode != 0 or not (source / "tex-chtml.js").is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            _notice(f"`npm install mathjax@{MATHJAX_VERSION}` failed ({detail[0]})", quiet)
            return False
        staging = target.with_name("mathjax.partial")
        shutil.rmtree(staging, ignore_errors=True)
        for part in MATHJAX_SUBSET:
            src, dst = source / part, staging / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        (staging / "VERSION").write_text(MATHJAX_VERSION)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # the copy appears whole or not at all
    if not quiet:
        print(f"MathJax {MATHJAX_VERSION} installed into {MATHJAX_TARGET} (served by the site)")
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _notice(reason: str, quiet: bool) -> None:
    if not quiet:
        print(
            f"NOTICE: {reason}; the book builds anyway, but its pages load MathJax from the CDN, "
            "so formulas only render with an internet connection.",
            file=sys.stderr,
        )


def _jupyter_book() -> str:
    local = Path(sys.executable).with_name("jupyter-book")
    found = str(local) if local.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise FileNotFoundError(
            "jupyter-book is not installed in this environment: run "
            "`python -m pip install -e '.[book]'` first"
        )
    return found


def build_site(root: Path = ROOT, *, quiet: bool = False) -> BuildResult:
    """Install MathJax if possible, then build the whole book with warnings as errors."""
    mathjax_local = ensure_mathjax(root, quiet=quiet)
    proc = subprocess.run(
        [_jupyter_book(), *BUILD_COMMAND],
        cwd=root,
        capture_output=True,
        text=True,
    )
    log = proc.stdout + proc.stderr
    build_dir = root / "_build"
    build_dir.mkdir(exist_ok=True)
    (build_dir / "build.log").write_text(log, encoding="utf-8")
    if not quiet:
        print(log, end="")
    return BuildResult(proc.returncode, log, build_dir / "html", mathjax_local)


@functools.cache
def build_site_once(root: Path = ROOT) -> BuildResult:
    """:func:`build_site`, at most once per process (the tests share one build)."""
    return build_site(root, quiet=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mathjax-only", action="store_true", help="only install MathJax, do not build"
    )
    args = parser.parse_args(argv)
    if args.mathjax_only:
        return 0 if ensure_mathjax() else 1
    result = build_site()
    if result.returncode == 0:
        print(f"Book built: open {result.html_dir / 'index.html'}")
    else:
        print(f"Book build failed (see {result.html_dir.parent / 'build.log'})", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
