"""No import circles in mailprov: the graph of every import in mailprov/**/*.py, at module level and
inside functions (lazy imports too, since they only hide a circle), and inside ``if TYPE_CHECKING:``
(a type-only circle is still two modules that each need the other), must have no cycle."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import mailprov

PACKAGE = Path(mailprov.__file__).resolve().parent


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file."""
    modules = module_names(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                # "from pkg import mod" depends on pkg.mod; "from mod import name" on mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps.update(t for t in map(known, targets) if t and t != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_mailprov_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and "mailprov.smtp.workers" in graph["mailprov.smtp.service"]
    found = cycles(graph)
    report = "\n".join(" <-> ".join(c) + "\n  " + "\n  ".join(f"{m} imports {sorted(graph[m] & set(c))}" for m in c) for c in found)
    assert not found, f"import cycles (break them; a lazy import only hides one):\n{report}"


def test_the_check_finds_lazy_relative_and_type_only_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from ..c import C
            """
        )
    )
    (pkg / "c.py").write_text("def f():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\n")  # depends on the cycle, is not part of it
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("def f():\n    pass\n")
    assert cycles(import_graph(pkg)) == []


def test_cli_start_up_loads_no_command_s_heavy_modules():
    """``mailprov --help`` builds every command's options, but runs none: dnspython, asyncio, the config
    schema, the queue, cryptography and the password hashing (mailprov.users) are imported by the command
    that uses them (bench/cli_startup.py measures the time; this keeps the modules out)."""
    import subprocess
    import sys

    code = "import sys, mailprov.cli; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60).stdout.split())
    assert "mailprov.cli.check" in loaded and "typer" in loaded
    heavy = ("dns", "asyncio", "ssl", "cryptography", "argon2", "mailprov.config", "mailprov.users", "mailprov.queue", "mailprov.dns")
    pulled = sorted(m for m in loaded if m in heavy or m.startswith(tuple(h + "." for h in heavy)))
    assert not pulled, f"imported by 'import mailprov.cli' (import them inside the command that needs them): {pulled}"
