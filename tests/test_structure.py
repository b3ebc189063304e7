"""The shape of src/: no module imports another module's `_private` name, and the modules import no circle.

Both rules read every import statement, those inside functions included (an import moved into a function to dodge
a circle is still a circle). Only src/ is walked; tests may reach into private names.

KNOWN_PRIVATE_IMPORTS and KNOWN_CYCLES list violations that existed when this test was written, outside src/peft;
they are to be emptied, never extended. Each entry must still be a violation (the test says when one is fixed, so
the list shrinks with the code).
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# (importing module, imported module, name)
KNOWN_PRIVATE_IMPORTS: set = set()
# each a cycle as the sorted tuple of its modules
KNOWN_CYCLES: set = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def src_modules() -> dict:
    """{dotted module name: path} of every .py file under src/."""
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` statement reads (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict):
    """(imported src modules, [(source module, private name)]) of one file, every import statement included.

    `from P import x` depends on P.x when that is a module of src/, on P otherwise; `import P.Q` on P.Q."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets, private = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    targets.add(alias.name)
                if any(is_private(part) for part in alias.name.split(".")) and alias.name.split(".")[0] == "src":
                    private.append((alias.name, alias.name))
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    targets.add(submodule)
                elif source in modules:
                    targets.add(source)
                if source.split(".")[0] == "src" and source != module and (
                        is_private(alias.name) or any(is_private(part) for part in source.split("."))):
                    private.append((source, alias.name))
    targets.discard(module)
    return targets, private


def import_graph():
    modules = src_modules()
    graph, private = {}, set()
    for name, path in modules.items():
        targets, found = imports_of(name, path, modules)
        graph[name] = targets
        private |= {(name, source, imported) for source, imported in found}
    return graph, private


def strongly_connected(graph: dict) -> list:
    """Tarjan's components of more than one module (each one or more import circles)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(tuple(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def package_of(module: str) -> str:
    """src.peft.bone -> src.peft; src.merge -> src.merge (a top-level module is its own unit)."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict) -> dict:
    packages = {}
    for module, targets in graph.items():
        own = package_of(module)
        packages.setdefault(own, set()).update(package_of(t) for t in targets if package_of(t) != own)
    return packages


def test_no_module_imports_a_private_name_of_another():
    _, private = import_graph()
    new = sorted(private - KNOWN_PRIVATE_IMPORTS)
    assert not new, "imports of private names across modules (make the name public, or move the code): " + \
        "; ".join(f"{m} imports {name!r} from {source}" for m, source, name in new)
    fixed = sorted(KNOWN_PRIVATE_IMPORTS - private)
    assert not fixed, f"fixed, so remove from KNOWN_PRIVATE_IMPORTS: {fixed}"


def test_no_import_cycles_between_modules_or_packages():
    graph, _ = import_graph()
    cycles = set(strongly_connected(graph)) | {("package", *c) for c in strongly_connected(package_graph(graph))}
    new = sorted(cycles - KNOWN_CYCLES)
    assert not new, f"import circles in src/ (imports inside functions count too): {new}"
    fixed = sorted(KNOWN_CYCLES - cycles)
    assert not fixed, f"fixed, so remove from KNOWN_CYCLES: {fixed}"


def test_the_checker_sees_private_names_and_cycles(tmp_path):
    """The rules above would catch what they claim to (a guard against a checker that finds nothing)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [("a", "b", "c")]
    assert package_graph({"src.x.a": {"src.y.b"}, "src.y.b": {"src.x.c"}, "src.x.c": set()}) == \
        {"src.x": {"src.y"}, "src.y": {"src.x"}}
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from src.peft.lora import _hidden, public\n")
    modules = {"src.peft.lora": path, "src.peft.other": path}
    targets, private = imports_of("src.peft.other", path, modules)
    assert targets == {"src.peft.lora"} and private == [("src.peft.lora", "_hidden")]
