"""The package's layers import only downward (docs/architecture: contract ← train ← export; contract ← serve).

Every ``import`` in every module of ``sparsecodes/`` counts, including those inside functions (a lazy import
is still an arrow). The top-level command (``sparsecodes/cli.py``, ``__main__``) may reach every layer: it
imports subcommands by name, only when they run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sparsecodes"
CONTRACT = {"sparsecodes", "sparsecodes.errors", "sparsecodes.bundle", "sparsecodes.codes",
            "sparsecodes.metrics", "sparsecodes.fsutil"}
TOP = {"sparsecodes.cli", "sparsecodes.__main__"}
ALLOWED = {
    "contract": {"contract"},
    "train": {"contract", "train"},
    "export": {"contract", "train", "export"},
    "serve": {"contract", "serve"},
}
"""Layer → the layers its modules may import."""


def layer_of(module: str) -> str | None:
    """``contract``, ``train``, ``export``, ``serve``, ``top``; None for a module outside the package
    (``bench``, ``tests`` or a third-party name is an error of its own, see ``imports_outside``)."""
    if module in TOP:
        return "top"
    if module in CONTRACT:
        return "contract"
    parts = module.split(".")
    if parts[0] != "sparsecodes":
        return None
    if len(parts) > 1 and parts[1] in ("train", "export", "serve"):
        return parts[1]
    return "unknown"  # a new top-level module: decide its layer here before it is imported


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the file, relative imports resolved."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from sparsecodes import bundle`` imports the module sparsecodes.bundle; below the package
            # root, the module named after ``from`` decides the layer.
            out += [(node.lineno, f"{base}.{a.name}" if base == "sparsecodes" and not a.name.startswith("_") else base)
                    for a in node.names]
    return out


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """Every import that breaks the layering, as ``file:line: layer imports module (layer)``."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = layer_of(module_name(path, root))
        if source == "top":
            continue
        for line, target in imported_modules(path, root):
            target_layer = layer_of(target)
            if target_layer is None:
                if target.split(".")[0] in ("bench", "tests"):
                    problems.append(f"{path.relative_to(root.parent)}:{line}: {source} imports {target} (outside the package)")
                continue
            if source not in ALLOWED or target_layer not in ALLOWED[source]:
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {source} imports {target} ({target_layer})"
                )
    return problems


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports() == []


@pytest.mark.parametrize(
    ("where", "line", "layer"),
    [
        ("serve/extra.py", "from sparsecodes.train.models import build", "train"),
        ("serve/extra.py", "import sparsecodes.export.onnx", "export"),
        ("train/extra.py", "from sparsecodes.export import publish", "export"),
        ("train/extra.py", "from sparsecodes.serve.codec import dumps", "serve"),
        ("bundle.py", "from sparsecodes.serve import errors", "serve"),
        ("export/extra.py", "from ..serve import runtime", "serve"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, where: str, line: str, layer: str) -> None:
    root = tmp_path / "sparsecodes"
    for sub in ("train", "export", "serve"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / where).write_text(f"def lazy():\n    {line}\n")
    problems = upward_imports(root)
    assert len(problems) == 1 and f"({layer})" in problems[0], problems


def test_allowed_imports_pass(tmp_path: Path) -> None:
    root = tmp_path / "sparsecodes"
    for sub in ("train", "export", "serve"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "export" / "x.py").write_text("from sparsecodes.train.models import build\nfrom sparsecodes import bundle\n")
    (root / "serve" / "x.py").write_text("from sparsecodes.codes import SparseCodes\nfrom . import y\n")
    (root / "cli.py").write_text("import sparsecodes.serve.app\n")
    assert upward_imports(root) == []
