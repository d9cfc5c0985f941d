"""The links that tie notebooks, book and repository together, checked without building anything.

The repository's address lives in exactly one place, ``repository.url`` in ``_config.yml``;
every Colab badge, every setup cell's install URL and every other mention of the repository is
checked against it here, so moving the repository means editing one line and fixing what fails.
The exercise tests tie each notebook exercise (label ``ex-<chapter>-<k>``) to the checker a
reader calls (``gptlab.check("<chapter>.<k>", ...)``) and to a collapsed solution.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read _config.yml / _toc.yml")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
REPO_URL: str = CONFIG["repository"]["url"].rstrip("/")
BRANCH: str = CONFIG["repository"].get("branch", "main")
OWNER, NAME = urlparse(REPO_URL).path.strip("/").split("/")
NOTEBOOKS = sorted(
    p for p in (ROOT / "notebooks").glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)

GITHUB_REF = re.compile(r"github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)")
COLAB_REF = re.compile(
    r"colab\.research\.google\.com/github/([\w.-]+)/([\w.-]+)/blob/([\w.-]+)/([\w./-]+\.ipynb)"
)
GIT_INSTALL = re.compile(r"git\+(https://github\.com/[\w.-]+/[\w.-]+?)(?:\.git)?(?=[\s\"'@#]|$)")


def _book_extension() -> ModuleType:
    """The book's Sphinx extension, whose notebook parser the tests share with the build."""
    spec = importlib.util.spec_from_file_location(
        "gptlab_book", ROOT / "book" / "_ext" / "gptlab_book.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BOOK = _book_extension()


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _toc_files(node: object) -> list[str]:
    """Every ``file:`` entry of the table of contents, at any depth."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_toc_files(item))
    return found


def _chapter(path: Path) -> str:
    chapter = BOOK.chapter_of(f"notebooks/{path.stem}")
    assert chapter is not None, (
        f"{path.name}: name chapter notebooks NN_title.ipynb (e.g. 04_pretraining.ipynb) "
        "or A_title.ipynb for appendices"
    )
    return chapter


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# -- configuration ---------------------------------------------------------------------------


def test_repository_url_is_one_github_repository() -> None:
    parsed = urlparse(REPO_URL)
    assert parsed.scheme == "https" and parsed.netloc == "github.com", REPO_URL
    assert OWNER and NAME and not NAME.endswith(".git"), REPO_URL


def test_colab_launch_buttons_are_configured() -> None:
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["html"]["use_repository_button"] is True


def test_toc_lists_only_existing_pages() -> None:
    for entry in _toc_files(TOC):
        candidates = [ROOT / f"{entry}{ext}" for ext in ("", ".md", ".ipynb")]
        assert any(c.is_file() for c in candidates), (
            f"_toc.yml lists {entry!r}, which does not exist"
        )


# -- every notebook --------------------------------------------------------------------------


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_in_the_toc(notebook: Path) -> None:
    entry = f"notebooks/{notebook.stem}"
    assert entry in {f.removesuffix(".ipynb") for f in _toc_files(TOC)}, (
        f"{notebook.name} is not in _toc.yml: add `- file: {entry}` under its part"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_first_cell_has_numbered_title_and_colab_badge(notebook: Path) -> None:
    first = _cells(notebook)[0]
    assert first["cell_type"] == "markdown", f"{notebook.name}: the first cell must be markdown"
    text = _source(first)
    chapter = _chapter(notebook)
    assert re.match(rf"# {re.escape(chapter)}\. \S", text), (
        f"{notebook.name}: the first line must be the title '# {chapter}. Title'"
    )
    expected = (
        f"https://colab.research.google.com/github/{OWNER}/{NAME}/blob/{BRANCH}"
        f"/notebooks/{notebook.name}"
    )
    assert f"]({expected})" in text, (
        f"{notebook.name}: the first cell needs the Colab badge linking to {expected}"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_setup_cell_installs_gptlab_from_the_repository(notebook: Path) -> None:
    code = [_source(c) for c in _cells(notebook) if c["cell_type"] == "code"]
    assert code, f"{notebook.name} has no code cell"
    setup = code[0]
    assert 'find_spec("gptlab")' in setup, (
        f"{notebook.name}: the first code cell must install gptlab only when "
        'importlib.util.find_spec("gptlab") is None'
    )
    urls = GIT_INSTALL.findall(setup)
    assert urls == [REPO_URL], (
        f"{notebook.name}: the setup cell must install git+{REPO_URL} (found {urls})"
    )
    setup_cells = "\n".join(code[:2])
    for call in ("seed_everything(0)", "get_device("):
        assert call in setup_cells, f"{notebook.name}: the setup cells must call {call}...)"


def _repository_files() -> list[Path]:
    patterns = (
        "book/**/*.md",
        "notebooks/*.ipynb",
        "gptlab/**/*.py",
        "tests/**/*.py",
        "*.md",
        "*.toml",
        "*.yml",
        "*.txt",
        "*.sh",
        ".ci/*",
    )
    found = {p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()}
    ignored = ("_build", ".ipynb_checkpoints", "node_modules", ".venv")
    return sorted(p for p in found if not any(part in ignored for part in p.parts))


def test_every_mention_of_the_repository_matches_the_config() -> None:
    """github.com/<owner>/<name> and Colab links that mean *this* repository must match."""
    wrong = []
    for path in _repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT)
        for owner, name in GITHUB_REF.findall(text):
            name = name.removesuffix(".git")
            ours = owner.lower() == OWNER.lower() or name.lower() == NAME.lower()
            if ours and (owner, name) != (OWNER, NAME):
                wrong.append(f"{rel}: github.com/{owner}/{name}")
        for owner, name, branch, file in COLAB_REF.findall(text):
            if (owner, name, branch) != (OWNER, NAME, BRANCH):
                wrong.append(f"{rel}: Colab link to {owner}/{name}@{branch}")
            elif not (ROOT / file).is_file():
                wrong.append(f"{rel}: Colab link to {file}, which does not exist")
    assert not wrong, f"these do not match repository.url {REPO_URL} (branch {BRANCH}): {wrong}"


# -- exercises -------------------------------------------------------------------------------


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_exercise_labels_follow_the_chapter(notebook: Path) -> None:
    """Labels ex-<chapter>-1, -2, ... in order, so the rendered number equals the checker id."""
    chapter = _chapter(notebook)
    labels = [e["label"] for e in BOOK.notebook_exercises(notebook)]
    expected = [f"ex-{chapter}-{k}" for k in range(1, len(labels) + 1)]
    assert labels == expected, (
        f"{notebook.name}: exercise labels must be {expected} in order of appearance, got {labels}"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_exercise_has_a_registered_checker(notebook: Path) -> None:
    from gptlab.exercises import registered

    chapter = _chapter(notebook)
    ids = {f"{chapter}.{k}" for k in range(1, len(BOOK.notebook_exercises(notebook)) + 1)}
    chapter_ids = {i for i in registered() if i.split(".")[0] == chapter}
    missing = sorted(ids - chapter_ids)
    assert not missing, (
        f"{notebook.name}: no checker registered for exercise(s) {missing}: "
        f"add them to gptlab/exercises/ with @exercise(id, title)"
    )
    orphans = sorted(chapter_ids - ids)
    assert not orphans, (
        f"checkers {orphans} are registered but {notebook.name} has no such exercise: "
        "remove them or add the exercises"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_exercise_has_one_collapsed_solution(notebook: Path) -> None:
    labels = [e["label"] for e in BOOK.notebook_exercises(notebook)]
    solutions = BOOK.notebook_solutions(notebook)
    targets = [s["target"] for s in solutions]
    for label in labels:
        assert targets.count(label) == 1, (
            f"{notebook.name}: exercise {label} needs exactly one solution "
            f"(```{{solution-start}} {label}), found {targets.count(label)}"
        )
    for solution in solutions:
        assert solution["target"] in labels, (
            f"{notebook.name}: solution for unknown exercise {solution['target']!r}"
        )
        assert "dropdown" in solution["classes"], (
            f"{notebook.name}: solution to {solution['target']} must have `:class: dropdown` "
            "so it renders collapsed"
        )
