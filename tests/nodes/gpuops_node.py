#!/usr/bin/env python
"""Boot Debian nodes as ``systemd-nspawn -b`` containers for the Molecule harness and ``make demo``.

Sub-commands (all print JSON on success, a clear message and the boot-log tail on failure):

  rootfs  --release R                   build (once) and cache the Debian rootfs for R
  keypair                               create (once) the harness SSH keypair, print its paths
  wheel                                 download (once) the nvidia-ml-py wheel into the cache
  create  --dir D --name N --release R  copy the rootfs to D/root, configure it, boot it, wait for ssh
          [--apt-cache]                 ... with the cache's apt/<release>/ as the node's /var/cache/apt/archives
  boot    --dir D                       boot an already created node again (same copy, same port)
  stop    --dir D                       orderly poweroff, then kill; nothing stays running
  reboot  --dir D                       stop, apply the NVML simulator's reboot offline, boot
  destroy --dir D                       stop and remove D
  ssh-command --dir D                   the ssh argv to log into the node
  inventory --dir D                     an INI inventory line for the node (outside Molecule)
  list                                  nodes this cache knows about (running or not)
  destroy-all                           destroy every node this cache knows about (leak cleanup)
  link-collection --project P           make P/.build/collections/ansible_collections/gpuops/nvidia -> P

The cache lives in $GPUOPS_MOLECULE_CACHE (default /var/cache/gpuops-molecule).
"""

import argparse
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

DEFAULT_CACHE = "/var/cache/gpuops-molecule"
MIRROR = os.environ.get("GPUOPS_MOLECULE_MIRROR", "http://deb.debian.org/debian")
RELEASES = {"bookworm": "bookworm", "debian12": "bookworm", "12": "bookworm",
            "trixie": "trixie", "debian13": "trixie", "13": "trixie"}
PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-pip",
            "python3-apt", "iproute2", "procps", "sudo", "kmod", "ca-certificates", "less"]
# Units that make no sense (or do harm) in a container sharing the host's network namespace.
MASKED_UNITS = ["systemd-networkd.service", "systemd-networkd.socket", "systemd-resolved.service",
                "systemd-timesyncd.service", "systemd-networkd-wait-online.service",
                "systemd-firstboot.service", "getty@tty1.service", "apt-daily.timer",
                "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
                "systemd-logind.service"]
PORT_RANGE = (22200, 22999)
SIM_STATE = "var/lib/gpuops-nvml-sim/state.json"
WHEEL_SPEC = "nvidia-ml-py==13.615.71"

BOOT_TIMEOUT = int(os.environ.get("GPUOPS_MOLECULE_BOOT_TIMEOUT", "120"))
STOP_TIMEOUT = int(os.environ.get("GPUOPS_MOLECULE_STOP_TIMEOUT", "30"))
BUILD_TIMEOUT = int(os.environ.get("GPUOPS_MOLECULE_BUILD_TIMEOUT", "1800"))


class NodeError(Exception):
    pass


def log(msg):
    print(f"gpuops-node: {msg}", file=sys.stderr, flush=True)


def cache_dir():
    return os.path.abspath(os.environ.get("GPUOPS_MOLECULE_CACHE", DEFAULT_CACHE))


def run(argv, timeout=600, check=True, **kw):
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, check=False, **kw)
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"{argv[0]} timed out after {timeout}s: {' '.join(argv)}\n"
                        f"{(exc.output or '')[-3000:]}") from None
    except FileNotFoundError:
        raise NodeError(f"{argv[0]} is not installed (needed: {' '.join(argv[:3])} ...)") from None
    if check and proc.returncode != 0:
        raise NodeError(f"command failed (rc={proc.returncode}): {' '.join(argv)}\n{proc.stdout[-3000:]}")
    return proc


class Lock:
    """An exclusive flock on PATH, waited for at most TIMEOUT seconds."""

    def __init__(self, path, timeout=BUILD_TIMEOUT, what="lock"):
        self.path, self.timeout, self.what = path, timeout, what

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        waited = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not waited:
                log(f"waiting for {self.what} ({self.path}), held by another run")
                waited = True
            if time.monotonic() > deadline:
                os.close(self.fd)
                raise NodeError(f"timed out after {self.timeout}s waiting for {self.what} {self.path}")
            time.sleep(0.5)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------
# cache: rootfs, keypair, wheel

def release_name(release):
    try:
        return RELEASES[str(release).lower()]
    except KeyError:
        raise NodeError(f"unknown Debian release {release!r}; known: bookworm (12), trixie (13)") from None


def rootfs_path(release):
    return os.path.join(cache_dir(), "rootfs", release_name(release))


def _configure_rootfs(root):
    """Release-independent configuration, done once in the cached rootfs."""
    for unit in MASKED_UNITS:
        link = os.path.join(root, "etc/systemd/system", unit)
        if not os.path.lexists(link):
            os.symlink("/dev/null", link)
    sshd_d = os.path.join(root, "etc/ssh/sshd_config.d")
    os.makedirs(sshd_d, exist_ok=True)
    with open(os.path.join(sshd_d, "00-gpuops-harness.conf"), "w", encoding="utf-8") as fh:
        fh.write("# gpuops molecule harness (per-node port in 01-gpuops-port.conf)\n"
                 "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                 "KbdInteractiveAuthentication no\nUseDNS no\nListenAddress 127.0.0.1\n")
    # Per-node values are written at create time; machine-id must be unique per node.
    for rel in ("etc/machine-id", "var/lib/dbus/machine-id"):
        path = os.path.join(root, rel)
        if os.path.lexists(path):
            os.unlink(path)
    # Host keys are generated per node at create time.
    sshdir = os.path.join(root, "etc/ssh")
    for name in os.listdir(sshdir):
        if name.startswith("ssh_host_"):
            os.unlink(os.path.join(sshdir, name))
    with open(os.path.join(root, "etc/hostname"), "w", encoding="utf-8") as fh:
        fh.write("gpuops-node\n")
    # No apt caches in the image; keep it small.
    shutil.rmtree(os.path.join(root, "var/cache/apt/archives"), ignore_errors=True)
    os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"), exist_ok=True)


def build_rootfs(release):
    release = release_name(release)
    dest = rootfs_path(release)
    stamp = os.path.join(dest, ".gpuops-rootfs")
    if os.path.exists(stamp):
        return dest
    with Lock(dest + ".lock", what=f"the {release} rootfs build"):
        if os.path.exists(stamp):      # built by another run while we waited
            return dest
        if not shutil.which("debootstrap"):
            raise NodeError("debootstrap is not installed: apt-get install -y debootstrap")
        # leftovers of builds that were killed (their pid is gone)
        parent = os.path.dirname(dest)
        for name in os.listdir(parent):
            if name.startswith(release + ".tmp."):
                pid = name.rsplit(".", 1)[1]
                if not (pid.isdigit() and pid_alive(int(pid))):
                    log(f"removing the leftover of an interrupted build: {name}")
                    remove_tree(os.path.join(parent, name))
        tmp = f"{dest}.tmp.{os.getpid()}"
        remove_tree(tmp)
        os.makedirs(tmp)
        started = time.monotonic()
        log(f"building the {release} rootfs in {tmp} (once; cached in {dest})")
        # A private mount namespace: debootstrap's /proc, /sys ... mounts in the target vanish with it,
        # even when it is killed.
        argv = ["unshare", "--mount", "--propagation", "private",
                "debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                release, tmp, MIRROR]
        try:
            run(argv, timeout=BUILD_TIMEOUT)
            _configure_rootfs(tmp)
            with open(os.path.join(tmp, ".gpuops-rootfs"), "w", encoding="utf-8") as fh:
                json.dump({"release": release, "packages": PACKAGES, "built": time.time(),
                           "seconds": round(time.monotonic() - started, 1)}, fh)
            if os.path.exists(dest):   # a broken leftover without stamp
                remove_tree(dest)
            os.rename(tmp, dest)
        except BaseException:
            remove_tree(tmp)
            raise
        log(f"{release} rootfs built in {time.monotonic() - started:.0f}s")
    return dest


def keypair():
    key = os.path.join(cache_dir(), "ssh", "id_ed25519")
    if not os.path.exists(key + ".pub"):
        with Lock(os.path.join(cache_dir(), "ssh.lock"), timeout=60, what="the keypair"):
            if not os.path.exists(key + ".pub"):
                os.makedirs(os.path.dirname(key), mode=0o700, exist_ok=True)
                tmp = f"{key}.tmp.{os.getpid()}"
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuops-molecule", "-f", tmp])
                os.rename(tmp, key)
                os.rename(tmp + ".pub", key + ".pub")
    return {"private": key, "public": key + ".pub"}


def wheel():
    wdir = os.path.join(cache_dir(), "wheels")
    name, version = WHEEL_SPEC.split("==")
    prefix = name.replace("-", "_") + "-" + version + "-"

    def found():
        hits = sorted(f for f in os.listdir(wdir) if f.startswith(prefix) and f.endswith(".whl"))
        return os.path.join(wdir, hits[0]) if hits else None

    os.makedirs(wdir, exist_ok=True)
    if found():
        return found()
    with Lock(wdir + ".lock", timeout=300, what="the wheel download"):
        if not found():
            tmp = f"{wdir}/.tmp.{os.getpid()}"
            run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "-d", tmp, WHEEL_SPEC], timeout=300)
            for f in os.listdir(tmp):
                os.rename(os.path.join(tmp, f), os.path.join(wdir, f))
            shutil.rmtree(tmp, ignore_errors=True)
    if not found():
        raise NodeError(f"pip download {WHEEL_SPEC} produced no wheel in {wdir}")
    return found()


# ---------------------------------------------------------------------------------------------
# nodes

def registry_dir():
    return os.path.join(cache_dir(), "nodes")


def registry_entry(node_dir):
    return os.path.join(registry_dir(), hashlib.sha1(node_dir.encode()).hexdigest()[:16] + ".json")


def load_node(node_dir):
    path = os.path.join(node_dir, "node.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise NodeError(f"no node in {node_dir} (missing {path}); create it first") from None


def save_node(node):
    path = os.path.join(node["dir"], "node.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(node, fh, indent=2)
    os.rename(path + ".tmp", path)
    os.makedirs(registry_dir(), exist_ok=True)
    with open(registry_entry(node["dir"]), "w", encoding="utf-8") as fh:
        json.dump({"dir": node["dir"], "name": node["name"]}, fh)


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def claimed_ports():
    ports = set()
    if os.path.isdir(registry_dir()):
        for f in os.listdir(registry_dir()):
            try:
                with open(os.path.join(registry_dir(), f), encoding="utf-8") as fh:
                    ports.add(load_node(json.load(fh)["dir"])["port"])
            except (OSError, ValueError, KeyError, NodeError):
                continue
    return ports


def pick_port(node_dir):
    """A free loopback port not claimed by another known node (call under the ports lock)."""
    taken = claimed_ports()
    start = PORT_RANGE[0] + int(hashlib.sha1(node_dir.encode()).hexdigest(), 16) % 200
    span = PORT_RANGE[1] - PORT_RANGE[0]
    for i in range(span):
        port = PORT_RANGE[0] + (start - PORT_RANGE[0] + i) % span
        if port not in taken and port_free(port):
            return port
    raise NodeError(f"no free loopback port in {PORT_RANGE}")


def pid_alive(pid):
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


def is_our_nspawn(node):
    pid = node.get("pid")
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except OSError:
        return False
    return any(c.endswith(b"systemd-nspawn") for c in cmd[:1]) and node["root"].encode() in cmd


def leader_pid(node):
    """PID (host view) of the container's init: the nspawn process's child."""
    pid = node["pid"]
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as fh:
            children = [int(c) for c in fh.read().split()]
    except OSError:
        return None
    for child in children:
        try:
            with open(f"/proc/{child}/comm", encoding="utf-8") as fh:
                if fh.read().strip() in ("systemd", "init"):
                    return child
        except OSError:
            continue
    return children[0] if children else None


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def boot_log_tail(node, lines=40):
    """The last LINES non-empty lines of the console log, without colours and carriage returns."""
    try:
        with open(node["log"], encoding="utf-8", errors="replace") as fh:
            text = ANSI.sub("", fh.read()).replace("\r", "")
    except OSError:
        return "(no boot log)"
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:]) + "\n"


def fail(node, msg):
    raise NodeError(f"{msg}\n--- last lines of {node['log']} ---\n{boot_log_tail(node)}")


def nsenter(node, argv, timeout=15):
    leader = leader_pid(node)
    if not leader:
        return None
    return run(["nsenter", "--target", str(leader), "--mount", "--uts", "--ipc", "--pid", "--"] + argv,
               timeout=timeout, check=False)


def ssh_argv(node, *cmd):
    return ["ssh", "-q", "-i", node["identity_file"], "-p", str(node["port"]),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "root@127.0.0.1", *cmd]


def write_node_files(node):
    """Per-node configuration inside the copy (also re-applied at each boot: cheap and idempotent)."""
    root = node["root"]
    with open(os.path.join(root, "etc/hostname"), "w", encoding="utf-8") as fh:
        fh.write(node["hostname"] + "\n")
    with open(os.path.join(root, "etc/hosts"), "w", encoding="utf-8") as fh:
        fh.write(f"127.0.0.1\tlocalhost\n127.0.1.1\t{node['hostname']}\n::1\tlocalhost ip6-localhost\n")
    mid = os.path.join(root, "etc/machine-id")
    if not os.path.exists(mid) or not open(mid, encoding="utf-8").read().strip():
        with open(mid, "w", encoding="utf-8") as fh:
            fh.write(uuid.uuid4().hex + "\n")
    with open(os.path.join(root, "etc/ssh/sshd_config.d/01-gpuops-port.conf"), "w", encoding="utf-8") as fh:
        fh.write(f"Port {node['port']}\n")
    sshdir = os.path.join(root, "root/.ssh")
    os.makedirs(sshdir, mode=0o700, exist_ok=True)
    with open(node["identity_file"] + ".pub", encoding="utf-8") as src:
        pub = src.read()
    with open(os.path.join(sshdir, "authorized_keys"), "w", encoding="utf-8") as fh:
        fh.write(pub)
    os.chmod(os.path.join(sshdir, "authorized_keys"), 0o600)
    if not any(f.startswith("ssh_host_") for f in os.listdir(os.path.join(root, "etc/ssh"))):
        run(["ssh-keygen", "-q", "-A", "-f", root])


def boot(node):
    if is_our_nspawn(node):
        log(f"{node['name']} is already running (pid {node['pid']})")
        return node
    write_node_files(node)
    env = dict(os.environ)
    if node["release"] == "trixie" and os.path.isdir("/sys/fs/cgroup/unified"):
        # systemd >= 256 refuses legacy/hybrid cgroups; give the container the unified hierarchy.
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    argv = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--console=read-only",
            "-D", node["root"], "--machine", node["hostname"], "-b"]
    if node.get("apt_cache"):
        # Downloaded .debs outlive the node (the driver scenario's packages are fetched once per release).
        os.makedirs(os.path.join(node["apt_cache"], "partial"), exist_ok=True)
        argv.insert(-1, f"--bind={node['apt_cache']}:/var/cache/apt/archives")
    logf = open(node["log"], "ab")
    logf.write(f"\n=== boot {time.ctime()}: {' '.join(argv)}\n".encode())
    logf.flush()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, close_fds=True)
    logf.close()
    node["pid"] = proc.pid
    save_node(node)
    try:
        wait_running(node, proc)
    except BaseException:
        try:
            stop(node, quiet=True)
        finally:
            pass
        raise
    return node


def wait_running(node, proc):
    deadline = time.monotonic() + BOOT_TIMEOUT
    state = "?"
    while True:
        if proc.poll() is not None:
            fail(node, f"systemd-nspawn for {node['name']} exited with rc={proc.returncode} during boot")
        res = nsenter(node, ["systemctl", "is-system-running"], timeout=10)
        if res is not None:
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping"):
                fail(node, f"{node['name']} booted into state {state!r}")
        if time.monotonic() > deadline:
            fail(node, f"{node['name']} not running after {BOOT_TIMEOUT}s (systemctl is-system-running: {state!r})")
        time.sleep(0.5)
    node["system_state"] = state
    if state == "degraded":
        res = nsenter(node, ["systemctl", "--failed", "--no-legend", "--plain"])
        log(f"{node['name']} is degraded; failed units: {res.stdout.strip() if res else '?'}")
    while True:
        res = run(ssh_argv(node, "true"), timeout=15, check=False)
        if res.returncode == 0:
            break
        if proc.poll() is not None:
            fail(node, f"systemd-nspawn for {node['name']} exited with rc={proc.returncode} while waiting for sshd")
        if time.monotonic() > deadline:
            fail(node, f"sshd of {node['name']} not reachable on 127.0.0.1:{node['port']} after "
                       f"{BOOT_TIMEOUT}s: {res.stdout.strip()}")
        time.sleep(0.5)


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop(node, quiet=False):
    """SIGTERM to nspawn makes it send SIGRTMIN+3 (poweroff) to the container; escalate if stuck."""
    if not is_our_nspawn(node):
        node["pid"] = None
        save_node(node)
        return node
    pid = node["pid"]
    leader = leader_pid(node)
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, STOP_TIMEOUT):
        log(f"{node['name']}: no orderly poweroff in {STOP_TIMEOUT}s, killing the container")
        if leader and pid_alive(leader):
            os.kill(leader, signal.SIGKILL)      # pid 1 of the namespace: takes every process with it
        if not wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
            if not wait_gone(pid, 10):
                raise NodeError(f"systemd-nspawn pid {pid} of {node['name']} does not die")
    if leader and not wait_gone(leader, 10):
        os.kill(leader, signal.SIGKILL)
        wait_gone(leader, 10)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    node["pid"] = None
    save_node(node)
    return node


def remove_tree(path):
    """rm -rf PATH, after unmounting (lazily, deepest first) anything still mounted below it."""
    for mnt in sorted(mounts_under(path), key=len, reverse=True):
        run(["umount", "--lazy", mnt], check=False)
    left = mounts_under(path)
    if left:
        raise NodeError(f"refusing to remove {path}: still mounted: {left}")
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
        raise NodeError(f"could not remove {path}")


def mounts_under(path):
    path = os.path.realpath(path)
    hits = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == path or mnt.startswith(path + "/"):
                hits.append(mnt)
    return hits


def apt_cache_path(release):
    return os.path.join(cache_dir(), "apt", release_name(release))


def create(node_dir, name, release, hostname=None, apt_cache=False):
    node_dir = os.path.abspath(node_dir)
    release = release_name(release)
    base = build_rootfs(release)
    keys = keypair()
    if os.path.exists(os.path.join(node_dir, "node.json")):
        node = load_node(node_dir)
        if node["release"] != release:
            raise NodeError(f"{node_dir} holds a {node['release']} node, not {release}: destroy it first")
        return boot(node)
    os.makedirs(node_dir, exist_ok=True)
    root = os.path.join(node_dir, "root")
    remove_tree(root)
    tmp = root + ".tmp"
    remove_tree(tmp)
    run(["cp", "-a", "--reflink=auto", base, tmp], timeout=600)
    os.rename(tmp, root)
    with Lock(os.path.join(cache_dir(), "ports.lock"), timeout=60, what="port allocation"):
        node = {"dir": node_dir, "name": name, "hostname": hostname or name, "release": release,
                "root": root, "log": os.path.join(node_dir, "boot.log"), "pid": None,
                "identity_file": keys["private"], "port": pick_port(node_dir),
                "apt_cache": apt_cache_path(release) if apt_cache else None}
        save_node(node)
    return boot(node)


def reboot(node):
    stop(node)
    state = os.path.join(node["root"], SIM_STATE)
    if os.path.exists(state):
        # The machine is off: apply what a power cycle does to the simulated GPUs, with the node's own
        # python and simulator (a plain, non-booted nspawn run on the stopped copy).
        run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", node["root"],
             "python3", "-m", "gpuops_nvml_sim", "--state", "/" + SIM_STATE, "reboot"], timeout=60)
    return boot(node)


def destroy(node_dir):
    node_dir = os.path.abspath(node_dir)
    try:
        node = load_node(node_dir)
    except NodeError:
        node = None
    if node:
        stop(node)
    remove_tree(node_dir)
    try:
        os.unlink(registry_entry(node_dir))
    except FileNotFoundError:
        pass
    return {"dir": node_dir, "destroyed": True}


def known_nodes():
    out = []
    if os.path.isdir(registry_dir()):
        for f in sorted(os.listdir(registry_dir())):
            try:
                with open(os.path.join(registry_dir(), f), encoding="utf-8") as fh:
                    entry = json.load(fh)
            except (OSError, ValueError):
                continue
            try:
                node = load_node(entry["dir"])
                node["running"] = is_our_nspawn(node)
            except NodeError:
                node = {"dir": entry["dir"], "name": entry.get("name"), "running": False, "missing": True}
            out.append(node)
    return out


def link_collection(project):
    """.build/collections/ansible_collections/gpuops/nvidia -> the repository root (as the Makefile does)."""
    project = os.path.abspath(project)
    link = os.path.join(project, ".build/collections/ansible_collections/gpuops/nvidia")
    if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(project):
        return {"link": link, "changed": False}
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link):
        os.unlink(link)
    elif os.path.exists(link):
        raise NodeError(f"{link} exists and is not a symlink to {project}")
    os.symlink(os.path.relpath(project, os.path.dirname(link)), link)
    return {"link": link, "changed": True}


def inventory(node):
    """An INI inventory line for ansible-playbook outside Molecule (make demo)."""
    return (f"{node['name']} ansible_host=127.0.0.1 ansible_port={node['port']} ansible_user=root "
            f"ansible_connection=ssh ansible_ssh_private_key_file={node['identity_file']} "
            f"ansible_python_interpreter=/usr/bin/python3 "
            f"ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"-o LogLevel=ERROR'\n")


def instance_config(node):
    return {"instance": node["name"], "address": "127.0.0.1", "user": "root", "port": node["port"],
            "identity_file": node["identity_file"], "connection": "ssh"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rootfs")
    p.add_argument("--release", required=True)
    sub.add_parser("keypair")
    sub.add_parser("wheel")
    p = sub.add_parser("create")
    p.add_argument("--dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--hostname")
    p.add_argument("--apt-cache", action="store_true",
                   help="bind the cache's apt/<release>/ to the node's /var/cache/apt/archives (kept across nodes)")
    for cmd in ("boot", "stop", "reboot", "destroy", "ssh-command", "inventory"):
        sub.add_parser(cmd).add_argument("--dir", required=True)
    sub.add_parser("list")
    sub.add_parser("link-collection").add_argument("--project", required=True)
    sub.add_parser("destroy-all")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 and args.cmd not in ("list", "keypair", "wheel", "link-collection"):
        raise NodeError("must run as root (systemd-nspawn, debootstrap)")
    if args.cmd == "rootfs":
        result = {"rootfs": build_rootfs(args.release)}
    elif args.cmd == "keypair":
        result = keypair()
    elif args.cmd == "wheel":
        result = {"wheel": wheel()}
    elif args.cmd == "create":
        started = time.monotonic()
        node = create(args.dir, args.name, args.release, args.hostname, args.apt_cache)
        result = {"node": node, "instance_config": instance_config(node),
                  "seconds": round(time.monotonic() - started, 1)}
    elif args.cmd == "boot":
        node = boot(load_node(os.path.abspath(args.dir)))
        result = {"node": node, "instance_config": instance_config(node)}
    elif args.cmd == "stop":
        result = {"node": stop(load_node(os.path.abspath(args.dir)))}
    elif args.cmd == "reboot":
        started = time.monotonic()
        node = reboot(load_node(os.path.abspath(args.dir)))
        result = {"node": node, "seconds": round(time.monotonic() - started, 1)}
    elif args.cmd == "destroy":
        result = destroy(args.dir)
    elif args.cmd == "inventory":
        sys.stdout.write(inventory(load_node(os.path.abspath(args.dir))))
        return 0
    elif args.cmd == "ssh-command":
        result = {"ssh": ssh_argv(load_node(os.path.abspath(args.dir)))}
    elif args.cmd == "link-collection":
        result = link_collection(args.project)
    elif args.cmd == "list":
        result = {"nodes": known_nodes()}
    elif args.cmd == "destroy-all":
        result = {"destroyed": [destroy(n["dir"])["dir"] for n in known_nodes()]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NodeError as exc:
        print(f"gpuops-node: ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
