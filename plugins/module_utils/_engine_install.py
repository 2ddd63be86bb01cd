# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Install the engine on the node in one step: the tree the roles' helpers import. Plain Python: no Ansible imports.

The engine is every `plugins/module_utils/_*.py` of the collection except `_module.py` (the Ansible adapter; the
helpers on the node have no Ansible). The module `nvidia_engine` imports all of them, so AnsiballZ ships them in
its payload; `engine_sources()` reads each one's source back from wherever it was imported from (the payload's zip
on the node, the checkout in tests), and `ensure()` makes

    <lib_dir>/ansible_collections/gpuops/nvidia/plugins/module_utils/<file>

hold exactly that: package directories 0755 with an empty `__init__.py` each, files 0644, owned by `uid:gid`,
written atomically and only when their content differs; `_*.py` files in that directory which are no longer part
of the engine (and their `__pycache__` entries) are removed. In check mode nothing is written.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import os
import stat
import tempfile

from ansible_collections.gpuops.nvidia.plugins.module_utils._contract import GpuopsError, argument_spec

LIB_DIR = "/usr/local/lib/gpuops-nvidia"
PACKAGE = "ansible_collections.gpuops.nvidia.plugins.module_utils"
# Outermost first; each gets an empty __init__.py so that a plain `import` finds the engine.
PACKAGE_DIRS = tuple("/".join(PACKAGE.split(".")[:n]) for n in range(1, len(PACKAGE.split(".")) + 1))
ENGINE_DIR = PACKAGE_DIRS[-1]
ADAPTER = "_module.py"
DIR_MODE = 0o755
FILE_MODE = 0o644

ENGINE_SPEC = argument_spec({
    "lib_dir": {"type": "path", "default": LIB_DIR},
})


def is_engine_file(filename):
    """Whether a module_utils file name belongs to the engine: `_*.py` (not `__init__.py`), the Ansible adapter
    excepted."""
    return (filename.startswith("_") and not filename.startswith("__") and filename.endswith(".py")
            and filename != ADAPTER and "/" not in filename)


def source_of(module):
    """The bytes of an imported module's source file, read through its loader: from the AnsiballZ payload's zip
    (zipimporter) on the node, from the file system (SourceFileLoader) in tests."""
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or getattr(module, "__file__", None)
    loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
    if not origin or not origin.endswith(".py"):
        raise GpuopsError("cannot find the source of engine module %s (origin %r)" % (module.__name__, origin),
                          kind="engine_source")
    try:
        if loader is not None and hasattr(loader, "get_data"):
            return loader.get_data(origin)
        with open(origin, "rb") as handle:
            return handle.read()
    except (IOError, OSError) as exc:
        raise GpuopsError("cannot read the source of engine module %s from %s: %s"
                          % (module.__name__, origin, getattr(exc, "strerror", None) or exc), kind="engine_source")


def engine_sources(modules):
    """{file name: source bytes} of the engine modules (imported module objects of PACKAGE)."""
    sources = {}
    for module in modules:
        package, _dot, name = module.__name__.rpartition(".")
        filename = name + ".py"
        if package != PACKAGE or not is_engine_file(filename):
            raise GpuopsError("%s is not an engine module of %s" % (module.__name__, PACKAGE), kind="engine_source")
        sources[filename] = source_of(module)
    return sources


def digest(sources):
    """sha256 over the engine's file names and contents, in name order: the same engine gives the same hash."""
    sha = hashlib.sha256()
    for name in sorted(sources):
        sha.update(name.encode("utf-8") + b"\0")
        sha.update(hashlib.sha256(sources[name]).hexdigest().encode("ascii") + b"\n")
    return sha.hexdigest()


def desired_tree(sources):
    """[(relative path, kind, content)]: the package directories, their __init__.py files, the engine files."""
    tree = []
    for package in PACKAGE_DIRS:
        tree.append((package, "directory", None))
        tree.append((package + "/__init__.py", "file", b""))
    for name in sorted(sources):
        tree.append((ENGINE_DIR + "/" + name, "file", sources[name]))
    return tree


def _lstat(path):
    try:
        return os.lstat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _describe(st, content):
    """One line of the diff listing for an existing path: mode, owner and (files) content hash."""
    if st is None:
        return None
    mode = "%04o %d:%d" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        return "directory " + mode
    if content is None:
        return "%s %s" % ("symlink" if stat.S_ISLNK(st.st_mode) else "special file", mode)
    return "file %s sha256:%s" % (mode, hashlib.sha256(content).hexdigest()[:16])


def plan(lib_dir, sources, uid=0, gid=0):
    """What ensure() would do, without changing anything: a list of
    {path (relative to lib_dir), action (added, updated, attributes, removed), kind, before, after}."""
    actions = []
    for rel, kind, content in desired_tree(sources):
        path = os.path.join(lib_dir, rel)
        st = _lstat(path)
        mode = DIR_MODE if kind == "directory" else FILE_MODE
        after = ("directory %04o %d:%d" % (mode, uid, gid) if kind == "directory"
                 else "file %04o %d:%d sha256:%s" % (mode, uid, gid, hashlib.sha256(content).hexdigest()[:16]))
        if st is None:
            actions.append({"path": rel, "action": "added", "kind": kind, "before": None, "after": after})
            continue
        if kind == "directory":
            if not stat.S_ISDIR(st.st_mode):
                raise GpuopsError("%s exists and is not a directory: the engine's package directory cannot go there"
                                  % path, kind="directory")
            before = _describe(st, None)
        elif stat.S_ISDIR(st.st_mode):
            raise GpuopsError("%s is a directory: the engine file cannot be written there" % path, kind="directory")
        else:
            current = _read(path) if stat.S_ISREG(st.st_mode) else None
            before = _describe(st, current)
            if current != content:
                actions.append({"path": rel, "action": "updated", "kind": kind, "before": before, "after": after})
                continue
        if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (mode, uid, gid):
            actions.append({"path": rel, "action": "attributes", "kind": kind, "before": before, "after": after})
    engine_dir = os.path.join(lib_dir, ENGINE_DIR)
    for name in sorted(os.listdir(engine_dir)) if os.path.isdir(engine_dir) else []:
        if name in sources or not (is_engine_file(name) or name == ADAPTER):
            continue
        path = os.path.join(engine_dir, name)
        st = _lstat(path)
        if st is None or stat.S_ISDIR(st.st_mode):
            continue
        actions.append({"path": ENGINE_DIR + "/" + name, "action": "removed", "kind": "file",
                        "before": _describe(st, _read(path) if stat.S_ISREG(st.st_mode) else None), "after": None})
    return actions


def _write_atomic(path, content, uid, gid):
    """Write `content` to a temporary file next to `path` (mode, owner, fsync), then rename it over `path`."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=".gpuops-tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fchown(handle.fileno(), uid, gid)
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _remove_stale(path):
    os.unlink(path)
    directory, name = os.path.split(path)
    cache = os.path.join(directory, "__pycache__")
    stem = name[:-len(".py")] + "."
    for cached in sorted(os.listdir(cache)) if os.path.isdir(cache) else []:
        if cached.startswith(stem) and cached.endswith(".pyc"):
            os.unlink(os.path.join(cache, cached))


def apply(lib_dir, sources, actions, uid=0, gid=0):
    """Carry out plan()'s actions, in order (directories before what they hold)."""
    contents = dict((rel, content) for rel, _kind, content in desired_tree(sources))
    if any(a["action"] == "added" for a in actions) and not os.path.isdir(lib_dir):
        os.makedirs(lib_dir, DIR_MODE)
    for action in actions:
        path = os.path.join(lib_dir, action["path"])
        if action["action"] == "removed":
            _remove_stale(path)
        elif action["kind"] == "directory":
            if action["action"] == "added":
                os.mkdir(path, DIR_MODE)
            os.chmod(path, DIR_MODE)
            os.chown(path, uid, gid)
        elif action["action"] == "attributes":
            os.chmod(path, FILE_MODE)
            os.chown(path, uid, gid)
        else:
            _write_atomic(path, contents[action["path"]], uid, gid)


def _listing(actions, side):
    return "".join("%s: %s\n" % (a["path"], a[side]) for a in sorted(actions, key=lambda a: a["path"]) if a[side])


def ensure(params, sources, check_mode=False, uid=0, gid=0):
    """Make `params['lib_dir']` hold the engine `sources` ({file name: bytes}); the module's result.

    `files` lists every path (relative to lib_dir) that was (check mode: would be) added, updated, removed or
    given its mode/owner back; `diff` shows those paths before and after (mode, owner, content hash).
    """
    lib_dir = params["lib_dir"]
    if not lib_dir or not os.path.isabs(lib_dir):
        raise GpuopsError("lib_dir must be an absolute path, got %r" % (lib_dir,), kind="invalid_argument")
    lib_dir = os.path.normpath(lib_dir)
    missing = sorted(set(["_contract.py", "_nvml.py"]) - set(sources))
    if missing:
        raise GpuopsError("the engine is incomplete: %s not shipped with the module" % ", ".join(missing),
                          kind="engine_source")
    try:
        actions = plan(lib_dir, sources, uid, gid)
        if actions and not check_mode:
            apply(lib_dir, sources, actions, uid, gid)
    except (IOError, OSError) as exc:
        denied = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        raise GpuopsError("cannot install the engine under %s: %s%s" % (
            lib_dir, exc, "; installing the engine needs root: use become" if denied else ""),
            kind="no_permission" if denied else "io_error")
    return {
        "changed": bool(actions),
        "lib_dir": lib_dir,
        "engine_dir": os.path.join(lib_dir, ENGINE_DIR),
        "files": [{"path": a["path"], "action": a["action"]} for a in actions],
        "engine": {"sha256": digest(sources), "files": sorted(sources)},
        "diff": {"before_header": lib_dir + " (engine)", "after_header": lib_dir + " (engine)",
                 "before": _listing(actions, "before"), "after": _listing(actions, "after")},
    }
