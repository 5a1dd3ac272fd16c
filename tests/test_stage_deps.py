"""Every stage in dvc.yaml lists exactly the helper modules its notebook runs, no more and no fewer.

The notebook's ``helpers`` imports are followed through the package statically (``ast``): every import
statement of a reached module counts, including those inside functions (they may run), except those under
``if TYPE_CHECKING:``. Importing ``helpers.a.b`` runs ``helpers/__init__.py`` and ``helpers/a/__init__.py`` too,
so those count. A stage may list a subpackage folder instead of its files only when it uses every module in it.
Package data (``src/helpers/data/``) are data dependencies, listed by file, and are not checked here.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "helpers"


def package_root(src: Path) -> Path:
    return src / PACKAGE


def module_file(src: Path, module: str) -> Path | None:
    """The file that defines ``module`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = src.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imported_modules(source: str, current: str | None = None, is_package: bool = False) -> set[str]:
    """Dotted names of the ``helpers`` modules (or names in them) that ``source`` imports.

    ``from helpers.a import b`` gives both ``helpers.a`` and ``helpers.a.b`` (``b`` may be a module); callers keep
    the names that are modules. ``current`` is the importing module's name, for relative imports.
    """
    tree = ast.parse(source)
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    continue
                parts = current.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: importing a module runs its packages' ``__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def module_closure(src: Path, roots: Iterable[str]) -> set[Path]:
    """Files of every ``helpers`` module reached from ``roots`` (dotted names), transitively."""
    seen: set[str] = set()
    todo = [m for r in roots for m in with_parents(r)]
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(src, module)
        if path is None:  # a name inside a module (a function, a class), not a module
            continue
        files.add(path)
        found = imported_modules(path.read_text(), module, is_package=path.name == "__init__.py")
        todo.extend(m for f in found for m in with_parents(f) if m not in seen)
    return files


def notebook_source(path: Path) -> str:
    """The code cells of a notebook as one Python source (IPython magics and shell lines dropped)."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines.extend(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    return "\n".join(lines)


def stage_templates(dvc: Mapping) -> dict[str, dict]:
    """Each stage's definition (the ``do`` block of a ``foreach`` stage), by the stage's name in dvc.yaml."""
    return {name: spec["do"] if "foreach" in spec else spec for name, spec in dvc["stages"].items()}


def stage_notebook(root: Path, name: str, spec: Mapping) -> Path:
    """The notebook ``helpers.stage`` runs for a stage: its own ``NN_<name>``, or that of ``--notebook <stage>``."""
    argv = shlex.split(spec["cmd"])
    target = argv[argv.index("--notebook") + 1] if "--notebook" in argv else name
    matches = sorted((root / "notebooks").glob(f"[0-9][0-9]_{target}.ipynb"))
    assert len(matches) == 1, f"stage {name}: expected one notebook notebooks/NN_{target}.ipynb, found {matches}"
    return matches[0]


def declared_modules(root: Path, deps: Iterable[str]) -> tuple[set[Path], list[str]]:
    """Module files a stage's deps cover (folders expanded), and the listed deps that are folders."""
    src_pkg = package_root(root / "src")
    files: set[Path] = set()
    folders: list[str] = []
    for dep in deps:
        path = root / dep
        if not path.resolve().is_relative_to(src_pkg.resolve()) or "${" in dep:
            continue
        if path.resolve().is_relative_to((src_pkg / "data").resolve()):
            continue  # package data: a data dependency
        if path.is_dir():
            folders.append(dep)
            files.update(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.suffix == ".py":
            files.add(path)
        else:
            raise AssertionError(f"dvc.yaml lists {dep}, which is neither a module nor a folder of the package")
    return files, folders


def dependency_problems(root: Path) -> list[str]:
    """Every mismatch between the helper modules each stage of ``root``/dvc.yaml lists and those it runs."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    src = root / "src"
    problems = []
    for name, spec in stage_templates(dvc).items():
        notebook = stage_notebook(root, name, spec)
        deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
        rel_nb = notebook.relative_to(root).as_posix()
        if rel_nb not in deps:
            problems.append(f"{name}: does not list its notebook {rel_nb}")
        used = module_closure(src, imported_modules(notebook_source(notebook)))
        listed, folders = declared_modules(root, deps)
        rel = lambda paths: ", ".join(sorted(p.relative_to(root).as_posix() for p in paths))  # noqa: E731
        if missing := used - listed:
            problems.append(f"{name}: uses but does not list {rel(missing)}")
        for folder in folders:
            unused = {p for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts} - used
            if unused:
                problems.append(f"{name}: lists {folder} but does not use {rel(unused)}; list its modules instead")
        if extra := {p for p in listed - used if not any(p.is_relative_to(root / f) for f in folders)}:
            problems.append(f"{name}: lists but does not use {rel(extra)}")
    return problems


def test_every_stage_lists_exactly_the_helper_modules_it_runs():
    problems = dependency_problems(REPO)
    assert not problems, "dvc.yaml stage deps differ from the modules the notebooks import:\n" + "\n".join(problems)


# --- the checker itself, on a small fake project --------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _notebook(*sources: str) -> str:
    cells = [
        {"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None} for s in sources
    ]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """helpers/{__init__, paths}.py; helpers/sub/{__init__, a, b, c}.py: a imports b (relative), b imports paths
    inside a function; c is only imported under TYPE_CHECKING. Notebook 00_one imports helpers.sub.a."""
    pkg = tmp_path / "src" / PACKAGE
    _write(pkg / "__init__.py", "")
    _write(pkg / "paths.py", "")
    _write(pkg / "data" / "table.csv", "x\n")
    _write(pkg / "sub" / "__init__.py", "")
    _write(
        pkg / "sub" / "a.py",
        "from .b import thing\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from helpers.sub import c\n",
    )
    _write(pkg / "sub" / "b.py", "def thing():\n    from helpers import paths\n")
    _write(pkg / "sub" / "c.py", "")
    _write(tmp_path / "notebooks" / "00_one.ipynb", _notebook("x = 1", "%matplotlib inline\nfrom helpers.sub import a"))
    return tmp_path


EXACT = [
    "notebooks/00_one.ipynb",
    "src/helpers/__init__.py",
    "src/helpers/paths.py",
    "src/helpers/sub/__init__.py",
    "src/helpers/sub/a.py",
    "src/helpers/sub/b.py",
    "src/helpers/data/table.csv",
]


def _stages(root: Path, deps: list[str], **extra) -> None:
    spec = {"cmd": "python -m helpers.stage one", "deps": deps}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"one": spec, **extra}}))


def test_the_checker_accepts_exact_deps(fake):
    _stages(fake, EXACT)
    assert dependency_problems(fake) == []


def test_the_checker_reports_a_module_reached_only_transitively_and_a_package_init(fake):
    _stages(fake, [d for d in EXACT if d not in ("src/helpers/paths.py", "src/helpers/sub/__init__.py")])
    (problem,) = dependency_problems(fake)
    assert problem == "one: uses but does not list src/helpers/paths.py, src/helpers/sub/__init__.py"


def test_the_checker_reports_an_over_listed_module_and_a_partly_used_folder(fake):
    _stages(fake, [*EXACT, "src/helpers/sub/c.py"])
    assert dependency_problems(fake) == ["one: lists but does not use src/helpers/sub/c.py"]
    _stages(fake, [d for d in EXACT if "/sub/" not in d] + ["src/helpers/sub"])
    (problem,) = dependency_problems(fake)
    assert problem.startswith("one: lists src/helpers/sub but does not use src/helpers/sub/c.py")


def test_the_checker_follows_foreach_stages_and_shared_notebooks(fake):
    shared = {
        "foreach": ["x", "y"],
        "do": {"cmd": "python -m helpers.stage two@${item} --notebook one", "deps": EXACT[:2]},
    }
    _stages(fake, EXACT, two=shared)
    (problem,) = dependency_problems(fake)
    assert re.fullmatch(r"two: uses but does not list src/helpers/paths\.py, .*sub/b\.py", problem)
    shared["do"]["deps"] = [d for d in EXACT if d != "notebooks/00_one.ipynb"]
    _stages(fake, EXACT, two=shared)
    assert dependency_problems(fake) == ["two: does not list its notebook notebooks/00_one.ipynb"]


def test_without_the_release_the_notebook_tests_deselect_exactly_the_release_only_notebooks():
    """The root conftest.py's rule: notebooks whose every stage is downstream of import_release (dvc.yaml)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", REPO / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    got = module.release_only_notebooks(dvc)
    assert got == {p.name for p in (REPO / "notebooks").glob("*.ipynb") if int(p.name[:2]) <= 11}
    # the concept notebook also serves downstream_concepts, which needs no release, so it always runs
    assert "14_concepts.ipynb" not in got
    fake = {
        "stages": {
            "import_release": {"cmd": "x", "deps": ["notebooks/00_a.ipynb"], "outs": ["data/raw/release"]},
            "use": {"cmd": "x", "deps": ["notebooks/01_b.ipynb", "data/raw/release/sub/file.json"], "outs": ["o"]},
            "later": {"cmd": "x", "deps": ["notebooks/02_c.ipynb", "o"]},
            "free": {"cmd": "x", "deps": ["notebooks/03_d.ipynb", "data/raw/other"]},
        }
    }
    assert module.release_only_notebooks(fake) == {"00_a.ipynb", "01_b.ipynb", "02_c.ipynb"}


def main() -> None:
    """``python tests/test_stage_deps.py``: print each stage's exact helper-module deps, to paste into dvc.yaml."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, spec in stage_templates(dvc).items():
        notebook = stage_notebook(REPO, name, spec)
        used = module_closure(REPO / "src", imported_modules(notebook_source(notebook)))
        print(f"{name}:")
        for path in sorted(p.relative_to(REPO).as_posix() for p in used):
            print(f"  - {path}")


if __name__ == "__main__":
    main()
