"""The shape of `mhc/kernels/`: one module per (op, backend) behind one table of targets.

Backend modules (the ones a row of `backends.TABLE` names, `<op>_<backend>.py`, and their
helpers `<backend>_*.py`) import no other backend's modules; shared modules import no backend
module at all (the table reaches those by name, on first use); every module stays under
MAX_LINES; target names appear as string literals only in the table module, so targets are
compared in one place; and import chains inside the package stay short."""
import ast
import os

import pytest

from mhc.kernels import backends

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mhc",
                      "kernels")
MAX_LINES = 250
MAX_DEPTH = 3  # imports in the longest chain (__init__ -> site_op -> site_layout -> backends)
TABLE_MODULE = "backends"


def _sources() -> dict[str, str]:
    """{module name inside the package (file stem): source} of every module of mhc/kernels."""
    return {f[:-3]: open(os.path.join(FOLDER, f)).read()
            for f in sorted(os.listdir(FOLDER)) if f.endswith(".py")}


def _imports(source: str, names) -> set[str]:
    """The modules of the package (`names`) that `source` imports, at top level or in a body."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.removeprefix("mhc.kernels.") for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("mhc.kernels." if node.level else "") + (node.module or "")
            base = base.removeprefix("mhc.kernels").lstrip(".")
            # `from mhc.kernels import x` imports the module x; `from mhc.kernels.x import f`, x
            found |= {a.name if not base else base for a in node.names}
    return found & set(names)


def _families() -> dict[str, str]:
    """{module named by the table: its backend}, e.g. site_mosaic_gpu -> mosaic_gpu."""
    return {getattr(row, op): getattr(row, op).removeprefix(f"{op}_")
            for row in backends.TABLE for op in backends.OPS}


def _backend(name: str, families: dict[str, str]) -> str | None:
    """The backend a module belongs to (named by the table, or a `<backend>_*` helper), or
    None for a shared module."""
    if name in families:
        return families[name]
    return next((b for b in sorted(set(families.values())) if name.startswith(f"{b}_")), None)


def _violations(sources: dict[str, str], families: dict[str, str], target_names) -> list[str]:
    found = []
    for name, source in sources.items():
        own = _backend(name, families)
        for dep in sorted(_imports(source, sources)):
            theirs = _backend(dep, families)
            if theirs is not None and theirs != own:
                found.append(f"{name} ({own or 'shared'}) imports {dep} ({theirs})")
        if source.count("\n") > MAX_LINES:
            found.append(f"{name}: {source.count(chr(10))} lines > {MAX_LINES}")
        if name != TABLE_MODULE:
            literals = {n.value for n in ast.walk(ast.parse(source))
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            found += [f"{name}: target name {t!r} outside {TABLE_MODULE}.py"
                      for t in sorted(literals & set(target_names))]
    return found


def _depth(sources: dict[str, str]) -> int:
    """Imports in the longest chain between the package's modules (an acyclic graph)."""
    graph = {name: _imports(source, sources) - {name} for name, source in sources.items()}
    seen = {}

    def depth(name):
        if name not in seen:
            seen[name] = 1 + max((depth(d) for d in graph[name]), default=-1)
        return seen[name]
    return max(depth(name) for name in graph)


def test_the_checks_catch_each_violation():
    families = {"site_pallas": "pallas", "site_mosaic_gpu": "mosaic_gpu"}
    sources = {
        "site_pallas": "from mhc.kernels import site_mosaic_gpu\n",  # backend -> other backend
        "mosaic_gpu_pipeline": "from . import site_pallas\n",  # a backend's helper, relative
        "site_op": "import mhc.kernels.site_pallas\nif t == 'triton': pass\n",  # shared -> backend
        "site_mosaic_gpu": "from mhc.kernels.mosaic_gpu_pipeline import tile\n" + "\n" * 300,
        "backends": "TARGETS = ('triton',)\n"}  # the table may name targets
    assert _violations(sources, families, ["triton"]) == [
        "site_pallas (pallas) imports site_mosaic_gpu (mosaic_gpu)",
        "mosaic_gpu_pipeline (mosaic_gpu) imports site_pallas (pallas)",
        "site_op (shared) imports site_pallas (pallas)",
        "site_op: target name 'triton' outside backends.py",
        f"site_mosaic_gpu: 301 lines > {MAX_LINES}"]
    assert _depth({"a": "from mhc.kernels import b", "b": "from mhc.kernels.c import f",
                   "c": ""}) == 2


def test_kernels_package_layout():
    sources = _sources()
    families = _families()
    assert set(families) <= set(sources), "the table names a module that does not exist"
    assert _violations(sources, families, backends.TARGETS) == []
    assert _depth(sources) <= MAX_DEPTH


@pytest.mark.parametrize("row", backends.TABLE, ids=lambda row: row.name)
def test_each_target_implements_every_op(row):
    """Every row names a module per op defining that op's interface (`backends.OPS`); imported
    only where this JAX can run the target."""
    if not row.available():
        pytest.skip(f"{row.name} needs {row.requires}")
    for op, names in backends.OPS.items():
        module = backends.implementation(row.name, op)
        assert module.__name__ == f"mhc.kernels.{getattr(row, op)}"
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, f"{module.__name__} lacks {missing}"
