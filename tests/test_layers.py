"""The package's shape, read from its source with `ast` (docs/design.md, section 5): imports only
go down the layers, nothing imports itself back in a cycle, and imports sit at the top of their
files, so that a reader sees at once what a module depends on."""
import ast
import os

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, "cpcl_plugin")
# Bottom to top. A module may import from its own layer or any lower one.
LAYERS = [
    {"errors", "utils", "compat", "clustering"},
    {"config"},
    {"data"},
    {"modeling"},
    {"evaluation"},
    {"engine"},
    {"retrieval", "train"},
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}
# Imports inside functions, allowed where the module says why (none at present).
DEFERRED_IMPORTS = {}


def _modules():
    """{dotted name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _imported(module, path, modules):
    """The package's modules that `module` imports, each with the line of the import."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out += [(name, node.lineno) for name in names if name in modules and name != module]
    return out


def _layer(module):
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if len(parts) > 1 else None  # the package root is above all


MODULES = _modules()
GRAPH = {m: _imported(m, p, MODULES) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "cpcl_plugin" and _layer(m) is None] == []


def test_imports_only_go_down_the_layers():
    upward = [f"{m} (layer {_layer(m) + 1}) imports {t} (layer {_layer(t) + 1}), line {line}"
              for m, targets in GRAPH.items() if m != "cpcl_plugin"
              for t, line in targets
              if None not in (_layer(t), _layer(m)) and _layer(t) > _layer(m)]
    assert upward == []


def find_cycles(edges):
    """Every cycle a depth-first walk of {module: {imported modules}} meets, as "a -> b -> a"."""
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles():
    # A package imports its own submodules; a cycle through that edge is not a dependency.
    edges = {m: {t for t, _ in targets if not t.startswith(m + ".")}
             for m, targets in GRAPH.items()}
    assert find_cycles(edges) == []


@pytest.mark.parametrize("folder", ["cpcl_plugin", "tools"])
def test_imports_sit_at_the_top_of_their_files(folder):
    inside = []
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, REPO)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inside += [f"{relative}:{n.lineno} in {node.name}" for n in ast.walk(node)
                               if isinstance(n, (ast.Import, ast.ImportFrom))
                               and (relative, node.name) not in DEFERRED_IMPORTS]
    assert inside == []


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    # The graph reader itself: a synthetic package where data imports engine and back.
    modules = {"cpcl_plugin.data.a": str(tmp_path / "a.py"),
               "cpcl_plugin.engine.b": str(tmp_path / "b.py")}
    (tmp_path / "a.py").write_text("from ..engine.b import thing\n")
    (tmp_path / "b.py").write_text("from ..data import a\n")
    assert _imported("cpcl_plugin.data.a", modules["cpcl_plugin.data.a"], modules) == \
        [("cpcl_plugin.engine.b", 1)]
    assert _imported("cpcl_plugin.engine.b", modules["cpcl_plugin.engine.b"], modules) == \
        [("cpcl_plugin.data.a", 1)]
    assert _layer("cpcl_plugin.engine.b") > _layer("cpcl_plugin.data.a")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
