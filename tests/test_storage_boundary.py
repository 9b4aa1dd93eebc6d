"""No module but ``recpipe.storage`` touches files with local file APIs, except the few that
handle this machine's own files (never state), each named here with the reason.

State locations are ``Location`` objects, which have no I/O methods: mypy (``make lint``)
rejects ``location.read_text()`` anywhere. This test covers what typing cannot: calls of
``open``, ``os``/``shutil``/``glob``/``tempfile`` file functions and ``pathlib`` I/O methods.
``tests/test_viewfs_chain.py`` checks the same at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "recpipe"

OS_FILE_CALLS = {
    "replace", "rename", "remove", "unlink", "makedirs", "mkdir", "listdir", "scandir", "walk",
    "rmdir", "open", "fdopen", "link", "symlink", "truncate", "chmod",
}  # fmt: skip
PATH_IO = {
    "mkdir", "read_text", "write_text", "read_bytes", "write_bytes", "is_dir", "is_file",
    "exists", "rglob", "glob", "iterdir", "unlink", "rmdir", "touch", "symlink_to", "rename",
    "open", "stat", "chmod",
}  # fmt: skip
# Receivers whose methods of those names are not file calls on a path.
NOT_PATHS = {"storage", "self", "lake", "catalog", "os"}

# Modules that handle this machine's own files, never state under paths.root.
LOCAL_ONLY = {
    "config.py": "reads the YAML config files the user names",
    "spark.py": "creates paths.local folders: Spark local dirs, JVM temp, embedded Derby",
    "executor_env.py": "builds the executors' virtualenv and archive in a local dist folder",
    "locks.py": "reads /proc/<pid>/stat to tell a dead lock holder",
    "datasets/movielens.py": "pip's download folder under paths.local; the user's source_file",
    "train/launchers.py": "the launcher run folder under paths.local: logs, rank script, temp",
    "train/spec.py": "writes the spec file into the launcher run folder (mode 0600)",
    "train/memory.py": "reads /proc/meminfo for the memory training ranks have on this machine",
}


def _last_name(node: ast.expr) -> str | None:
    """``lake`` for ``lake`` and for ``tx.lake``."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _is_os_path(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _file_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            found.append((node.lineno, "open()"))
        elif isinstance(func, ast.Attribute):
            owner = func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else None
            if owner_name == "os" and func.attr in OS_FILE_CALLS:
                found.append((node.lineno, f"os.{func.attr}()"))
            elif owner_name in ("shutil", "glob", "tempfile") and func.attr != "which":
                found.append((node.lineno, f"{owner_name}.{func.attr}()"))
            elif _is_os_path(owner):
                if func.attr in ("exists", "isdir", "isfile", "getsize", "getmtime"):
                    found.append((node.lineno, f"os.path.{func.attr}()"))
            elif func.attr in PATH_IO and _last_name(owner) not in NOT_PATHS:
                found.append((node.lineno, f".{func.attr}()"))  # str.replace is not in PATH_IO
    return sorted(found)


def _calls_by_module() -> dict[str, list[tuple[int, str]]]:
    calls = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name.startswith("storage/"):
            continue
        found = _file_calls(ast.parse(path.read_text(), filename=str(path)))
        if found:
            calls[name] = found
    return calls


def test_only_the_storage_module_touches_files() -> None:
    calls = _calls_by_module()
    strays = {name: found for name, found in calls.items() if name not in LOCAL_ONLY}
    assert strays == {}, "file calls outside recpipe.storage (use recpipe.storage):\n" + "\n".join(
        f"  recpipe/{name}:{line}: {call}" for name, found in strays.items() for line, call in found
    )
    # The exemptions are real: each still touches its own local files (else drop it).
    assert sorted(calls) == sorted(LOCAL_ONLY)


def test_the_check_finds_what_it_looks_for() -> None:
    code = (
        "import os, shutil\n"
        "open('x')\n"
        "os.replace('a', 'b')\n"
        "shutil.rmtree('d')\n"
        "folder.write_text('t')\n"
        "storage.write_text(loc, 't')\n"
        "name.replace('a', 'b')\n"
        "os.path.exists('p')\n"
    )
    assert _file_calls(ast.parse(code)) == [
        (2, "open()"), (3, "os.replace()"), (4, "shutil.rmtree()"), (5, ".write_text()"),
        (8, "os.path.exists()"),
    ]  # fmt: skip
