"""Static checks of the notebooks' code cells (nbval re-executes them; these read them).

The course keeps notebooks thin: configuration and calls into ``cifar_s12``, nothing defined there. And a student
whose kernel restarted after training (Colab does that) should not have to train again: the cells after the
training cell read the run from ``OUT`` on disk, never from a variable only the training cell sets.
"""
import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def code_cells(notebook: Path) -> list[ast.Module]:
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    # IPython's shell lines (`!pip ...`) are not Python: the same indentation with `pass` keeps the block valid
    return [ast.parse("\n".join(line if not line.lstrip().startswith("!") else line[:len(line) - len(line.lstrip())]
                                + "pass" for line in "".join(c["source"]).splitlines())) for c in cells]


def bound_names(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names | {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}


def used_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def training_cell(cells: list[ast.Module]) -> int:
    calls = [i for i, tree in enumerate(cells) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("fit", "fit_lightning")]
    assert len(calls) == 1, "each notebook trains once"
    return calls[0]


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_pytorch_onecycle.ipynb", "02_lightning.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_define_no_functions_or_classes(notebook):
    defined = [getattr(n, "name", "lambda") for tree in code_cells(notebook) for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
    assert defined == [], f"{notebook.name} defines {defined}: that code belongs in cifar_s12"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_after_training_need_not_rerun_it(notebook):
    cells = code_cells(notebook)
    train = training_cell(cells)
    before = set().union(*map(bound_names, cells[:train]))
    only_in_training = bound_names(cells[train]) - before
    later = set().union(*map(used_names, cells[train + 1:]))
    leaking = sorted(only_in_training & later - set().union(*map(bound_names, cells[train + 1:])))
    assert leaking == [], (f"{notebook.name}: cells after training use {leaking}, which only the training cell "
                           "sets: after a kernel restart they would need the run again instead of reading OUT")
