"""The package's import rules, checked statically over the source of compile_ops/, fake_impls/ and
inductor_patches/ (``ast`` only: no module is imported or run).

* Private names stay private: no module takes another module's ``_name`` — neither
  ``from a.b import _name`` nor ``a.b._name`` on an imported module. A private submodule
  (``a/_b.py``) may be imported only from inside its package ``a``. Dunder names are public;
  names from outside the three packages (torch's private APIs) are not ours to rule on.
* No import cycle between our modules. Every import counts, at module level or inside a function:
  a deferred import keeps a cycle from failing at import time but not from tying the two modules
  together. Each edge of a reported cycle says which kind it is. Imports under
  ``if TYPE_CHECKING:`` never run and do not count. An edge goes to the module named (``from a
  import b`` with ``a/b.py`` goes to ``a.b``); the package ``__init__`` that Python runs first on
  the way there is not an edge, or every submodule would form a cycle with its package.
* ``fake_impls`` and ``inductor_patches`` import nothing from ``compile_ops`` (they come first).
* No module is longer than 400 lines.
* ``torch.cuda`` appears only in the modules of ``CUDA_ONLY`` (every other module reaches the
  device through ``torch.accelerator`` or the group's backend).
* The diagram in docs/architecture.md has an arrow for each part that imports from another, and
  no other: its parts are ``compile_ops`` (the package's ``__init__``), each module and
  subpackage directly inside it, ``fake_impls`` and ``inductor_patches``.

Each test lists every violation it finds; ``python tests/test_import_rules.py`` prints them all.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compile_ops", "fake_impls", "inductor_patches")
INDEPENDENT = ("fake_impls", "inductor_patches")  # import nothing from compile_ops
MAX_LINES = 400
# Modules that may use torch.cuda, and why.
CUDA_ONLY = {
    "compile_ops.graph_capture": "its table of graph types per device names torch.cuda.CUDAGraph",
    "compile_ops.cli.bench.studies": "records the NCCL version, which only torch.cuda reports",
    "compile_ops.moe.one_shot": "CUDA IPC exchange: asks torch.cuda which GPUs reach each other",
    "compile_ops.moe.triton_tma_gemm": "Hopper's copy engine: asks torch.cuda for the compute "
    "capability and the multiprocessor count",
}


@cache
def modules() -> dict[str, Path]:
    """Our module names -> their files (a package's name -> its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # our module the import reaches
    name: str | None  # the name taken from it (a from-import of something not a module)
    line: int
    deferred: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        kind = ", in a function" if self.deferred else ""
        return f"{modules()[self.importer].relative_to(ROOT)}:{self.line}{kind}"


class _Scanner(ast.NodeVisitor):
    """The imports of one module, the names it binds to our modules, its torch.cuda uses."""

    def __init__(self, module: str):
        self.module = module
        self.imports: list[Import] = []
        self.bound: dict[str, str] = {}  # local name -> our module
        self.torch_names: set[str] = set()  # local names of the torch module itself
        self.cuda_lines: list[int] = []
        self._depth = 0
        self._type_only = 0

    def _function(self, node):
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            self._type_only += 1
            for child in node.body:
                self.visit(child)
            self._type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, target: str, name: str | None, node: ast.stmt) -> None:
        self.imports.append(
            Import(self.module, target, name, node.lineno, self._depth > 0, self._type_only > 0)
        )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "torch.cuda" or alias.name.startswith("torch.cuda."):
                self.cuda_lines.append(node.lineno)
            top = alias.name.split(".")[0]
            if alias.name == "torch" or (top == "torch" and not alias.asname):
                self.torch_names.add(alias.asname or top)
            target = _our_module(alias.name)
            if target is not None:
                self._add(target, None, node)
                self.bound[alias.asname or top] = alias.name if alias.asname else top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, node.module, node.level)
        if base == "torch.cuda" or base.startswith("torch.cuda."):
            self.cuda_lines.append(node.lineno)
        if base == "torch" and any(a.name == "cuda" for a in node.names):
            self.cuda_lines.append(node.lineno)
        if _our_module(base) != base:
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in modules():
                self._add(submodule, None, node)
                self.bound[alias.asname or alias.name] = submodule
            else:
                self._add(base, alias.name, node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is not None:
            head, *rest = dotted.split(".")
            if head in self.torch_names and rest[:1] == ["cuda"]:
                self.cuda_lines.append(node.lineno)
            elif head in self.bound:
                self._attribute(".".join([self.bound[head], *rest]), node)
        self.generic_visit(node)

    def _attribute(self, dotted: str, node: ast.Attribute) -> None:
        """``module.name`` on one of our modules: record the name taken (``a.b._c`` -> ``_c``)."""
        parts = dotted.split(".")
        for i in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:i])
            if module in modules():
                if f"{module}.{parts[i]}" not in modules() and module != self.module:
                    self._add(module, parts[i], node)
                return


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _absolute(importer: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    is_package = modules()[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _our_module(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules():
            return ".".join(parts[:i])
    return None


@cache
def scans() -> dict[str, _Scanner]:
    result = {}
    for module, path in modules().items():
        scanner = _Scanner(module)
        scanner.visit(ast.parse(path.read_text(), filename=str(path)))
        result[module] = scanner
    return result


def imports() -> Iterator[Import]:
    for scanner in scans().values():
        yield from scanner.imports


# --- the rules -----------------------------------------------------------------------------------


def private_imports() -> list[str]:
    found = set()
    for imp in imports():
        if imp.name is not None and is_private(imp.name) and imp.target != imp.importer:
            found.add(f"{imp.where()}: {imp.importer} takes {imp.target}.{imp.name}")
        parts = imp.target.split(".")
        for i, part in enumerate(parts):
            package = ".".join(parts[:i])
            if is_private(part) and not inside(imp.importer, package):
                found.add(
                    f"{imp.where()}: {imp.importer} imports {imp.target}, private to {package}"
                )
    return sorted(found)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def import_cycles() -> list[str]:
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], list[str]] = {}
    for imp in imports():
        if imp.type_only or imp.target == imp.importer:
            continue
        edges.setdefault(imp.importer, set()).add(imp.target)
        where.setdefault((imp.importer, imp.target), []).append(imp.where())
    found = []
    for component in _cycles(edges):
        lines = [
            f"  {a} -> {b} ({'; '.join(sorted(set(where[a, b])))})"
            for a in component
            for b in component
            if (a, b) in where
        ]
        found.append(f"cycle between {', '.join(component)}:\n" + "\n".join(lines))
    return found


def core_imports_from_independent_packages() -> list[str]:
    return sorted(
        {
            f"{imp.where()}: {imp.importer} imports {imp.target}"
            for imp in imports()
            if imp.importer.split(".")[0] in INDEPENDENT and inside(imp.target, "compile_ops")
        }
    )


def long_modules() -> list[str]:
    found = []
    for path in modules().values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_LINES})")
    return found


def cuda_uses() -> list[str]:
    return [
        f"{modules()[module].relative_to(ROOT)}:{line}: torch.cuda"
        for module, scanner in scans().items()
        if module not in CUDA_ONLY
        for line in sorted(set(scanner.cuda_lines))
    ]


RULES = {
    "private names taken from another module": private_imports,
    "import cycles": import_cycles,
    "fake_impls/inductor_patches importing compile_ops": core_imports_from_independent_packages,
    f"modules over {MAX_LINES} lines": long_modules,
    "torch.cuda outside CUDA_ONLY": cuda_uses,
}


def _assert_none(rule: str) -> None:
    found = RULES[rule]()
    if found:
        pytest.fail(f"{rule} ({len(found)}):\n" + "\n".join(found), pytrace=False)


def test_no_module_takes_another_modules_private_names():
    _assert_none("private names taken from another module")


def test_no_import_cycle():
    _assert_none("import cycles")


def test_fake_impls_and_inductor_patches_import_nothing_from_compile_ops():
    _assert_none("fake_impls/inductor_patches importing compile_ops")


def test_no_module_over_the_line_limit():
    _assert_none(f"modules over {MAX_LINES} lines")


def test_torch_cuda_only_in_cuda_only_modules():
    _assert_none("torch.cuda outside CUDA_ONLY")


# --- the diagram of docs/architecture.md ---------------------------------------------------------

DIAGRAM = ROOT / "docs" / "architecture.md"


def diagram_parts() -> set[str]:
    """What the diagram must show: the package's ``__init__``, every module and subpackage
    directly inside ``compile_ops``, and the two packages it builds on, each as one part."""
    inner = {m for m in modules() if m.startswith("compile_ops.") and m.count(".") == 1}
    return {"compile_ops", *inner, *INDEPENDENT}


def part_of(module: str) -> str:
    return max((part for part in diagram_parts() if inside(module, part)), key=len)


def part_arrows() -> set[tuple[str, str]]:
    """(importer, imported) for every pair of parts one of whose modules imports from the other
    (at module level or in a function; not under ``if TYPE_CHECKING:``)."""
    return {
        (part_of(imp.importer), part_of(imp.target))
        for imp in imports()
        if not imp.type_only and part_of(imp.importer) != part_of(imp.target)
    }


def drawn(markdown: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The parts and arrows of the mermaid block: ``id["module"]`` names a part, ``a --> b`` on a
    line of its own says that a imports from b."""
    block = re.search(r"```mermaid\n(.*?)```", markdown, re.S)
    assert block, f"{DIAGRAM.relative_to(ROOT)} has no mermaid block"
    text = block.group(1)
    names = dict(re.findall(r"(\w+)\[\"([\w.]+)\"\]", text))
    arrows = set()
    for line in text.splitlines():
        if not re.search(r"--|==|-\.", line):
            continue
        found = re.fullmatch(r"\s*(\w+)\s*-->\s*(\w+)\s*", line)
        assert found, f"diagram line {line.strip()!r}: write each arrow as `a --> b`, alone"
        a, b = found.groups()
        assert a in names and b in names, f"diagram arrow {a} --> {b}: a part without a name"
        arrows.add((names[a], names[b]))
    return set(names.values()), arrows


def test_architecture_diagram_matches_the_imports():
    parts, arrows = drawn(DIAGRAM.read_text())
    assert parts == diagram_parts(), (
        f"parts missing from the diagram: {sorted(diagram_parts() - parts)}; "
        f"drawn but not in the tree: {sorted(parts - diagram_parts())}"
    )
    real = part_arrows()
    assert arrows == real, (
        f"imports the diagram lacks: {sorted(real - arrows)}; "
        f"arrows no import backs: {sorted(arrows - real)}"
    )


def test_the_diagram_reader_reads_parts_and_arrows():
    text = 'x\n```mermaid\nflowchart TD\n  a["p.a"]\n  b["p.b"]\n  a --> b\n```\n'
    assert drawn(text) == ({"p.a", "p.b"}, {("p.a", "p.b")})
    for wrong in ('b["p.b"] --> a', "a --> c", "a -.-> b", "a --> b & a"):
        with pytest.raises(AssertionError, match="diagram"):
            drawn(text.replace("a --> b", wrong))


# --- the checker checks itself on a small tree of its own -----------------------------------------


def test_the_rules_find_what_they_are_for(tmp_path, monkeypatch):
    files = {
        "compile_ops/__init__.py": "from . import a\n",
        "compile_ops/a.py": "import torch\nfrom .b import _hidden\nx = torch.cuda.is_available()\n",
        "compile_ops/b.py": "import compile_ops.c as c\n\ndef f():\n    return c._secret\n",
        "compile_ops/c.py": "def g():\n    from . import b\n",
        "compile_ops/_impl.py": "",
        "compile_ops/groups.py": "GroupLike = None\n",
        "compile_ops/ok.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from compile_ops import a\nfrom compile_ops import _impl\nfrom torch._dynamo import _x\n",
        "fake_impls/__init__.py": "from compile_ops.groups import GroupLike\n",
        "fake_impls/long.py": "\n" * (MAX_LINES + 1),
        "fake_impls/peek.py": "from compile_ops import _impl\n",
        "inductor_patches/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    modules.cache_clear()
    scans.cache_clear()
    try:
        found = {rule: check() for rule, check in RULES.items()}
    finally:
        modules.cache_clear()
        scans.cache_clear()
    assert found["private names taken from another module"] == [
        "compile_ops/a.py:2: compile_ops.a takes compile_ops.b._hidden",
        "compile_ops/b.py:4, in a function: compile_ops.b takes compile_ops.c._secret",
        "fake_impls/peek.py:1: fake_impls.peek imports compile_ops._impl, private to compile_ops",
    ]
    assert found["import cycles"] == [
        "cycle between compile_ops.b, compile_ops.c:\n"
        "  compile_ops.b -> compile_ops.c (compile_ops/b.py:1; compile_ops/b.py:4, in a function)\n"
        "  compile_ops.c -> compile_ops.b (compile_ops/c.py:2, in a function)"
    ]
    assert found["fake_impls/inductor_patches importing compile_ops"] == [
        "fake_impls/__init__.py:1: fake_impls imports compile_ops.groups",
        "fake_impls/peek.py:1: fake_impls.peek imports compile_ops._impl",
    ]
    assert found[f"modules over {MAX_LINES} lines"] == [
        f"fake_impls/long.py: {MAX_LINES + 1} lines (at most {MAX_LINES})"
    ]
    assert found["torch.cuda outside CUDA_ONLY"] == ["compile_ops/a.py:3: torch.cuda"]


if __name__ == "__main__":
    for rule, check in RULES.items():
        found = check()
        print(f"{rule}: {len(found)}")
        for line in found:
            print("  " + line.replace("\n", "\n  "))
