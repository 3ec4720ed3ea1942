"""The package's shape: no import cycles inside `mhc/` (function-local imports count: they only
hide a cycle), no module over 600 lines, no `global` rebinding of module state."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mhc")
MAX_LINES = 600


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


def _imports(name: str, path: str, modules: dict) -> set[str]:
    """The package modules `name` imports anywhere in its body (top level or inside functions)."""
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


def test_no_import_cycles_in_the_package():
    modules = _modules()
    # `from mhc import x` is an edge to the module mhc.x, not to the package's __init__
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "mhc.kernels" not in graph["mhc.maps"] and not graph["mhc.maps"]  # the leaf
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size_and_no_global_state(name):
    path = _modules()[name]
    source = open(path).read()
    assert source.count("\n") <= MAX_LINES, f"{name}: {source.count(chr(10))} lines"
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
