"""The package's layout: its imports run one way, down :data:`LAYERS`, with no circle and no
private name (``_x``) taken from another module.  The graph is read from the source with
``ast``, imports inside functions included."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ivim_common"

# Lowest first.  A module may import only from a lower layer, or, within one package folder
# (io/, engines/), from a module beside it; "io.*" stands for every module of io/.
LAYERS = (
    ("constants", "errors", "version", "resources", "progress"),
    ("model", "compiled", "spatial"),
    ("kernels",),
    ("engines",),
    ("engines.fast", "engines.bayes", "engines.lmfit_reference"),
    ("trust",),
    ("io", "io.*"),
    ("voxelpool",),
    ("api",),
    ("simulation",),
    ("design",),
    ("viewer", "plotting"),
    ("report",),
    ("cli",),
    ("simu_cli", "bids_app", "commands"),   # the runners of the simulation scripts and of the BIDS App
    ("gui",),            # drives the scripts' own parsers and main() (see its docstring)
    ("__init__",),
)


def module_names():
    """Dotted names of the package's modules relative to it: 'api', 'io.inputs', 'engines'
    (a folder's __init__), '__init__' (the package's)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(name):
    for i, layer in enumerate(LAYERS):
        if name in layer or (name.partition(".")[0] + ".*" in layer and "." in name):
            return i
    return None


def folder_of(name):
    """The package folder a module lies in: 'io' for io/__init__.py and io/inputs.py, '' for
    the modules at the top."""
    if "." in name:
        return name.rpartition(".")[0]
    return name if module_names()[name].name == "__init__.py" and name != "__init__" else ""


def imports(name):
    """[(imported module, names taken from it, line)] of one module, ``from .x import y`` read
    as an import of the module x.y where that is a module, else of x."""
    modules = module_names()
    path = modules[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    here = [] if name == "__init__" else name.split(".")
    base = here if is_package else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = anchor + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "ivim_common":
                target = node.module.split(".")[1:]
            else:
                continue
            target_name = ".".join(target) or "__init__"
            for alias in node.names:
                sub = ".".join(target + [alias.name])
                if sub in modules:
                    found.append((sub, (), node.lineno))
                else:
                    found.append((target_name, (alias.name,), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ivim_common":
                    found.append((".".join(parts[1:]) or "__init__", (), node.lineno))
    return found


def module_aliases(name):
    """{local name: module} of the package's modules bound by ``from . import x [as y]``."""
    out = {}
    tree = ast.parse(module_names()[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ivim_common")):
            for alias in node.names:
                out[alias.asname or alias.name] = alias.name
    return out


def edges():
    return [(name, target, taken, line) for name in module_names() for target, taken, line in imports(name)
            if target != name]


def test_every_module_has_a_layer():
    assert [name for name in module_names() if layer_of(name) is None] == []


def test_the_layers_are_a_strict_order():
    names = [name for layer in LAYERS for name in layer]
    assert len(names) == len(set(names))


def test_imports_run_down_the_layers():
    up = []
    for source, target, _, line in edges():
        low, high = layer_of(target), layer_of(source)
        beside = low == high and folder_of(source) == folder_of(target) != ""
        if not (low < high or beside):
            up.append(f"{source}:{line} -> {target}")
    assert up == []


def test_no_circle():
    graph = {}
    for source, target, _, _ in edges():
        graph.setdefault(source, set()).add(target)
    state = {}

    def visit(name, path):
        if state.get(name) == "open":
            pytest.fail("import circle: " + " -> ".join(path[path.index(name):] + [name]))
        if state.get(name) == "done":
            return
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            visit(target, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def is_private(name):
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_taken_from_another_module():
    taken = [f"{source}:{line} {target}.{name}" for source, target, names, line in edges()
             for name in names if is_private(name)]
    for name, path in module_names().items():
        aliases = module_aliases(name)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and is_private(node.attr)):
                taken.append(f"{name}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    assert taken == []


def test_the_package_init_only_re_exports():
    from ivim_common import __all__

    assert sorted(__all__) == ["IvimFit", "IvimModel", "__version__"]
    assert sorted(target for source, target, _, _ in edges() if source == "__init__") == ["api", "version"]
