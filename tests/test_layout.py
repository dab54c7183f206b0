"""The package's layout: the command line is a client of the public API, and imports run one way.

Read from the source with :mod:`ast` (nothing is imported), so that an import under
``if TYPE_CHECKING:`` or inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aimcluster"

#: The public modules besides ``aimcluster`` itself.
PUBLIC_MODULES = frozenset(f"aimcluster.{name}" for name in ("abc", "sync", "testing", "tools"))
#: Entry points that only start the command line.
ENTRY_POINTS = frozenset({"aimcluster.__main__"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES: dict[str, Path] = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}

#: The command line's modules: its package, whole.
CLI_SIDE = frozenset(
    module
    for module in MODULES
    if module == "aimcluster._cli" or module.startswith("aimcluster._cli.")
)

#: The engine's packages, bottom up, and what each may import of aimcluster besides itself.
LAYERS = {
    "aimcluster._base": set(),
    # The built-in tool profiles: specs and framings made of the vocabulary, nothing else.
    "aimcluster._tools": {"aimcluster._base"},
    "aimcluster._transport": {"aimcluster._base", "aimcluster.abc"},
    "aimcluster._slot": {"aimcluster._base", "aimcluster.abc"},
    "aimcluster._core": {
        "aimcluster._base",
        "aimcluster._slot",
        "aimcluster._tools",
        "aimcluster._transport",
        "aimcluster.abc",
    },
    # The public module the engine itself uses sits just above the vocabulary.
    "aimcluster.abc": {"aimcluster._base"},
    # The profiles' public face, which the engine does not import.
    "aimcluster.tools": {"aimcluster._tools"},
}


def _public_names() -> frozenset[str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError("aimcluster/__init__.py has no __all__")


def _imports(module: str) -> Iterator[tuple[str, str | None, int]]:
    """Every import in *module*, anywhere in it, as ``(module, name, line)``: the module
    imported from (absolute) and the name imported from it (``None`` for ``import x``)."""
    path = MODULES[module]
    package = module if _is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                assert node.module is not None
                source = node.module
            for alias in node.names:
                yield source, alias.name, node.lineno


def _edges(module: str) -> set[str]:
    """The package's modules *module* imports: ``from . import x`` is an edge to ``x`` when
    ``x`` is a module, else to the package whose name it is."""
    targets = set()
    for source, name, _line in _imports(module):
        if name is not None and f"{source}.{name}" in MODULES:
            targets.add(f"{source}.{name}")
        elif source in MODULES:
            targets.add(source)
    return targets


def _cycles() -> list[list[str]]:
    """One cycle through each group of modules that import each other (a strongly connected
    component of the import graph, Tarjan's algorithm), shortest first."""
    graph = {module: sorted(_edges(module)) for module in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph[module]:
                components.append(component)

    for module in graph:
        if module not in index:
            visit(module)

    def shortest_cycle(component: set[str]) -> list[str]:
        # Breadth first from each member back to itself, inside the component.
        best: list[str] | None = None
        for start in sorted(component):
            paths = {start: [start]}
            frontier = [start]
            found = None
            while frontier and found is None:
                following = []
                for module in frontier:
                    for target in graph[module]:
                        if target == start:
                            found = [*paths[module], start]
                            break
                        if target in component and target not in paths:
                            paths[target] = [*paths[module], target]
                            following.append(target)
                    if found is not None:
                        break
                frontier = following
            if found is not None and (best is None or len(found) < len(best)):
                best = found
        assert best is not None
        return best

    return sorted((shortest_cycle(c) for c in components), key=lambda c: (len(c), c))


def test_the_command_line_has_a_package_of_its_own() -> None:
    # A module renamed or moved must not drop out of the checks below unnoticed.
    assert {"aimcluster._cli", "aimcluster._cli.main", "aimcluster._cli.batch"} <= CLI_SIDE


def test_the_tool_profiles_have_a_package_of_their_own() -> None:
    # As above: the layer rules below must see the profiles where they live.
    assert {"aimcluster._tools.registry", "aimcluster._tools.claude"} <= MODULES.keys()


def _layer(module: str) -> str | None:
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_the_engine_s_packages_import_one_way() -> None:
    wrong = []
    for module in sorted(MODULES):
        layer = _layer(module)
        if layer is None:
            continue
        for target in sorted(_edges(module)):
            other = _layer(target) or target
            if other != layer and other not in LAYERS[layer] and target != "aimcluster":
                wrong.append(f"{module} ({layer}) imports {target}")
    assert wrong == [], "\n".join(wrong)


def test_the_command_line_imports_only_the_public_api() -> None:
    public = _public_names()
    allowed_modules = {"aimcluster"} | PUBLIC_MODULES | CLI_SIDE
    wrong = []
    for module in sorted(CLI_SIDE):
        for source, name, line in _imports(module):
            if source != "aimcluster" and not source.startswith("aimcluster."):
                continue
            if source not in allowed_modules:
                what = source if name is None else f"{name} from {source}"
                wrong.append(f"{module}:{line} imports {what}")
            elif source == "aimcluster" and name is not None:
                submodule = f"aimcluster.{name}"
                if name not in public and submodule not in PUBLIC_MODULES | CLI_SIDE:
                    wrong.append(f"{module}:{line} imports aimcluster.{name}, not public")
    assert wrong == [], "\n".join(wrong)


def test_the_engine_never_imports_the_command_line() -> None:
    wrong = [
        f"{module} imports {target}"
        for module in sorted(MODULES.keys() - CLI_SIDE - ENTRY_POINTS)
        for target in sorted(_edges(module) & CLI_SIDE)
    ]
    assert wrong == [], "\n".join(wrong)


def test_the_import_graph_of_the_whole_package_has_no_cycle() -> None:
    cycles = _cycles()
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
