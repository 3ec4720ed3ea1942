"""The package's shape: no import cycles inside `mhc/` (function-local imports count: they only
hide a cycle; so do the package `__init__`s an import runs), no module over 600 lines (250 in
`mhc/manifolds/`, one family of manifolds a module), no `global` rebinding of module state."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mhc")
MAX_LINES = 600
MAX_LINES_UNDER = {"mhc.manifolds": 250}  # a package held to a tighter limit


def _modules() -> dict[str, str]:
    """{dotted name: path} of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _with_packages(imported: str, importer: str) -> set[str]:
    """`a.b.c` and the packages `a`, `a.b` whose `__init__` importing it runs, less those of the
    importer itself: Python imports a module's own packages before the module, so reaching them
    again adds no edge that can close a cycle at import time."""
    parts = imported.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own


def _imports(name: str, path: str, modules: dict) -> set[str]:
    """The package modules `name` imports anywhere in its body (top level or inside functions),
    with the package `__init__`s each import runs (`_with_packages`)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: strip level - 1 trailing parts of the package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # `from mhc import train` imports the module mhc.train; `from mhc.x import f` mhc.x
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                      for a in node.names}
    found = {m for imported in found for m in _with_packages(imported, name)}
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_hidden_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_package_edges_and_function_local_imports_count(tmp_path):
    """`from p.sub.b import f` inside a function of p.a: edges to p.sub.b and to p.sub (whose
    __init__ runs), not to p (p.a's own package, already imported)."""
    source = tmp_path / "a.py"
    source.write_text("def f():\n    from p.sub.b import g\n    return g\n")
    modules = {"p": "", "p.a": str(source), "p.sub": "", "p.sub.b": ""}
    assert _imports("p.a", str(source), modules) == {"p.sub", "p.sub.b"}


def test_no_import_cycles_in_the_package():
    modules = _modules()
    # `from mhc import x` is an edge to the module mhc.x; `from mhc.model.moe import y` also one
    # to mhc.model, whose __init__ the import runs
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "mhc.kernels" not in graph["mhc.maps"] and not graph["mhc.maps"]  # the leaf
    assert not graph["mhc.model_choices"]  # config reads the model's choices without mhc.model
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size_and_no_global_state(name):
    path = _modules()[name]
    source = open(path).read()
    limit = next((n for package, n in MAX_LINES_UNDER.items()
                  if name.startswith(package + ".") or name == package), MAX_LINES)
    assert source.count("\n") <= limit, f"{name}: {source.count(chr(10))} lines (limit {limit})"
    rebinding = [n.lineno for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Global)]
    assert not rebinding, f"{name}: `global` at lines {rebinding}"


def test_oldest_constraints_pin_the_floors_of_pyproject():
    """.ci/run tests the oldest supported stack from .ci/constraints-oldest.txt: each pin there
    must be the floor pyproject.toml states, or CI would test versions we do not claim."""
    import re
    import tomllib
    repo = os.path.dirname(PACKAGE)
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*(,.*)?", dep)
        if m:
            floors[m.group(1).lower()] = m.group(2)
    pins = {}
    with open(os.path.join(repo, ".ci", "constraints-oldest.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = line.split("==")
                pins[name.strip().lower()] = version.strip()
    assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"} <= set(pins)
    for name, version in pins.items():
        floor = floors.get(name)
        assert floor is not None, f"{name} is pinned but pyproject.toml states no floor"
        assert tuple(map(int, version.split("."))) == tuple(map(int, floor.split("."))) or \
            version == f"{floor}.0", f"{name}=={version} but pyproject.toml's floor is {floor}"
