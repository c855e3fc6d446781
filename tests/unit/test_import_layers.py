"""Imports run one way (principle 16): cli -> instance -> backends -> hostagent / transport / provision / images
-> guest agent protocol -> errors, paths. A loop is a design bug, so the tests read every import, lazy ones too.

Read from the source (ast), so an import inside a function counts as much as one at the top; imports under
`if TYPE_CHECKING:` do not, since they never run. What the VM layer may say is checked the same way.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import devenv

ROOT = Path(devenv.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


class _Imports(ast.NodeVisitor):
    def __init__(self, known: dict[str, Path]) -> None:
        self.known = known
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(a.name for a in node.names if a.name.startswith("devenv"))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.startswith("devenv"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                self.found.add(sub if sub in self.known else node.module)


@cache
def imports_of(module: str) -> frozenset[str]:
    """The devenv modules `module` imports when it runs, wherever in it the import statement is."""
    visitor = _Imports(modules())
    visitor.visit(ast.parse(modules()[module].read_text(encoding="utf-8")))
    return frozenset(m for m in visitor.found if m != module)


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _offenders(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m} imports {i}" for m in modules() if _in(m, *importers) for i in imports_of(m) if _in(i, *forbidden)
    )


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_packages_import_each_other_without_a_loop() -> None:
    graph: dict[str, set[str]] = {}
    for m in modules():
        graph.setdefault(_package(m), set()).update(
            _package(i) for i in imports_of(m) if _package(i) not in (_package(m), "devenv")
        )
    seen: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        seen[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                loop = [*path[path.index(nxt) :], nxt]
                pytest.fail("an import loop: " + " -> ".join(loop))
            if nxt not in seen:
                walk(nxt)
        path.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            walk(node)


# Everything below the backends: none of it may reach up into them, the instance layer or the CLI.
BELOW_BACKENDS = (
    "devenv.hostagent",
    "devenv.transport",
    "devenv.provision",
    "devenv.images",
    "devenv.guestagent",
    "devenv.config",
    "devenv.hostos",
    "devenv.paths",
    "devenv.errors",
    "devenv.registry",
    "devenv.machines",
    "devenv.jsonlines",
    "devenv.sizes",
    "devenv.runner",
    "devenv.pidutil",
    "devenv.launcher",
)


def test_nothing_below_the_backends_imports_them_or_anything_above() -> None:
    assert _offenders(BELOW_BACKENDS, ("devenv.backends", "devenv.instance", "devenv.oplock", "devenv.cli")) == []


def test_config_hostos_and_the_guest_agent_import_nothing_of_backends_or_the_host_agent() -> None:
    importers = ("devenv.config", "devenv.hostos", "devenv.guestagent", "devenv.transport", "devenv.images")
    assert _offenders(importers, ("devenv.backends", "devenv.hostagent")) == []


def test_the_vm_layer_imports_no_driver_and_drivers_reach_it_only_through_its_protocol() -> None:
    assert _offenders(("devenv.backends.vm",), ("devenv.backends.drivers", "devenv.testing")) == []
    reached = {i for m in modules() if _in(m, "devenv.backends.drivers") for i in imports_of(m)}
    assert {i for i in reached if _in(i, "devenv.backends.vm")} <= {"devenv.backends.vm.driver"}


HYPERVISOR_WORDS = re.compile(r"qemu|qmp|\btcg\b|\bkvm\b|\bhvf\b|\bwhpx\b|hostfwd|libvirt|hyper-v|\bwsl", re.IGNORECASE)


def test_the_vm_layer_holds_no_word_of_any_hypervisor() -> None:
    """It is written once for every driver: a hypervisor's name in it means its knowledge leaked in."""
    said = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((ROOT / "backends" / "vm").glob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if HYPERVISOR_WORDS.search(line)
    ]
    assert said == []


@pytest.mark.parametrize(
    ("imported", "forbidden"),
    [
        (["devenv.hostagent", "devenv.hostagent.daemon", "devenv.hostagent.__main__"], ["devenv.backends"]),
        (["devenv.config", "devenv.hostos", "devenv.guestagent.protocol"], ["devenv.backends", "devenv.hostagent"]),
    ],
    ids=["hostagent", "config-hostos-guestagent"],
)
def test_importing_them_loads_nothing_of_the_layers_above(imported: list[str], forbidden: list[str]) -> None:
    """The same rule as the interpreter sees it, in a fresh process."""
    code = (
        "import importlib, sys\n"
        f"for m in {imported!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {forbidden!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "[]", "")
