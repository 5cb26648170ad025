"""The package's modules form layers: each imports only modules below it (lazy imports inside functions count)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cifar_s12"
COURSE = {"model", "transform", "batch_transform", "dataset", "utils", "config", "onecycle", "device", "tta",
          "lr_find", "train", "lit"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, as dotted names below cifar_s12 (``runs.folder``)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:  # from .x import y, from ..x import y
            base = package[:len(package) - (node.level - 1)]
            module = [*base, *(node.module.split(".") if node.module else [])]
            for alias in node.names:  # from . import x: x may be a module
                candidate = ".".join([*module, alias.name])
                names.add(candidate if (PACKAGE / candidate.replace(".", "/")).with_suffix(".py").is_file()
                          else ".".join(module))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar_s12."):
            names.add(node.module.removeprefix("cifar_s12."))
    return {n for n in names if n}


GRAPH = {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_every_import_names_a_module_that_exists():
    for module, deps in GRAPH.items():
        for dep in deps:
            assert dep in GRAPH, f"{module} imports {dep}, which is not a module of the package"


def test_no_module_imports_one_that_imports_it_back():
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module):] + [module])}")
        if module in done:
            return
        path.append(module)
        for other in sorted(GRAPH.get(module, ())):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_arrows_point_down():
    # The bottom: the network and the pipelines know nothing of the rest.
    assert not GRAPH["model"] and not GRAPH["transform"]
    # The Lightning trainer shares what lives below both trainers; it never reaches into the plain one.
    assert "train" not in GRAPH["lit"] and "lit" not in GRAPH["train"]
    # Trainers and what they stand on draw no figures and know nothing of the app or the benchmarks.
    for module in COURSE:
        assert not {d for d in GRAPH[module] if d.split(".")[0] in {"analysis", "app", "benchmarks"}}, module
    # Run bookkeeping below the trainers (folder, checkpoints, metrics, provenance, plumbing) does not import them.
    for module in ("runs.folder", "runs.checkpoints", "runs.metrics", "runs.provenance", "runs.plumbing"):
        assert not GRAPH[module] & {"train", "lit", "lr_find"}, module


def test_the_top_level_is_the_course():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 14, top
    assert {"model.py", "transform.py", "dataset.py", "utils.py"} <= set(top)
