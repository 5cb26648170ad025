"""Static checks of the notebooks' code cells (nbval re-executes them; these read them).

The course keeps notebooks thin: configuration and calls into ``cifar_s12``, nothing defined there. And a student
whose kernel restarted after training (Restart session, a crash) should not have to train again: only the
training cell empties ``OUT``, and the cells after it need nothing but the cells down to the data and the run on
disk in ``OUT``, never a variable that only the training cell (or an optional cell before it) sets.
"""
import ast
import builtins
import inspect
import json
import re
from pathlib import Path

import pytest
from IPython.core.inputtransformer2 import TransformerManager

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def code_cell_json(notebook: Path) -> list[dict]:
    """The notebook's code cells as stored: source, metadata, outputs."""
    return [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]


def code_cells(notebook: Path) -> list[ast.Module]:
    """Each code cell as Python: IPython turns its `!shell` lines and `%magics` into calls first."""
    return [ast.parse(TransformerManager().transform_cell("".join(c["source"]))) for c in code_cell_json(notebook)]


def bound_names(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names | {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}


def used_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def cell_calling(cells: list[ast.Module], *functions: str) -> int:
    """The one cell that calls any of ``functions`` (by name or as an attribute, e.g. ``shutil.rmtree``)."""
    found = [i for i, tree in enumerate(cells) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and (getattr(n.func, "id", None) or getattr(n.func, "attr", None)) in functions]
    assert len(set(found)) == 1, f"expected one cell calling {functions}, found cells {sorted(set(found))}"
    return found[0]


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_pytorch_onecycle.ipynb", "02_lightning.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_define_no_functions_or_classes(notebook):
    defined = [getattr(n, "name", "lambda") for tree in code_cells(notebook) for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
    assert defined == [], f"{notebook.name} defines {defined}: that code belongs in cifar_s12"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_only_the_training_cell_continues_or_empties_the_run_folder(notebook):
    cells = code_cells(notebook)
    assert cell_calling(cells, "continue_or_start") == cell_calling(cells, "fit", "fit_lightning")
    assert not any(getattr(n.func, "attr", None) == "rmtree" for tree in cells for n in ast.walk(tree)
                   if isinstance(n, ast.Call))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_after_a_restart_the_cells_after_training_need_only_the_data_cells(notebook):
    cells = code_cells(notebook)
    data_cell, train = cell_calling(cells, "load_data", "CifarDataModule"), cell_calling(cells, "fit", "fit_lightning")
    assert data_cell < train
    available = set().union(*map(bound_names, cells[:data_cell + 1]))
    for i, tree in enumerate(cells[train + 1:], start=train + 1):  # in order: a name must be bound before its use
        missing = sorted(used_names(tree) - available - bound_names(tree) - set(dir(builtins)))
        assert missing == [], (f"{notebook.name}, code cell {i}: uses {missing}, which the cells down to the data "
                               "do not set: after a restart it would need the training cell (or another) again")
        available |= bound_names(tree)


def test_no_path_of_the_machine_that_ran_them_is_committed():
    """Outputs, results and docs record a data location as the user gave it (relative, or $CIFAR_S12_DATA)."""
    import re

    from cifar_s12.dataset import REPO_DIR

    machine_path = re.compile(r"(?<![\w.~])/(work|root|tmp|home)/")
    files = [REPO_DIR / "README.md", *(REPO_DIR / "docs").glob("*.md"), *(REPO_DIR / "notebooks").glob("*.ipynb"),
             *(REPO_DIR / "results").rglob("*.json"), *(REPO_DIR / "weights").glob("*.json")]
    found = [f"{path.relative_to(REPO_DIR)}:{n}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1) if machine_path.search(line)]
    assert not found, found



def markdown_cells(notebook: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "markdown"]


def shown_sources(notebook: Path) -> set[str]:
    """The names in the cells that display source code (they call inspect.getsource): what those cells show."""
    shown = set()
    for tree in code_cells(notebook):
        if any(isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "getsource" for n in ast.walk(tree)):
            shown |= {getattr(n, "attr", getattr(n, "id", None)) for n in ast.walk(tree)}
    return shown


def test_the_session_code_is_on_the_page_from_the_package_and_explained():
    nb01, nb02 = NOTEBOOKS
    assert {"train_step", "train_epoch"} <= shown_sources(nb01)
    assert {"training_step", "validation_step", "configure_optimizers"} <= shown_sources(nb02)
    text01 = "\n".join(markdown_cells(nb01))
    for piece in ("runtime.autocast()", "zero_grad", "backward()", "scaler.step(optimizer)", "every batch"):
        assert piece in text01, piece
    assert "What Lightning took over from session 1's loop" in "\n".join(markdown_cells(nb02))


def test_notebook_01_shows_the_optimizer_onecycle_and_the_step_from_the_package():
    nb01 = NOTEBOOKS[0]
    assert "scheduler.step()" in "\n".join(markdown_cells(nb01))
    # The optimizer and the OneCycleLR construction come from the package's source too, and so does the step.
    assert {"build_optimizer", "build_scheduler"} <= shown_sources(nb01)
    from cifar_s12.onecycle import build_scheduler
    from cifar_s12.train import train_epoch

    assert "OneCycleLR(" in inspect.getsource(build_scheduler) and "scheduler.step()" in inspect.getsource(train_epoch)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_lesson_opens_with_what_the_student_learns_and_the_runs_provenance_in_one_line(notebook):
    opening = markdown_cells(notebook)[0]
    lesson, sep, provenance = opening.partition("**The outputs below:**")
    assert sep and "\n" not in provenance.strip(), "one line on which run made the outputs"
    assert len(lesson.split()) <= 150, len(lesson.split())
    assert "You will" in lesson


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_on_colab_the_first_code_cell_checks_for_a_gpu_before_anything_is_installed(notebook):
    first, second = (json.loads(notebook.read_text())["cells"][i] for i in (1, 2))
    first, second = "".join(first["source"]), "".join(second["source"])
    assert "nvidia-smi" in first and "Change runtime type" in first and "pip" not in first  # torch comes after
    assert "pip install" in second


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_variable_puts_the_run_on_google_drive(notebook):
    source = ["".join(c["source"]) for c in code_cell_json(notebook)]
    config = next(s for s in source if "SAVE_TO_DRIVE" in s)
    assert "SAVE_TO_DRIVE = False" in config and "drive.mount(" in config and "OUT = RUNS /" in config


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_committed_outputs_are_one_full_run_of_the_whole_notebook(notebook):
    """nbval compares each cell tagged ``nbval-check-output`` with its committed output, and compares nothing when
    that output is empty: each of them must hold one. The outputs come from one run, every cell in order, and the
    lesson's opening names it."""
    cells = code_cell_json(notebook)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))
    checked = [c for c in cells if "nbval-check-output" in c["metadata"].get("tags", [])]
    assert checked and all(c["outputs"] for c in checked)
    provenance = markdown_cells(notebook)[0].partition("**The outputs below:**")[2]
    assert "none yet" not in provenance and "24 epochs" in provenance and "seed 1" in provenance
    # ... with the accuracy and training time that its own outputs print.
    printed = "".join("".join(o["text"]) for c in cells for o in c["outputs"] if o["output_type"] == "stream")
    final = re.search(r"final test accuracy (0\.\d{4}) after 24 epochs, ([\d.]+) min", printed)
    assert final, "no 'final test accuracy ... after 24 epochs' in the outputs"
    accuracy, minutes = float(final[1]), float(final[2])
    stated = re.search(r"([\d.]+) min of training", provenance)
    assert f"test accuracy {accuracy:.2%}" in provenance and stated and abs(float(stated[1]) - minutes) <= 0.5, provenance


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_lesson_shows_no_test_plumbing_and_no_removed_feature(notebook):
    """nbval's markers are cell tags, not comments; the quick switch is the student's; no word of CI or of the
    experiments that left the code."""
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells)
    assert "NBVAL" not in text and "SMOKE" not in text
    assert not re.search(r"\bCI\b|ema_decay|dirac", text), re.findall(r".*\bCI\b.*", text)
    config = next("".join(c["source"]) for c in cells if "QUICK =" in "".join(c["source"]))
    assert "try the whole notebook" in config


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_source_or_output_names_the_weight_average_that_left_the_code(notebook):
    text = notebook.read_text()
    assert "moving average" not in text, re.findall(r".{0,60}moving average.{0,60}", text)


def test_notebook_02_ends_with_the_s12_deliverable():
    cells = code_cells(NOTEBOOKS[1])
    export, app, space = (cell_calling(cells, name) for name in ("export_weights", "serve", "write_space"))
    train = cell_calling(cells, "fit_lightning")
    assert train < export < app < space == len(cells) - 1
    assert "hf upload" in "".join(json.loads(NOTEBOOKS[1].read_text())["cells"][-1]["source"])


def drawing_cells(notebook: Path) -> list[dict]:
    """The code cells that call a plotting function of the package (``plot_*``, ``*_figures``)."""
    cells = code_cell_json(notebook)
    called = [{getattr(n.func, "id", None) or getattr(n.func, "attr", None) for n in ast.walk(tree)
               if isinstance(n, ast.Call)} for tree in code_cells(notebook)]
    return [cell for cell, names in zip(cells, called)
            if any(name and (name.startswith("plot_") or name.endswith("_figures")) for name in names)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_that_draws_shows_its_figure_in_the_committed_outputs(notebook):
    # A run made with MPLBACKEND=Agg (as tests set it) stores no figure: the notebooks select the inline backend.
    config = next(s for s in ("".join(c["source"]) for c in code_cell_json(notebook)) if "QUICK =" in s)
    assert "%matplotlib inline" in config
    drawing = drawing_cells(notebook)
    assert len(drawing) >= 6
    missing = ["".join(c["source"]).splitlines()[0] for c in drawing
               if not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert missing == [], f"cells without their figure: {missing}"
