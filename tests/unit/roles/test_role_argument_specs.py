"""Every role's meta/argument_specs.yml documents every variable a user can set, with the defaults the role uses.

* each variable of defaults/main.yml is an option of the role's ``main`` entry point, and the option's default (or
  its absence: null) is the value in defaults/main.yml;
* a variable with the role's prefix that the role's tasks, handlers or templates read with ``| default(...)``
  (set by users, without a line in defaults/main.yml) is documented too, unless the role sets it itself
  (``register``, ``set_fact``, vars/);
* a default listed in ``choices`` is one of them;
* the playbooks read role variables with their own ``| default(...)`` (the GPU report compares a node with what the
  roles would do, and playbooks/vars/switches.yml decides which roles run): a literal default there is the role's;
* every ``gpuops_*`` variable a playbook reads with ``| default(...)`` is named in a comment under playbooks/.
"""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ROLES = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(ROOT, "roles", "*", "meta")))
PLAYBOOKS = os.path.join(ROOT, "playbooks")
# Variables internal to a playbook (play vars, registered results): not for users.
PLAYBOOK_INTERNAL = ("gpuops_mr_", "gpuops_report_mig", "gpuops_report_mps", "gpuops_report_gpu_info",
                     "gpuops_report_nvshare", "gpuops_report_node", "gpuops_report_directory",
                     "gpuops_report_heading", "gpuops_report_generated", "gpuops_report_missing",
                     "gpuops_report_desired", "gpuops_report_found", "gpuops_report_as_text")


def load(path):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def role_defaults(role):
    return load(os.path.join(ROOT, "roles", role, "defaults", "main.yml")) or {}


def role_options(role):
    specs = load(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml"))
    assert specs and "main" in specs.get("argument_specs", {}), "roles/%s/meta/argument_specs.yml: no main entry point" % role
    return specs["argument_specs"]["main"].get("options") or {}


def role_vars(role):
    names = set()
    for path in glob.glob(os.path.join(ROOT, "roles", role, "vars", "*.yml")):
        names.update(load(path) or {})
    return names


def tasks_of(node):
    """Every task dict in a tasks/handlers file, blocks included."""
    if isinstance(node, list):
        for item in node:
            yield from tasks_of(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always"):
            if key in node:
                yield from tasks_of(node[key])


def names_set_by_the_role(role):
    """Variables the role sets itself: registered results, set_fact keys, loop variables."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "roles", role, "tasks", "*.yml")) + \
            glob.glob(os.path.join(ROOT, "roles", role, "handlers", "*.yml")):
        for task in tasks_of(load(path) or []):
            if isinstance(task.get("register"), str):
                names.add(task["register"])
            for key in ("ansible.builtin.set_fact", "set_fact"):
                if isinstance(task.get(key), dict):
                    names.update(task[key])
            loop_var = (task.get("loop_control") or {}).get("loop_var")
            if loop_var:
                names.add(loop_var)
    return names


def role_sources(role):
    for sub in ("tasks", "handlers", "templates"):
        for path in sorted(glob.glob(os.path.join(ROOT, "roles", role, sub, "**", "*"), recursive=True)):
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    yield os.path.relpath(path, ROOT), handle.read()


def test_every_role_has_an_argument_spec():
    assert ROLES, "no roles found"
    for role in ROLES:
        assert os.path.exists(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")), role


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_documented(role):
    options = role_options(role)
    missing = sorted(set(role_defaults(role)) - set(options))
    assert not missing, "roles/%s/defaults/main.yml: not in meta/argument_specs.yml: %s" % (role, ", ".join(missing))


@pytest.mark.parametrize("role", ROLES)
def test_documented_defaults_are_the_roles(role):
    defaults, options = role_defaults(role), role_options(role)
    wrong = []
    for name, spec in sorted(options.items()):
        documented = spec.get("default")
        if name in defaults and defaults[name] != documented:
            wrong.append("%s: argument_specs says %r, defaults/main.yml has %r" % (name, documented, defaults[name]))
        elif name not in defaults and documented is not None:
            wrong.append("%s: argument_specs says %r, defaults/main.yml has no value" % (name, documented))
    assert not wrong, "roles/%s:\n  %s" % (role, "\n  ".join(wrong))


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_among_the_choices(role):
    wrong = []
    for name, spec in sorted(role_options(role).items()):
        if "choices" in spec and spec.get("default") is not None and spec["default"] not in spec["choices"]:
            wrong.append("%s: default %r not in choices %r" % (name, spec["default"], spec["choices"]))
    assert not wrong, "roles/%s:\n  %s" % (role, "\n  ".join(wrong))


@pytest.mark.parametrize("role", ROLES)
def test_variables_read_with_a_default_are_documented(role):
    known = set(role_options(role)) | set(role_defaults(role)) | role_vars(role) | names_set_by_the_role(role)
    pattern = re.compile(r"(?<![\w.])(%s_\w+)\s*\|\s*default\b" % re.escape(role))
    undocumented = set()
    for path, text in role_sources(role):
        for name in pattern.findall(text):
            if name not in known:
                undocumented.add("%s (%s)" % (name, path))
    assert not undocumented, "roles/%s reads, with | default, variables its argument spec lacks: %s" % (
        role, ", ".join(sorted(undocumented)))


def jinja_literal(text):
    """A Jinja literal as Python (None when it is not one: a variable, a filter, an expression)."""
    text = text.strip()
    python = re.sub(r"\b(none|None)\b", "None", text)
    python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", python))
    try:
        return ("literal", ast.literal_eval(python))
    except (ValueError, SyntaxError):
        return None


def default_calls(text, prefix):
    """(variable, first argument of default(...), rest) for every ``<prefix>_x | default(...)`` in text."""
    pattern = re.compile(r"(?<![\w.])(%s_\w+)\s*\|\s*default\(" % re.escape(prefix))
    for match in pattern.finditer(text):
        depth, start, args = 1, match.end(), []
        pos, current = start, start
        while pos < len(text) and depth:
            char = text[pos]
            if char in "([{":
                depth += 1
            elif char in ")]}":
                depth -= 1
            elif char == "," and depth == 1:
                args.append(text[current:pos])
                current = pos + 1
            pos += 1
        args.append(text[current:pos - 1])
        yield match.group(1), args[0], args[1:]


def playbook_files():
    return sorted(glob.glob(os.path.join(PLAYBOOKS, "**", "*.yml"), recursive=True))


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.parametrize("role", [r for r in ROLES if r != "engine"])
def test_playbooks_read_role_variables_with_the_roles_defaults(role):
    defaults = role_defaults(role)
    wrong = []
    for path in playbook_files():
        for name, first, rest in default_calls(read(path), role):
            literal = jinja_literal(first)
            if literal is None or name not in defaults:
                continue
            value = literal[1]
            # default(x, true) also replaces empty values: a null role default reads as x there.
            if rest and rest[0].strip() in ("true", "True") and defaults[name] in (None, "", [], {}):
                continue
            if value != defaults[name]:
                wrong.append("%s: %s | default(%s), the role's default is %r" % (
                    os.path.relpath(path, ROOT), name, first.strip(), defaults[name]))
    assert not wrong, "\n".join(wrong)


def test_playbook_variables_are_documented_under_playbooks():
    comments = "\n".join(line for path in playbook_files() for line in read(path).splitlines()
                         if line.lstrip().startswith("#"))
    pattern = re.compile(r"(?<![\w.])(gpuops_\w+)\s*\|\s*default\b")
    undocumented = set()
    for path in playbook_files():
        for name in pattern.findall(read(path)):
            if name.startswith(PLAYBOOK_INTERNAL):
                continue
            if not re.search(r"(?<!\w)%s(?!\w)" % re.escape(name), comments):
                undocumented.add("%s (%s)" % (name, os.path.relpath(path, ROOT)))
    assert not undocumented, "playbook variables not named in any comment under playbooks/: %s" % (
        ", ".join(sorted(undocumented)))
