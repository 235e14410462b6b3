"""The package's layers (docs/design.md, "Layers"): a module imports only modules of its own layer or lower
ones — at load time or inside a function — and no import cycle exists anywhere in the package.

Imports are read from the source (ast), so imports inside functions count. Importing ``arkern.a.b`` also
runs ``arkern/a/__init__.py``, so it is an import of the package ``arkern.a`` too (unless the importer is
inside ``arkern.a``, which is then already being imported). Every module must be listed in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "arkern"

# lowest first; a module belongs to the layer of the longest listed prefix of its name
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("arkern._ext", "arkern.backends", "arkern.masks", "arkern.audio", "arkern.testing")),
    ("references and draws", ("arkern.reference", "arkern.distributions", "arkern.wavenet_heads")),
    ("ops and kernels", ("arkern.ops", "arkern.triton")),
    ("layers", ("arkern.nn",)),
    ("models", ("arkern.models",)),
    ("decoding", ("arkern.decode",)),
    ("model families", ("arkern.families",)),
    ("sampling", ("arkern.sampling",)),
    ("distributed sampling", ("arkern.distributed",)),
    ("applications", ("arkern.pretrained", "arkern.training", "arkern.bench", "arkern.compat", "arkern.datasets",
                      "arkern.evaluation", "arkern.convert")),
    ("command line", ("arkern.cli", "arkern.__main__")),
    ("package face", ("arkern",)),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every arkern module `name` imports anywhere in its source, with the packages that import runs."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    targets: set[str] = set()
    for target in found:
        if not (target == "arkern" or target.startswith("arkern.")):
            continue
        while target not in known and "." in target:  # `import arkern.x.y as z` of an attribute path
            target = target.rpartition(".")[0]
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # the target and the packages importing it runs
            prefix = ".".join(parts[:i])
            if prefix in known and not (name == prefix or name.startswith(prefix + ".")) or prefix == target:
                targets.add(prefix)
        if target == "arkern":
            targets.add(target)
    targets.discard(name)
    return targets


def _layer(name: str) -> int | None:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    return level


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_has_a_layer():
    unlisted = [m for m in _modules() if m != "arkern" and _layer(m) == len(LAYERS) - 1]
    assert not unlisted, f"add these modules to a layer in LAYERS: {unlisted}"


def test_imports_point_down():
    graph = _graph()
    wrong = []
    for name, targets in graph.items():
        for target in targets:
            if _layer(target) > _layer(name):
                wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_function_level_imports(tmp_path):
    """An import inside a function body is an edge like any other (and a relative one is resolved)."""
    source = "def f():\n    from arkern.sampling import generate\n    from . import blocks\n"
    path = ROOT / "nn" / "masked_conv2d.py"
    tree_imports = _imports("arkern.nn.masked_conv2d", path, set(_modules()))
    assert "arkern.ops.masked_conv2d" in tree_imports and "arkern.ops" in tree_imports
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    # a module of the nn layer with that body would import the sampling layer: caught
    targets = _imports("arkern.nn.probe", probe, set(_modules()) | {"arkern.nn.probe"})
    assert {"arkern.sampling", "arkern.nn.blocks"} <= targets
    assert _layer("arkern.sampling") > _layer("arkern.nn.probe")
