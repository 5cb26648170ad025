"""The package's modules form layers: each imports only modules below it (lazy imports inside functions count)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cifar_s12"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y / from . import x
            names |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar_s12."):
            names.add(node.module.split(".")[1])
    return {name.split(".")[0] for name in names}


def test_no_module_imports_one_that_imports_it_back():
    graph = {p.stem: imports_of(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module):] + [module])}")
        if module in done:
            return
        path.append(module)
        for other in sorted(graph.get(module, ())):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert {"errors", "model", "transform"} <= {m for m, deps in graph.items() if not deps - {"errors"}}  # the bottom
