"""mig_reconfigure scenario verifier: every call the rollouts made to the scheduler stand-ins, in order across
the fleet, and the state the fleet is left in.

Rollouts: converge (2 x 3g.40gb); in the side effect, 7 x 1g.10gb previewed in check mode (no scheduler call),
run (halted at mr2-slurm by a stray GPU process) and run again once the process was gone (mr1-k8s had the
layout: no call for it).
"""

import json
import os
import re

import pytest

REASON = "gpuops.nvidia: MIG reconfiguration"
K8S_LOG = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "kubernetes", "calls.log")
K8S_STATE = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ""), "kubernetes", "kubernetes.json")
NODE_LOG = "/var/lib/gpuops-standins/calls.log"
SLURM_STATE = "/var/lib/gpuops-standins/slurm.json"
PODS = ("get pods --all-namespaces --field-selector "
        "spec.nodeName=mr1-k8s,status.phase!=Succeeded,status.phase!=Failed --output json")
JOBS = "--noheader --nodelist={0} --states=CONFIGURING,RUNNING,COMPLETING,SUSPENDED,STOPPED --format=%i %u %j %T"

K8S_OUT = [
    ("mr1-k8s", "kubectl", "get node mr1-k8s --output json"),
    ("mr1-k8s", "kubectl", "cordon mr1-k8s"),
    ("mr1-k8s", "kubectl", "annotate node mr1-k8s gpuops.nvidia/drain-reason=%s --overwrite" % REASON),
]
K8S_BACK = [
    ("mr1-k8s", "kubectl", "uncordon mr1-k8s"),
    ("mr1-k8s", "kubectl", "annotate node mr1-k8s gpuops.nvidia/drain-reason-"),
]


def slurm(node, *calls):
    words = {
        "show": ("scontrol", "--oneliner show node %s" % node),
        "drain": ("scontrol", "update nodename=%s state=drain reason=%s" % (node, REASON)),
        "squeue": ("squeue", JOBS.format(node)),
        "slurmd": ("slurmd", "start"),
        "resume": ("scontrol", "update nodename=%s state=resume" % node),
    }
    return [(node,) + words[call] for call in calls]


# The whole fleet's calls, in the order of their timestamps (a regex where the text is a module's message).
TIMELINE = (
    # converge: mr1-k8s cordoned, train-0 listed twice then gone, uncordoned; then mr2-slurm drained, job 4242
    # (whose process held the GPU) listed twice then gone, slurmd restarted on the new MIG devices, resumed;
    # then mr3-drained (drained by an admin): waited for, reconfigured, left drained
    K8S_OUT + [("mr1-k8s", "kubectl", PODS)] * 3 + K8S_BACK
    + slurm("mr2-slurm", "show", "drain", "squeue", "squeue", "squeue", "slurmd", "resume")
    + slurm("mr3-drained", "show", "squeue", "slurmd")
    # the halted rollout: serve-0 evicted by kubectl drain; mr2-slurm drained, no job, but a GPU process that
    # belongs to no job: left drained with the reason; the rollout stops before mr3-drained
    + K8S_OUT + [("mr1-k8s", "kubectl", "drain mr1-k8s --ignore-daemonsets --delete-emptydir-data --timeout=20s"),
                 ("mr1-k8s", "kubectl", PODS)] + K8S_BACK
    + slurm("mr2-slurm", "show", "drain", "squeue")
    + [("mr2-slurm", "scontrol", re.compile(
        r'update nodename=mr2-slurm state=drain reason=gpuops\.nvidia: MIG reconfiguration failed at '
        r'"Fail when the GPUs are still busy": .*compute processes run on MIG devices that must be destroyed: '
        r'7777 \(python3 stray\.py\).*'))]
    # the rollout again: mr1-k8s has the layout (no call); mr2-slurm, drained by the failed run, is not drained
    # again but resumed; mr3-drained is still the admin's
    + slurm("mr2-slurm", "show", "squeue", "slurmd", "resume")
    + slurm("mr3-drained", "show", "squeue", "slurmd")
)

READ_LAYOUT = r"""python3 - <<'EOF'
import json, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
sizes = []
for m in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
    try:
        mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, m)
    except pynvml.NVMLError:
        continue
    sizes.append(round(pynvml.nvmlDeviceGetMemoryInfo(mig).total / 2**30))
print(json.dumps({"mig": pynvml.nvmlDeviceGetMigMode(h)[0], "sizes": sorted(sizes),
                  "processes": len(pynvml.nvmlDeviceGetComputeRunningProcesses(h))}))
EOF"""


def read_calls(lines):
    calls = []
    for line in lines.splitlines():
        entry = json.loads(line)
        argv = list(entry["argv"])
        if entry["tool"] == "kubectl" and argv[:1] == ["--kubeconfig"]:
            argv = argv[2:]
        node = entry["host"] if entry["tool"] != "kubectl" else "mr1-k8s"
        calls.append((entry["t"], node, entry["tool"], " ".join(argv)))
    return calls


@pytest.fixture(scope="module")
def timeline(host):
    calls = []
    with open(K8S_LOG) as log:
        calls += read_calls(log.read())
    for name in ("mr2-slurm", "mr3-drained"):
        node = host.get_host("ansible://" + name, ansible_inventory=host.backend.ansible_inventory)
        calls += read_calls(node.file(NODE_LOG).content_string)
    return [call[1:] for call in sorted(calls)]


def test_calls_in_order_across_the_fleet(host, timeline):
    if host.backend.get_hostname() != "mr1-k8s":
        pytest.skip("the fleet's timeline is checked once, with mr1-k8s")
    for index, (got, want) in enumerate(zip(timeline, TIMELINE)):
        if isinstance(want[2], re.Pattern):
            assert got[:2] == want[:2] and want[2].fullmatch(got[2]), (index, got, want[2].pattern)
        else:
            assert got == want, (index, got, want)
    assert len(timeline) == len(TIMELINE), timeline[len(TIMELINE):] or TIMELINE[len(timeline):]


def test_every_node_has_the_last_layout(host):
    layout = json.loads(host.check_output(READ_LAYOUT))
    assert layout == {"mig": 1, "sizes": [10] * 7, "processes": 0}


def test_scheduler_state(host):
    name = host.backend.get_hostname()
    if name == "mr1-k8s":
        with open(K8S_STATE) as f:
            cluster = json.load(f)
        assert cluster["nodes"]["mr1-k8s"] == {"unschedulable": False, "annotations": {}}
        # the finished and the evicted pod are gone, the DaemonSet's stays
        assert [p["name"] for p in cluster["pods"]] == ["nvidia-device-plugin-7xk2p"]
        return
    # the stand-in's state file, not scontrol: every scontrol call is in the timeline
    node = json.loads(host.file(SLURM_STATE).content_string)["nodes"][name]
    assert node["jobs"] == []
    if name == "mr2-slurm":
        assert not node["drain"] and node["reason"] is None
    else:
        assert node["drain"] and node["reason"] == "bad fan"
    assert host.service("slurmd").is_running
