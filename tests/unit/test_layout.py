"""The layout rules of ARCHITECTURE.md, checked on the source itself:

* dependencies point one way: portwatch -> stream_processors -> probers, producers ->
  schemas; schemas imports nothing of ours (imports inside functions count too);
* no module imports another module's private (underscore) name;
* a module over 600 lines says why it is one file, in its docstring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("portwatch", "stream_processors", "probers", "producers", "schemas")
# What each package may import of ours (itself included).
ALLOWED: dict[str, set[str]] = {
    "schemas": {"schemas"},
    "probers": {"probers", "schemas"},
    "producers": {"producers", "schemas"},
    "stream_processors": {"stream_processors", "probers", "producers", "schemas"},
    "portwatch": set(PACKAGES),
}
LONG_FILE = 600
LONG_FILE_REASON = "Why one file:"


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def our_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of one of our packages in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    found.append((node.lineno, alias.name, []))
    return found


def test_dependencies_point_one_way() -> None:
    wrong = []
    for path in modules():
        package = path.relative_to(REPO).parts[0]
        for line, module, _names in our_imports(path):
            if module.split(".")[0] not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert wrong == []


def test_no_module_imports_a_private_name_of_another() -> None:
    wrong = []
    for path in modules():
        for line, module, names in our_imports(path):
            private = [n for n in names if n.startswith("_")]
            if private:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {private} from {module}")
    assert wrong == []


@pytest.mark.parametrize("path", [p for p in modules()
                                  if len(p.read_text(encoding="utf-8").splitlines()) > LONG_FILE],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_a_long_module_says_why_it_is_one_file(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert LONG_FILE_REASON in docstring
