# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/ and inventory/example through the real ansible-* commands: the example inventory's shape, which
parts of site.yml each kind of node gets, and that a part switched off never needs its role."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BIN = os.path.dirname(sys.executable)
INVENTORY = os.path.join(ROOT, "inventory", "example")
SWITCHES = ["driver", "persistenced", "mig", "mps", "nvshare"]


def ansible(command, *args, **kwargs):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_COLLECTIONS_PATH=kwargs.pop("collections", os.path.join(ROOT, ".build", "collections")))
    env.pop("ANSIBLE_CONFIG", None)
    proc = subprocess.run([os.path.join(BIN, command)] + list(args), cwd=kwargs.pop("cwd", ROOT), env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    return proc


def test_the_example_inventory_has_the_three_kinds_of_node():
    proc = ansible("ansible-inventory", "-i", INVENTORY, "--graph")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "@all:",
        "  |--@ungrouped:",
        "  |--@gpu_nodes:",
        "  |  |--@slurm_gpu_nodes:",
        "  |  |  |--slurm-gpu-01",
        "  |  |  |--slurm-gpu-02",
        "  |  |--@k8s_gpu_nodes:",
        "  |  |  |--k8s-gpu-01",
        "  |  |--@lab_gpu_servers:",
        "  |  |  |--lab-gpu-01",
    ]


def test_the_playbooks_pass_syntax_check_with_the_example_inventory():
    proc = ansible("ansible-playbook", "--syntax-check", "-i", INVENTORY, "playbooks/site.yml",
                   "playbooks/gpu_report.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def switches(tmp_path, *extra):
    """{host: {part: on?}} as playbooks/vars/switches.yml works them out from the example inventory."""
    out = tmp_path / "out"
    out.mkdir()
    playbook = tmp_path / "switches.yml"
    playbook.write_text(
        "- hosts: all\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  vars_files: [%s]\n"
        "  tasks:\n"
        "    - ansible.builtin.copy:\n"
        "        content: \"{{ dict(%s | zip([%s])) | to_json }}\"\n"
        "        dest: \"%s/{{ inventory_hostname }}.json\"\n"
        "        mode: '0644'\n"
        % (os.path.join(ROOT, "playbooks", "vars", "switches.yml"), repr(SWITCHES),
           ", ".join("gpuops_site_do_%s" % part for part in SWITCHES), out))
    proc = ansible("ansible-playbook", "-i", INVENTORY, str(playbook),
                   "-e", "ansible_python_interpreter=%s" % sys.executable, *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict((name[:-5], json.loads((out / name).read_text())) for name in os.listdir(str(out)))


def test_each_kind_of_node_gets_its_parts(tmp_path):
    found = switches(tmp_path)
    slurm = {"driver": True, "persistenced": True, "mig": True, "mps": True, "nvshare": False}
    assert found == {
        "slurm-gpu-01": slurm, "slurm-gpu-02": slurm,
        # MIG off (mig_mode: disabled, applied at boot too), one MPS daemon per GPU
        "k8s-gpu-01": {"driver": True, "persistenced": True, "mig": True, "mps": True, "nvshare": False},
        "lab-gpu-01": {"driver": True, "persistenced": True, "mig": True, "mps": False, "nvshare": True},
    }


def test_the_demo_switches_the_driver_off(tmp_path):
    found = switches(tmp_path, "-e", "@%s" % os.path.join(ROOT, "playbooks", "vars", "demo.yml"),
                     "--limit", "slurm-gpu-01")
    assert found == {"slurm-gpu-01": {"driver": False, "persistenced": True, "mig": True, "mps": True,
                                      "nvshare": False}}


@pytest.fixture
def collection_without_driver_and_nvshare(tmp_path):
    """The collection as it was before the driver and nvshare roles landed."""
    root = tmp_path / "collections" / "ansible_collections" / "gpuops" / "nvidia"
    (root / "roles").mkdir(parents=True)
    for name in ("galaxy.yml", "meta", "plugins", "playbooks"):
        os.symlink(os.path.join(ROOT, name), str(root / name))
    for role in ("engine", "persistenced", "mig", "mps"):
        os.symlink(os.path.join(ROOT, "roles", role), str(root / "roles" / role))
    return str(tmp_path / "collections")


def test_a_part_switched_off_never_needs_its_role(collection_without_driver_and_nvshare):
    site = os.path.join(collection_without_driver_and_nvshare, "ansible_collections/gpuops/nvidia/playbooks/site.yml")
    off = ["-e", "gpuops_site_summary=false"] + \
        [arg for part in SWITCHES for arg in ("-e", "gpuops_site_%s=false" % part)]
    proc = ansible("ansible-playbook", "--syntax-check", "-i", "localhost,", site,
                   collections=collection_without_driver_and_nvshare)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", site, *off,
                   collections=collection_without_driver_and_nvshare)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok=0 " in proc.stdout and "failed=0 " in proc.stdout
    for task in ("Install the NVIDIA driver", "Run nvshare schedulers"):
        assert "TASK [%s] ****" % task in proc.stdout
        assert proc.stdout.split("TASK [%s]" % task)[1].split("TASK [")[0].strip().endswith("skipping: [localhost]")
    # switched on, the include is reached and fails for want of the role: the switch is what kept it away
    proc = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", site,
                   *(off[:-2] + ["-e", "gpuops_site_nvshare=true"]),
                   collections=collection_without_driver_and_nvshare)
    assert proc.returncode != 0
    assert "gpuops.nvidia.nvshare" in proc.stdout + proc.stderr
