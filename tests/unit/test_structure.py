"""The package's shape: no import cycles, no imports up the layers, and
torch.distributed only in the runtime and the Link (docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "fedmpi"
# Lower number = lower layer; a module may import only from its own layer or below.
LAYERS = {
    "errors": 0, "atomic": 0, "options": 0, "registry": 0, "seeding": 0, "console": 0,
    "signals": 0, "jsonsafe": 0, "procs": 0, "quick_exit": 0,
    "config": 1,
    "runtime": 2, "metering": 2,
    "net": 3, "data": 3, "models": 3,
    "tasks": 4, "state": 4, "strategies": 4,
    "engine": 5,
    "plugins": 6, "algorithms": 6, "runfolder": 6,
    "experiment": 7, "preflight": 7,
    "runner": 8, "supervise": 8, "cli": 9, "sweep": 9, "report": 9,
    "net.profiles": 1,  # link presets and traces: plain data the config resolves and records
}
DISTRIBUTED_OK = ("runtime", "net")


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (TYPE_CHECKING ones too)."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                mod = ".".join(parts + ([mod] if mod else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target or None

    return {m: {r for t in imports(m, f) if (r := resolve(t)) and r != m} for m, f in mods.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):  # the most specific entry wins
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, path: list[str]) -> list[str] | None:
        seen[m] = 1
        for n in sorted(g.get(m, ())):
            if seen.get(n) == 1:
                return path[path.index(n):] + [m, n] if n in path else [m, n]
            if n not in seen and (cycle := visit(n, path + [m])):
                return cycle
        seen[m] = 2
        return None

    for m in sorted(g):
        if m not in seen and (cycle := visit(m, [])):
            return cycle
    return None


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(g.items()):
        if m == "fedmpi" or m.endswith("__main__"):
            continue
        if layer(m) is None:
            bad.append(f"{m} is in no layer: add its package to LAYERS and docs/architecture.md")
            continue
        bad += [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})" for d in sorted(deps)
                if d != "fedmpi" and layer(d) is not None and layer(d) > layer(m)]
    return bad


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer_and_imports_only_downwards():
    assert upward_imports(graph()) == []


def test_only_runtime_and_net_touch_torch_distributed():
    for m, f in modules().items():
        if any(t == "torch.distributed" or t.startswith("torch.distributed.") for t in imports(m, f)):
            assert m.split(".")[1] in DISTRIBUTED_OK, f"{m} imports torch.distributed"


def test_the_checks_catch_a_planted_violation():
    g = graph()
    g["fedmpi.config"] = g["fedmpi.config"] | {"fedmpi.engine.loop"}
    assert any(v.startswith("fedmpi.config (layer 1) imports fedmpi.engine.loop") for v in upward_imports(g))
    assert find_cycle(g) is not None  # engine.loop imports config (indirectly): now a cycle


def test_test_files_have_distinct_names():
    """pytest imports test modules by file name (tests/ has no __init__.py): two files of one
    name in different folders make collection fail."""
    names = [p.name for p in (PKG.parent / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
