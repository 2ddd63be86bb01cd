"""nvidia_engine and its plain-Python half _engine_install: the engine tree on the node in one module run."""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.gpuops.nvidia.plugins.module_utils import _engine_install as engine
from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError
from ansible_collections.gpuops.nvidia.plugins.modules import nvidia_engine as module

MODULE_UTILS = os.path.dirname(os.path.abspath(engine.__file__))
MODULE_FILE = os.path.abspath(module.__file__)
ENGINE_DIR = "ansible_collections/gpuops/nvidia/plugins/module_utils"
UID = os.getuid()
GID = os.getgid()


def repo_engine_files():
    """What the engine is: plugins/module_utils/_*.py, less the Ansible adapter."""
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(MODULE_UTILS, "_*.py"))
                  if os.path.basename(p) != "_module.py")


@pytest.fixture(scope="module")
def sources():
    return engine.engine_sources(module.ENGINE)


def ensure(lib_dir, sources, check_mode=False):
    return engine.ensure({"lib_dir": str(lib_dir)}, sources, check_mode=check_mode, uid=UID, gid=GID)


def tree(lib_dir):
    """{relative path: (kind, mode, content)} of everything under lib_dir."""
    found = {}
    for root, dirs, files in os.walk(str(lib_dir)):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, str(lib_dir))
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                with open(path, "rb") as handle:
                    found[rel] = ("file", stat.S_IMODE(st.st_mode), handle.read())
    return found


# -- the module ships the whole engine -----------------------------------------------------------------

def test_module_ships_every_engine_file():
    """A new plugins/module_utils/_*.py must be added to nvidia_engine (an import and ENGINE), or the node's
    helpers would not get it."""
    shipped = sorted(m.__name__.rsplit(".", 1)[1] + ".py" for m in module.ENGINE)
    assert shipped == repo_engine_files(), (
        "plugins/modules/nvidia_engine.py must import every engine file and list it in ENGINE: missing %s, extra %s"
        % (sorted(set(repo_engine_files()) - set(shipped)), sorted(set(shipped) - set(repo_engine_files()))))


def test_engine_files_are_imported_statically():
    """AnsiballZ ships what the module file imports (found by reading it, not by running it): every engine file
    must appear in a plain import statement of the module file."""
    with open(MODULE_FILE) as handle:
        parsed = ast.parse(handle.read())
    imported = set()
    for node in ast.walk(parsed):
        if isinstance(node, ast.ImportFrom) and node.module == engine.PACKAGE:
            imported.update(alias.name + ".py" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(engine.PACKAGE + "."):
            imported.add(node.module.rsplit(".", 1)[1] + ".py")
    assert set(repo_engine_files()) <= imported
    assert "_module.py" in imported  # the adapter runs the module ...


def test_adapter_is_not_part_of_the_engine(sources):
    # ... but is never installed: the helpers on the node have no Ansible
    assert "_module.py" not in sources
    assert sorted(sources) == repo_engine_files()
    with pytest.raises(GpuopsError) as failure:
        engine.engine_sources([sys.modules[engine.PACKAGE + "._module"]])
    assert failure.value.kind == "engine_source"


def test_sources_are_the_files(sources):
    for name, content in sources.items():
        with open(os.path.join(MODULE_UTILS, name), "rb") as handle:
            assert handle.read() == content, name


def test_sources_read_back_from_a_zip_payload(tmp_path):
    """As AnsiballZ runs the module: the package in a zip on sys.path, imported through zipimport."""
    payload = tmp_path / "payload.zip"
    with zipfile.ZipFile(str(payload), "w") as archive:
        for package in engine.PACKAGE_DIRS:
            archive.writestr(package + "/__init__.py", "")
        for name in repo_engine_files():
            archive.write(os.path.join(MODULE_UTILS, name), ENGINE_DIR + "/" + name)
    code = (
        "import importlib, json, sys\n"
        "from ansible_collections.gpuops.nvidia.plugins.module_utils import _engine_install as e\n"
        "mods = [importlib.import_module(e.PACKAGE + '.' + n[:-3]) for n in %r]\n"
        "assert all(type(m.__loader__).__name__ == 'zipimporter' for m in mods), [m.__loader__ for m in mods]\n"
        "print(e.digest(e.engine_sources(mods)))\n" % (repo_engine_files(),))
    out = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": str(payload)},
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == engine.digest(engine.engine_sources(module.ENGINE))


def test_digest_depends_on_names_and_contents():
    base = engine.digest({"_a.py": b"x", "_b.py": b"y"})
    assert base == engine.digest({"_b.py": b"y", "_a.py": b"x"})
    assert base != engine.digest({"_a.py": b"y", "_b.py": b"x"})
    assert base != engine.digest({"_a.py": b"x", "_c.py": b"y"})


# -- ensure(): install, idempotence, check mode, diff ----------------------------------------------------

def test_first_install_writes_the_whole_tree(tmp_path, sources):
    lib = tmp_path / "lib"
    result = ensure(lib, sources)
    assert result["changed"] is True
    assert result["engine_dir"] == str(lib / ENGINE_DIR)
    assert set(a["action"] for a in result["files"]) == {"added"}
    assert len(result["files"]) == 2 * len(engine.PACKAGE_DIRS) + len(sources)
    found = tree(lib)
    for package in engine.PACKAGE_DIRS:
        assert found[package] == ("dir", 0o755, None)
        assert found[package + "/__init__.py"] == ("file", 0o644, b"")
    for name, content in sources.items():
        assert found[ENGINE_DIR + "/" + name] == ("file", 0o644, content)
    assert not [p for p in found if p.endswith(".gpuops-tmp")]
    assert ENGINE_DIR + "/_module.py" not in found
    assert result["engine"] == {"sha256": engine.digest(sources), "files": sorted(sources)}
    assert ENGINE_DIR + "/_mig.py: file 0644" in result["diff"]["after"]
    assert result["diff"]["before"] == ""


def test_second_install_changes_nothing(tmp_path, sources):
    lib = tmp_path / "lib"
    ensure(lib, sources)
    before = {p: os.stat(os.path.join(str(lib), p)).st_mtime_ns for p in tree(lib)}
    result = ensure(lib, sources)
    assert result["changed"] is False and result["files"] == []
    assert result["diff"]["before"] == result["diff"]["after"] == ""
    assert {p: os.stat(os.path.join(str(lib), p)).st_mtime_ns for p in tree(lib)} == before


def test_check_mode_reports_and_writes_nothing(tmp_path, sources):
    lib = tmp_path / "lib"
    result = ensure(lib, sources, check_mode=True)
    assert result["changed"] is True and len(result["files"]) == 2 * len(engine.PACKAGE_DIRS) + len(sources)
    assert not lib.exists()
    ensure(lib, sources)
    (lib / ENGINE_DIR / "_mig.py").write_bytes(b"# old\n")
    (lib / ENGINE_DIR / "_gone.py").write_bytes(b"# stale\n")
    snapshot = tree(lib)
    result = ensure(lib, sources, check_mode=True)
    assert result["files"] == [{"path": ENGINE_DIR + "/_mig.py", "action": "updated"},
                               {"path": ENGINE_DIR + "/_gone.py", "action": "removed"}]
    assert tree(lib) == snapshot


def test_changed_files_are_rewritten_and_stale_ones_removed(tmp_path, sources):
    lib = tmp_path / "lib"
    ensure(lib, sources)
    engine_dir = lib / ENGINE_DIR
    (engine_dir / "_mig.py").write_bytes(b"# an older engine\n")
    (engine_dir / "_nvml.py").chmod(0o600)
    (engine_dir / "_retired.py").write_bytes(b"# no longer part of the engine\n")
    (engine_dir / "_module.py").write_bytes(b"from ansible.module_utils.basic import AnsibleModule\n")
    (engine_dir / "__pycache__").mkdir()
    (engine_dir / "__pycache__" / "_retired.cpython-311.pyc").write_bytes(b"")
    (engine_dir / "__pycache__" / "_mig.cpython-311.pyc").write_bytes(b"")
    (engine_dir / "helper_notes.txt").write_text("not ours\n")
    os.chmod(str(lib / "ansible_collections"), 0o700)
    result = ensure(lib, sources)
    assert result["changed"] is True
    assert sorted((a["path"], a["action"]) for a in result["files"]) == [
        ("ansible_collections", "attributes"),
        (ENGINE_DIR + "/_mig.py", "updated"),
        (ENGINE_DIR + "/_module.py", "removed"),
        (ENGINE_DIR + "/_nvml.py", "attributes"),
        (ENGINE_DIR + "/_retired.py", "removed"),
    ]
    found = tree(lib)
    assert found[ENGINE_DIR + "/_mig.py"] == ("file", 0o644, sources["_mig.py"])
    assert found[ENGINE_DIR + "/_nvml.py"] == ("file", 0o644, sources["_nvml.py"])
    assert found["ansible_collections"][1] == 0o755
    assert ENGINE_DIR + "/_retired.py" not in found
    assert ENGINE_DIR + "/__pycache__/_retired.cpython-311.pyc" not in found
    assert ENGINE_DIR + "/__pycache__/_mig.cpython-311.pyc" in found
    assert ENGINE_DIR + "/helper_notes.txt" in found
    diff = result["diff"]
    assert ENGINE_DIR + "/_retired.py: file 0644" in diff["before"] and "_retired.py" not in diff["after"]
    assert ENGINE_DIR + "/_nvml.py: file 0600" in diff["before"]
    assert ENGINE_DIR + "/_nvml.py: file 0644" in diff["after"]
    assert ensure(lib, sources)["changed"] is False


def test_a_symlink_in_place_of_an_engine_file_is_replaced(tmp_path, sources):
    lib = tmp_path / "lib"
    ensure(lib, sources)
    target = tmp_path / "elsewhere.py"
    target.write_bytes(b"# somebody else's\n")
    (lib / ENGINE_DIR / "_host.py").unlink()
    (lib / ENGINE_DIR / "_host.py").symlink_to(target)
    result = ensure(lib, sources)
    assert result["files"] == [{"path": ENGINE_DIR + "/_host.py", "action": "updated"}]
    assert not (lib / ENGINE_DIR / "_host.py").is_symlink()
    assert target.read_bytes() == b"# somebody else's\n"


def test_installed_engine_imports_without_ansible(tmp_path, sources):
    """What the helpers do: lib_dir on sys.path, no Ansible anywhere (-S: no site-packages)."""
    lib = tmp_path / "lib"
    ensure(lib, sources)
    names = [n[:-3] for n in sorted(sources)]
    code = (
        "import importlib, sys\n"
        "sys.path.insert(0, %r)\n"
        "for name in %r:\n"
        "    importlib.import_module('ansible_collections.gpuops.nvidia.plugins.module_utils.' + name)\n"
        "assert not [m for m in sys.modules if m == 'ansible' or m.startswith('ansible.')]\n"
        "print('ok')\n" % (str(lib), names))
    out = subprocess.run([sys.executable, "-S", "-c", code], env={}, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- failures ----------------------------------------------------------------------------------------------

def test_a_file_where_a_package_directory_goes_fails_before_writing(tmp_path, sources):
    lib = tmp_path / "lib"
    (lib / "ansible_collections" / "gpuops").mkdir(parents=True)
    (lib / "ansible_collections" / "gpuops" / "nvidia").write_text("a file\n")
    with pytest.raises(GpuopsError) as failure:
        ensure(lib, sources)
    assert failure.value.kind == "directory"
    assert "is not a directory" in failure.value.message
    assert sorted(tree(lib)) == ["ansible_collections", "ansible_collections/gpuops",
                                 "ansible_collections/gpuops/nvidia"]


def test_a_directory_where_an_engine_file_goes_fails(tmp_path, sources):
    lib = tmp_path / "lib"
    (lib / ENGINE_DIR / "_mig.py").mkdir(parents=True)
    with pytest.raises(GpuopsError) as failure:
        ensure(lib, sources)
    assert failure.value.kind == "directory"


def test_relative_lib_dir_is_refused(sources):
    with pytest.raises(GpuopsError) as failure:
        engine.ensure({"lib_dir": "relative/dir"}, sources)
    assert failure.value.kind == "invalid_argument"


def test_an_incomplete_engine_is_refused(tmp_path):
    with pytest.raises(GpuopsError) as failure:
        ensure(tmp_path / "lib", {"_mig.py": b"# only me\n"})
    assert failure.value.kind == "engine_source"
    assert not (tmp_path / "lib").exists()


def test_a_write_error_is_one_failure(tmp_path, sources, monkeypatch):
    def denied(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(engine.os, "mkdir", denied)
    with pytest.raises(GpuopsError) as failure:
        ensure(tmp_path / "lib", sources)
    assert failure.value.kind == "no_permission"
    assert "become" in failure.value.message


# -- the module, through main() ----------------------------------------------------------------------------

def test_module_check_mode_and_diff(run, tmp_path):
    lib = tmp_path / "lib"
    result = run(module, {"lib_dir": str(lib)}, check_mode=True, diff=True)
    assert not result.failed, result
    assert result["changed"] is True and not lib.exists()
    assert {"path": ENGINE_DIR + "/_mig.py", "action": "added"} in result["files"]
    assert ENGINE_DIR + "/_mps.py: file 0644 0:0" in result["diff"]["after"]
    assert result["engine"]["files"] == repo_engine_files()
    assert "diff" not in run(module, {"lib_dir": str(lib)}, check_mode=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the module installs root-owned files")
def test_module_installs_then_changes_nothing(run, tmp_path):
    lib = tmp_path / "lib"
    first = run(module, {"lib_dir": str(lib)})
    assert first["changed"] is True, first
    for name in repo_engine_files():
        with open(str(lib / ENGINE_DIR / name), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == hashlib.sha256(
                open(os.path.join(MODULE_UTILS, name), "rb").read()).hexdigest()
    st = os.stat(str(lib / ENGINE_DIR / "_mig.py"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    second = run(module, {"lib_dir": str(lib)})
    assert second["changed"] is False and second["files"] == []
    assert second["engine"]["sha256"] == first["engine"]["sha256"]


def test_module_reports_a_failure(run, tmp_path):
    (tmp_path / "lib").write_text("a file where lib_dir should be\n")
    result = run(module, {"lib_dir": str(tmp_path / "lib" / "sub")})
    assert result.failed and result["error_kind"] in ("io_error", "directory", "no_permission"), result
