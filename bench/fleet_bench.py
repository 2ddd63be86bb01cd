"""Fleet benchmark for playbooks/site.yml on simulated GPU nodes (issue #16). Not a test.

Boots N systemd-nspawn nodes (tests/nodes/gpuops_node.py) with 8 simulated H100 80GB each, prepares them
(tests/nodes/prepare.yml), puts them in inventory/example's slurm_gpu_nodes group (what `make demo` converges,
driver off: playbooks/vars/demo.yml) and measures, per Ansible config:

  * first converge and idempotent converge: wall time, tasks and module runs per host (bench callback),
    controller CPU seconds (user+sys of ansible-playbook and its ssh children), bytes moved over SSH (both
    directions, counted by a TCP relay in this process that the inventory points at);
  * reboot: from systemd starting gpuops-mig-apply.service until the MIG layout is applied and every
    gpuops-mps@ unit is active (timestamps from the node's systemd), and from the boot command.

Every node created is destroyed at the end, also on failure. Results: JSON lines in --out.

  .venv/bin/python bench/fleet_bench.py --nodes 1,4,8 --reps 3 --configs baseline,project --out .build/bench/results.jsonl
"""

import argparse
import asyncio
import concurrent.futures
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = [sys.executable, os.path.join(ROOT, "tests/nodes/gpuops_node.py")]
BIN = os.path.join(ROOT, ".venv/bin")
CONFIGS = {"baseline": os.path.join(ROOT, "bench/cfg/baseline.cfg"), "project": os.path.join(ROOT, "ansible.cfg")}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- byte-counting TCP relay

class Relay:
    """127.0.0.1:<listen> -> 127.0.0.1:<target> for each node; counts bytes in both directions."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.sent = 0  # controller -> node
        self.received = 0  # node -> controller
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def reset(self):
        self.sent = self.received = 0

    async def _pipe(self, reader, writer, up):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if up:
                    self.sent += len(data)
                else:
                    self.received += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _serve(self, target):
        async def handle(r, w):
            try:
                tr, tw = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                w.close()
                return
            await asyncio.gather(self._pipe(r, tw, True), self._pipe(tr, w, False))
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return server.sockets[0].getsockname()[1]

    def add(self, target):
        return asyncio.run_coroutine_threadsafe(self._serve(target), self.loop).result()


# ---------------------------------------------------------------- nodes

def node_cmd(*args, timeout=900):
    p = subprocess.run(NODE + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                       check=False)
    if p.returncode:
        raise RuntimeError(f"gpuops_node.py {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def create_nodes(workdir, n, parallel=4):
    dirs = [os.path.join(workdir, f"bench-node-{i + 1}") for i in range(n)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
        futs = [ex.submit(node_cmd, "create", "--dir", d, "--name", os.path.basename(d), "--release", "bookworm")
                for d in dirs]
        for f in futs:
            f.result()
    log(f"{n} node(s) booted in {time.monotonic() - t0:.0f}s")
    return dirs


def destroy_nodes(dirs):
    for d in dirs:
        if os.path.exists(d):
            try:
                node_cmd("destroy", "--dir", d, timeout=300)
            except Exception as exc:  # keep destroying the others
                log(f"destroy {d}: {exc}")


def inventory_lines(dirs, relay=None):
    lines = ["[slurm_gpu_nodes]"]
    for d in dirs:
        line = node_cmd("inventory", "--dir", d).strip()
        if relay is not None:
            port = int(re.search(r"ansible_port=(\d+)", line).group(1))
            line = re.sub(r"ansible_port=\d+", f"ansible_port={relay.add(port)}", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def playbook(args, env_extra, log_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build/collections"),
               ANSIBLE_NOCOLOR="1", **env_extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with open(log_path, "w") as f:
        rc = subprocess.run([os.path.join(BIN, "ansible-playbook")] + args, cwd=ROOT, env=env, check=False,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, wall, cpu


def converge(workdir, inv, config, relay, tag):
    out = os.path.join(workdir, f"{tag}.json")
    env = {"ANSIBLE_CONFIG": CONFIGS[config],
           "ANSIBLE_CALLBACK_PLUGINS": os.path.join(ROOT, "bench/callback_plugins"),
           "ANSIBLE_CALLBACKS_ENABLED": "gpuops_bench", "GPUOPS_BENCH_OUT": out,
           # a fresh ControlPath per run: no master connection survives from the previous run
           "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(workdir, f"cp-{tag}")}
    relay.reset()
    rc, wall, cpu = playbook(["-i", "inventory/example", "-i", inv, "--limit", "slurm_gpu_nodes:&bench",
                              "-e", "@playbooks/vars/demo.yml", "playbooks/site.yml"],
                             env, os.path.join(workdir, f"{tag}.log"))
    if rc:
        raise RuntimeError(f"site.yml failed (rc={rc}), log: {workdir}/{tag}.log")
    stats = json.load(open(out))
    hosts = stats["hosts"]
    any_h = next(iter(hosts.values()))
    slow = sorted(stats["tasks"], key=lambda t: -t["s"])[:8]
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "bytes_sent": relay.sent, "bytes_received": relay.received,
            "tasks_per_host": any_h["tasks"], "skipped_per_host": any_h["skipped"],
            "module_runs_per_host": any_h["module_runs"], "modules": any_h["modules"],
            "changed": max(h["changed"] for h in hosts.values()),
            "changed_tasks": any_h["changed_tasks"], "slowest_tasks": slow}


def ssh(d, cmd):
    argv = json.loads(node_cmd("ssh-command", "--dir", d))["ssh"]
    return subprocess.run(argv + [cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
                          timeout=60).stdout


READY = r"""
set -u
systemctl is-system-running --wait >/dev/null 2>&1 || true
for i in $(seq 600); do  # up to 60 s for every gpuops-mps@ unit to be active
    systemctl list-units --all --plain --no-legend 'gpuops-mps@*.service' | awk '$3 != "active" {bad=1} END {exit bad}' \
        && break
    sleep 0.1
done
systemctl show gpuops-mig-apply.service -p InactiveExitTimestampMonotonic -p ExecMainExitTimestampMonotonic \
    -p Result | sed 's/^/mig /'
for u in $(systemctl list-units --all --plain --no-legend 'gpuops-mps@*.service' | awk '{print $1}'); do
    systemctl show "$u" -p ActiveState -p ActiveEnterTimestampMonotonic | sed "s/^/mps $u /"
done
python3 - <<'PY'
import pynvml as n
n.nvmlInit()
c = 0
for i in range(n.nvmlDeviceGetCount()):
    h = n.nvmlDeviceGetHandleByIndex(i)
    try:
        m = n.nvmlDeviceGetMaxMigDeviceCount(h)
    except n.NVMLError:
        continue
    for j in range(m):
        try:
            n.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
            c += 1
        except n.NVMLError:
            pass
print(f"migdev={c}")
PY
"""


def reboot_once(d):
    t0 = time.monotonic()
    node_cmd("reboot", "--dir", d)
    booted = time.monotonic()
    out = ssh(d, READY)
    polled = time.monotonic()
    mig = dict(re.findall(r"^mig (\w+)=(.*)$", out, re.M))
    mps = {}
    for unit, key, value in re.findall(r"^mps (\S+) (\w+)=(.*)$", out, re.M):
        mps.setdefault(unit, {})[key] = value
    migdev = int(re.search(r"^migdev=(\d+)", out, re.M).group(1))
    start, mig_done = int(mig["InactiveExitTimestampMonotonic"]), int(mig["ExecMainExitTimestampMonotonic"])
    ok = mig.get("Result") == "success" and mps and all(u.get("ActiveState") == "active" for u in mps.values())
    last = max([mig_done] + [int(u.get("ActiveEnterTimestampMonotonic", 0)) for u in mps.values()])
    return {"ok": bool(ok), "mig_result": mig.get("Result"), "mps_units": len(mps), "mig_devices": migdev,
            "mig_apply_s": round((mig_done - start) / 1e6, 3),
            "unit_start_to_ready_s": round((last - start) / 1e6, 3),
            "reboot_cmd_s": round(booted - t0, 2), "reboot_cmd_to_checked_s": round(polled - t0, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,4,8")
    ap.add_argument("--reps", type=int, default=3, help="idempotent converges per config and N (median)")
    ap.add_argument("--reboots", type=int, default=3, help="reboots of the first node (N=1 only)")
    ap.add_argument("--configs", default="baseline,project")
    ap.add_argument("--workdir", default=os.path.join(ROOT, ".build/bench"))
    ap.add_argument("--out", default=os.path.join(ROOT, ".build/bench/results.jsonl"))
    ap.add_argument("--gpus", default="h100-80gb:8")
    ap.add_argument("--skip-first", action="store_true", help="do not record the first converge")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    relay = Relay()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, check=False,
                            text=True).stdout.strip()
    for n in [int(x) for x in a.nodes.split(",")]:
        wd = os.path.join(a.workdir, f"n{n}")
        os.makedirs(wd, exist_ok=True)
        dirs = []
        try:
            dirs = create_nodes(wd, n)
            plain = os.path.join(wd, "nodes.ini")
            open(plain, "w").write(inventory_lines(dirs))
            rc, wall, _unused = playbook(["-i", plain, "tests/nodes/prepare.yml", "-e", f"gpuops_gpus={a.gpus}"],
                                         {"ANSIBLE_CONFIG": CONFIGS["project"]}, os.path.join(wd, "prepare.log"))
            if rc:
                raise RuntimeError(f"prepare failed: {wd}/prepare.log")
            log(f"N={n}: prepared in {wall:.0f}s")
            inv = os.path.join(wd, "relay.ini")
            open(inv, "w").write(inventory_lines(dirs, relay).replace("[slurm_gpu_nodes]", "[bench]") +
                                 "[slurm_gpu_nodes:children]\nbench\n")
            configs = a.configs.split(",")
            if a.skip_first:  # converge once, unmeasured, so that every measured run is idempotent
                converge(wd, inv, configs[0], relay, "first-unmeasured")
            else:
                for cfg in configs:  # the first converge changes the nodes: only the first config sees it
                    r = converge(wd, inv, cfg, relay, f"{cfg}-first")
                    rec = {"n": n, "config": cfg, "kind": "first", "commit": commit, "load": os.getloadavg()[0], **r}
                    log(f"N={n} {cfg} first: {r['wall_s']}s changed={r['changed']}")
                    with open(a.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    break
            # interleaved (A B A B ...), so that the other engineers' load hits every config alike
            for k in range(a.reps):
                for cfg in configs:
                    r = converge(wd, inv, cfg, relay, f"{cfg}-idem{k}")
                    rec = {"n": n, "config": cfg, "kind": "idempotent", "rep": k, "commit": commit,
                           "load": os.getloadavg()[0], **r}
                    log(f"N={n} {cfg} idempotent #{k}: {r['wall_s']}s cpu={r['cpu_s']}s changed={r['changed']} "
                        f"load={rec['load']:.1f}")
                    with open(a.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if n == 1:
                for k in range(a.reboots):
                    r = reboot_once(dirs[0])
                    log(f"reboot #{k}: {r}")
                    with open(a.out, "a") as f:
                        f.write(json.dumps({"n": 1, "kind": "reboot", "rep": k, "commit": commit, **r}) + "\n")
        finally:
            destroy_nodes(dirs)
            log(f"N={n}: nodes destroyed")


if __name__ == "__main__":
    main()
