"""The package's shape: no import cycles inside `mhc/` (function-local imports count: they only
hide a cycle; so do the package `__init__`s an import runs), no module over 600 lines (250 in
`mhc/manifolds/`, one family of manifolds a module), no `global` rebinding of module state.

And the scripts' shape: `experiments/`, `paper_repro/` and `benchmarks/` share code only through
the study layer `study/` (none imports another of those folders, anywhere in its body; the layer
imports none of them), every script's `main` is at most 40 lines (the work is in named
functions), and no module there or in `study/` is over 600 lines."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mhc")
REPO = os.path.dirname(PACKAGE)
MAX_LINES = 600
MAX_LINES_UNDER = {"mhc.manifolds": 250}  # a package held to a tighter limit
SCRIPT_FOLDERS = ("experiments", "paper_repro", "benchmarks")  # scripts, run as modules
LAYER = "study"  # what the script folders share
MAX_MAIN_LINES = 40


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


# ------------------------------------------------------------------------ the script folders
def _script_modules() -> dict[str, str]:
    """{dotted name: path} of the modules of the study layer and of the script folders (flat
    folders: their results/ subfolders hold no code)."""
    out = {}
    for folder in (LAYER, *SCRIPT_FOLDERS):
        for f in sorted(os.listdir(os.path.join(REPO, folder))):
            if f.endswith(".py"):
                out[f"{folder}.{f[:-3]}".removesuffix(".__init__")] = os.path.join(REPO, folder, f)
    return out


def _folder_violations(name: str, source: str) -> list[str]:
    """The imports in `source` (module `name`; top level or inside functions) that reach a script
    folder other than the module's own: any of them from the layer, another one from a script
    folder. A relative import that climbs out of the module's folder counts as one."""
    own = name.split(".")[0]
    banned = set(SCRIPT_FOLDERS) - {own}
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                out.append(f"{name}:{node.lineno} imports from outside {own}/ (relative)")
                continue
            targets = [] if node.level else [node.module]
        else:
            continue
        out += [f"{name}:{node.lineno} imports {t}" for t in targets if t.split(".")[0] in banned]
    return out


def _long_mains(source: str, limit: int = MAX_MAIN_LINES) -> list[str]:
    """Every function `main` in `source` longer than `limit` lines (def line to its last)."""
    return [f"main at line {n.lineno}: {n.end_lineno - n.lineno + 1} lines (limit {limit})"
            for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "main"
            and n.end_lineno - n.lineno + 1 > limit]


def _too_long(source: str, limit: int = MAX_LINES) -> str | None:
    """Why `source` is over `limit` lines, or None."""
    lines = source.count("\n")
    return f"{lines} lines (limit {limit})" if lines > limit else None


def test_the_script_checks_fail_on_a_violating_source():
    crossing = ("import os\nfrom study import flags\nimport benchmarks\n\n\ndef f():\n"
                "    from paper_repro.fig3_hc_amax import PAPER_SITES\n"
                "    import experiments.common as c\n    from .. import x\n")
    assert _folder_violations("experiments.x", crossing) == [
        "experiments.x:3 imports benchmarks", "experiments.x:7 imports paper_repro.fig3_hc_amax",
        "experiments.x:9 imports from outside experiments/ (relative)"]
    assert _folder_violations("study.x", crossing)[1:3] == [
        "study.x:7 imports paper_repro.fig3_hc_amax", "study.x:8 imports experiments.common"]
    own_folder = "from paper_repro.fig3_hc_amax import PAPER_SITES\nfrom . import collect\n"
    assert _folder_violations("paper_repro.fig8", own_folder) == []
    long_main = "def main(argv=None):\n" + "    x = 1\n" * 40 + "    return x\n"
    assert _long_mains(long_main) == ["main at line 1: 42 lines (limit 40)"]
    assert _long_mains("def main():\n    return 0\n\n\ndef other():\n" + "    pass\n" * 50) == []
    assert _too_long("x = 1\n" * 601) == "601 lines (limit 600)" and _too_long("x = 1\n") is None


def test_the_layer_and_the_script_folders_are_found():
    modules = _script_modules()
    assert {"study", "study.verdict", "study.flags", "experiments.lr_sensitivity",
            "paper_repro.collect", "benchmarks.step_time"} <= set(modules)
    assert "experiments.common" not in modules and "paper_repro.common" not in modules


@pytest.mark.parametrize("name", sorted(_script_modules()))
def test_script_folders_share_code_only_through_the_layer(name):
    source = open(_script_modules()[name]).read()
    assert not _folder_violations(name, source)
    assert not _long_mains(source), f"{name}: {_long_mains(source)}"
    assert not _too_long(source), f"{name}: {_too_long(source)}"


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
