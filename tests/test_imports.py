"""The layout shows the layers, and the import graph keeps them.

Layers, lowest first: ``_validation``/``_compat`` -> ``mpc`` -> ``privacy`` ->
``config`` -> ``parties`` -> ``ensemble`` -> ``experiments`` -> ``cli``. A
module imports only from its own layer or a lower one; nothing deep in the
package imports the top-level package for its side effects; the validators
live in one module; ``pricure budget`` never loads CrypTen.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO, run_fresh_python

PACKAGE = REPO / "src" / "pricure_crypten"
LAYERS = {"_validation": 0, "_compat": 0, "mpc": 1, "privacy": 2, "config": 3, "parties": 4, "ensemble": 5,
          "experiments": 6, "cli": 7, "__main__": 7, "__init__": 7}


def _module_name(path: Path) -> str:
    return ".".join(("pricure_crypten", *path.relative_to(PACKAGE).with_suffix("").parts))


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def _imports(path: Path, name: str | None = None) -> list[tuple[str, int]]:
    """(absolute module imported, line) for every import of the package in ``path`` (module ``name``)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("pricure_crypten"):
                for alias in node.names:  # "from . import reference" imports a submodule
                    sub = f"{target}.{alias.name}"
                    found.append((sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                                  or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("pricure_crypten")]
    return found


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        if here == "pricure_crypten" or here.endswith("__main__"):
            continue
        for target, line in _imports(path):
            if target == "pricure_crypten":
                violations.append(f"{here}:{line} imports the top-level package")
            elif _layer(target) > _layer(here):
                violations.append(f"{here}:{line} imports {target} (a higher layer)")
    assert not violations, "\n".join(violations)


def test_the_layer_check_would_catch_a_violation(tmp_path):
    # Positive control: the same parser sees an upward import in a copy of a low-layer module.
    fake = tmp_path / "probe.py"
    fake.write_text("from ..ensemble import PrivateEnsemble\nimport pricure_crypten\n")
    targets = [t for t, _ in _imports(fake, "pricure_crypten.mpc.probe")]
    assert "pricure_crypten.ensemble" in targets and "pricure_crypten" in targets
    assert _layer("pricure_crypten.ensemble") > _layer("pricure_crypten.mpc.probe")


def test_validators_live_in_one_place():
    defined = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module-level functions (methods may share a name)
            if isinstance(node, ast.FunctionDef) and node.name in {
                "check_epsilon", "check_delta", "check_split", "check_aggregation", "check_logit_bound", "check_int",
            }:
                defined.setdefault(node.name, []).append(_module_name(path))
    assert defined and all(places == ["pricure_crypten._validation"] for places in defined.values()), defined


def test_budget_command_and_accounting_never_load_crypten(tmp_path):
    out = run_fresh_python(f"""
        import json, os, sys, io, contextlib
        os.environ["PRICURE_LEDGER"] = {str(tmp_path / "ledger.sqlite3")!r}
        from pricure_crypten.privacy.accounting import PrivacyLedger
        PrivacyLedger(total_epsilon=10.0).close()
        from pricure_crypten.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["budget", "list"])
        import pricure_crypten.privacy.accounting, pricure_crypten.privacy.noise, pricure_crypten.config
        print(json.dumps({{"code": code, "crypten": "crypten" in sys.modules}}))
    """)
    assert out == {"code": 0, "crypten": False}


def test_importing_the_package_then_crypten_works_on_this_torch():
    out = run_fresh_python("""
        import json, sys
        import pricure_crypten
        light = "crypten" not in sys.modules
        import crypten, crypten.nn
        print(json.dumps({"light": light, "mpc": hasattr(crypten, "mpc"),
                          "patches": pricure_crypten.applied_patches()}))
    """)
    assert out["light"] and out["mpc"]
    assert "onnx-registration-alias" in out["patches"]


def _import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in it, including ``if TYPE_CHECKING:``
    blocks and function bodies: a cycle there is still two modules that need each other)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join((package.name, *path.relative_to(package).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        graph[name] = {target for target, _ in _imports(path, name if path.name != "__init__.py"
                                                        else name + ".__init__")}
    for name in graph:  # "from .x import y": drop the package itself when it is the importer's own parent
        graph[name] = {t for t in graph[name] if t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_inside_the_package():
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_would_catch_a_cycle(tmp_path):
    # Positive control: two modules of a scratch package that import each other, one only for typing.
    package = tmp_path / "pricure_crypten_probe"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .a import A\n")
    (package / "sub" / "a.py").write_text("from .b import B\nclass A: ...\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\nclass B: ...\n")
    graph = _import_graph(package)
    assert graph["pricure_crypten_probe.sub.a"] == {"pricure_crypten_probe.sub.b"}
    assert _cycles(graph) == [["pricure_crypten_probe.sub.a", "pricure_crypten_probe.sub.b"]]


# -- the serving core (parties/serving) is transport-free and below both modes --

TRANSPORTS = ("multiprocessing", "socket", "ssl", "http", "httpx", "fastapi", "uvicorn", "starlette", "sqlite3",
              "torch.distributed", "crypten", "threading", "subprocess")
SERVING = "pricure_crypten.parties.serving"


def _serving_violations(package: Path) -> list[str]:
    """Imports that would tie the serving core to a transport or to one mode (any depth, any block)."""
    violations = []
    for path in sorted(package.rglob("*.py")):
        here = ".".join(("pricure_crypten", *path.relative_to(PACKAGE).with_suffix("").parts)) \
            if package.is_relative_to(PACKAGE) else f"{SERVING}.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if any(name == t or name.startswith(t + ".") for t in TRANSPORTS):
                    violations.append(f"{here}:{node.lineno} imports {name}")
        for target, line in _imports(path, here):
            inside = target.startswith(SERVING)
            allowed_lower = any(target.startswith(f"pricure_crypten.{layer}") for layer in
                                ("_validation", "mpc", "privacy", "config"))
            if not inside and not allowed_lower:
                violations.append(f"{here}:{line} imports {target} (a mode or a transport)")
    return violations


def test_the_serving_core_imports_no_transport_and_neither_mode():
    assert (PACKAGE / "parties" / "serving").is_dir()
    assert _serving_violations(PACKAGE / "parties" / "serving") == []
    # and both modes are built on it
    for user in ("ensemble.py", "parties/batching.py", "parties/server.py", "parties/net/node.py",
                 "parties/net/loop.py", "parties/net/requests.py", "parties/net/remote.py"):
        assert any(t.startswith(SERVING) for t, _ in _imports(PACKAGE / user)), user


def test_the_serving_check_would_catch_a_transport_or_a_mode(tmp_path):
    # Positive control: a scratch copy of a serving module that reaches for HTTP and for the networked node.
    probe = tmp_path / "serving"
    probe.mkdir()
    (probe / "probe.py").write_text("import httpx\nfrom ..net.node import Node\nfrom .messages import Load\n")
    found = _serving_violations(probe)
    assert any("imports httpx" in v for v in found) and any("parties.net.node" in v for v in found)
    assert not any("messages" in v for v in found)


def _test_imports_of(path: Path) -> list[tuple[str, int]]:
    """(module, line) for every import in a test file of ``benchmarks`` or of ANOTHER test module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        for name in names:
            top = name.split(".")
            if top[0] == "benchmarks" or (top[0] == "tests" and len(top) > 1 and top[1].startswith("test_")
                                         and top[1] != path.stem):
                found.append((name, node.lineno))
    return found


def test_tests_import_neither_benchmarks_nor_each_other():
    # shared test code lives in tests/helpers.py, tests/conftest.py or the library (experiments/)
    bad = [f"{path.name}:{line} imports {name}" for path in sorted((REPO / "tests").glob("*.py"))
           for name, line in _test_imports_of(path)]
    assert not bad, "\n".join(bad)


def test_the_test_import_check_would_catch_one(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text("import benchmarks.grid\nfrom tests.test_other import x\nfrom tests.test_probe import y\n"
                     "from tests.helpers import z\n")
    assert _test_imports_of(probe) == [("benchmarks.grid", 1), ("tests.test_other", 2)]
