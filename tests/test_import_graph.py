"""The import graph of dtr_lab has no circle and nothing upward (the layers below; docs/layout.md), and no
script imports another script: read from the source (every import, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dtr_lab"

# Bottom to top; a module may import its own layer's modules and the layers below, never above. Within a
# layer marked independent, a group (a package, or a module) imports no other group of that layer.
LAYERS: list[tuple[set[str], bool]] = [
    # torch-free or plain foundations: errors, seeds, the record format, a run's files, the optimizer's extras
    ({"errors", "seeds", "records", "digits", "storage", "optim"}, False),
    ({"runs"}, False),  # run directories read back, their statistics and tables (no training imports)
    ({"plots", "report"}, False),  # figures and the figure index from those frames
    ({"diffusion", "mtl"}, True),  # pure torch: schedules, samplers; intervals, clustering, MTL methods
    ({"routing"}, False),  # the routing seam
    ({"models", "data", "metrics"}, True),  # networks, data modules, sample-quality metrics: independent
    ({"samples", "model_checks"}, False),  # drawing samples; what a module accepts (options, checkpoints)
    ({"module", "callbacks"}, True),  # the LightningModule; callbacks get it from Lightning, never import it
    # entry points (the CLI with its parser, console and loggers' set-up)
    ({"cli", "encode", "official", "pairing", "__main__", ""}, False),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The dtr_lab modules a file imports (``from pkg import submodule`` counts as the submodule)."""

    def resolve(name: str) -> str:
        while name not in known:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "dtr_lab"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dtr_lab"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in known else resolve(node.module))
    return found


def group(module: str) -> str:
    """The layer entry a module belongs to: 'mtl' for dtr_lab.mtl.clustering, '' for dtr_lab itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank(module: str) -> int:
    for n, (groups, _) in enumerate(LAYERS):
        if group(module) in groups:
            return n
    raise AssertionError(f"{module} is in no layer of LAYERS; place it")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_module_has_a_layer():
    for module in modules():
        rank(module)


def test_every_layer_names_modules_that_exist():
    """A layer entry for a module or package that is gone would pass silently: each names a real one."""
    present = {group(module) for module in modules()}
    for groups, _ in LAYERS:
        assert groups <= present, f"LAYERS names {sorted(groups - present)}, which dtr_lab does not have"


def test_nothing_imports_upward_or_across_independent_groups():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            a, b = rank(module), rank(target)
            if b > a:
                wrong.append(f"{module} -> {target} (upward)")
            elif a == b and LAYERS[a][1] and group(module) != group(target):
                wrong.append(f"{module} -> {target} (independent groups of one layer)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_circle():
    edges = graph()
    # a package's __init__ re-exports its modules; an edge into it from its own modules is not a circle of
    # concepts, so the package node stands for its __init__ only
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_readers_and_plots_import_no_training_code():
    edges = graph()
    torch_free = [
        "dtr_lab.records", "dtr_lab.runs.markdown", "dtr_lab.runs", "dtr_lab.plots", "dtr_lab.report",
        "dtr_lab.storage.labels",
    ]
    for module in torch_free:
        source = modules()[module].read_text()
        assert "import torch" not in source and "import lightning" not in source, module
        assert all(rank(t) <= rank(module) for t in edges[module])


def test_no_script_imports_another_script():
    """analysis/ and benchmarks/ scripts import dtr_lab and their folder's shared libraries only (the
    studies' skeleton and its job engine; the benchmarks' timing)."""
    shared = {"analysis": {"study", "engine"}, "benchmarks": {"timing"}}
    for folder, libraries in shared.items():
        scripts = {p.stem for p in (REPO / folder).glob("*.py")} - libraries
        for library in libraries:
            assert "__main__" not in (REPO / folder / f"{library}.py").read_text(), f"{library} is a library"
        for path in (REPO / folder).glob("*.py"):
            tree = ast.parse(path.read_text())
            nodes = list(ast.walk(tree))
            names = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
            names |= {
                n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.module
            }
            others = (names & scripts) - {path.stem}
            assert not others, f"{folder}/{path.name} imports the script(s) {', '.join(sorted(others))}"
            if folder == "analysis":  # run directories in, figures out: no helper borrowed from a callback
                modules_ = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
                assert not any(m.startswith("dtr_lab.callbacks") for m in modules_), path.name
            if path.stem in libraries:
                assert not names & scripts, f"{path.stem} imports a script"
