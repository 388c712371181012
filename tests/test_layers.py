"""The layering of docs/architecture.md holds: imports only go down (the import-linter contracts in
pyproject.toml: the layers, and engines that import nothing of training, configs or stages), and
no module of the package reaches itself again through its imports."""
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0


def test_no_import_circle():
    graph = grimp.build_graph("clipav2")
    circles = [(m, i) for m in sorted(graph.modules) for i in graph.find_modules_directly_imported_by(m)
               if graph.find_shortest_chain(importer=i, imported=m)]
    assert circles == []
