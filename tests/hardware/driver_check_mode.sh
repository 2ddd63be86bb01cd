#!/usr/bin/env bash
# Evidence for the gpuops.nvidia.driver role on a real GPU node whose driver is loaded: in CHECK MODE it sees the
# loaded driver, finds that it is the requested one, and reports nothing to do, with no package manager change.
#
# It never installs or changes anything: every role run is `ansible-playbook --check`, the package manager is only
# read (dpkg-query/apt-cache), and the script compares the package database, the apt sources/preferences and
# /etc/modprobe.d before and after. It refuses to run where no NVIDIA driver is loaded.
#
#   1. nvidia_driver_info (read-only module): the PCI bus, the loaded driver, the distribution, the plan.
#   2. The role in check mode with driver_branch=580 and its defaults: the action must be nothing_to_do, no
#      repository or package task may run, and the role must not end the play for a reboot.
#   3. The same with driver_nouveau_blacklist=false: the whole run must predict changed=0 (with the default, the
#      role would add its nouveau blacklist to /etc/modprobe.d, a file the container may lack: reported in step 2,
#      not a package manager change).
#   4. A refused request (driver_branch=999): fails before any change, naming the valid branches.
#
# Usage (root, from the repository root on the GPU machine; no internet needed, ansible-core comes from .whl/):
#   bash tests/hardware/driver_check_mode.sh [OUTPUT_DIR]
set -euo pipefail
# shellcheck source=tests/hardware/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT="${1:-$EVIDENCE/driver_check_mode}"
mkdir -p "$OUT"
BRANCH="${GPUOPS_DRIVER_BRANCH:-580}"
PY="${ANSIBLE_PYTHON_INTERPRETER:-$(command -v python3)}"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_STDOUT_CALLBACK=ansible.builtin.default

if [ ! -r /sys/module/nvidia/version ]; then
    echo "no NVIDIA driver is loaded (/sys/module/nvidia/version): this script only runs where one is; nothing done" >&2
    exit 3
fi

snapshot() {  # what a package manager or the role could change
    { dpkg-query -W -f='${Package} ${Version} ${Status}\n' 2>/dev/null || rpm -qa 2>/dev/null || true; } | sort
    for dir in /etc/apt/sources.list.d /etc/apt/preferences.d /etc/modprobe.d /etc/yum.repos.d; do
        [ -d "$dir" ] && find "$dir" -type f -exec sha256sum {} + 2>/dev/null | sort
    done
    dpkg --get-selections 2>/dev/null | grep -v 'install$' || true
}

run() {  # run NAME CMD...: print, tee to $OUT/NAME.txt, keep the exit status
    local name=$1; shift
    echo "### $name: $*" | tee "$OUT/$name.txt"
    set +e
    "$@" 2>&1 | tee -a "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    set -e
    echo "### rc=$rc" | tee -a "$OUT/$name.txt"
    return "$rc"
}

cat > "$OUT/playbook.yml" <<'EOF'
- name: The driver role on this node (run with --check only)
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: gpuops.nvidia.driver
EOF

snapshot > "$OUT/before.txt"
run environment bash -c "uname -a; id; cat /etc/os-release; cat /sys/module/nvidia/version;
  cat /proc/driver/nvidia/version 2>/dev/null || true; ansible --version; $PY -c 'import pynvml' && echo pynvml ok"

# 1. The read-only module.
run driver-info ansible localhost -c local -e "ansible_python_interpreter=$PY" --check \
    -m gpuops.nvidia.nvidia_driver_info -a "branch=$BRANCH"

# 2. The role with its defaults: nothing to do, no package manager task.
run role-defaults ansible-playbook -i localhost, -e "ansible_python_interpreter=$PY" -e "driver_branch=$BRANCH" \
    --check --diff "$OUT/playbook.yml"
grep -q "is loaded and is what was requested (branch $BRANCH): nothing to do" "$OUT/role-defaults.txt"
if grep -qE "included: .*install_(apt|dnf)\.yml|REBOOT REQUIRED" "$OUT/role-defaults.txt"; then
    echo "FAIL: the role planned package changes or a reboot although the requested driver is loaded" >&2
    exit 1
fi
grep -A1 "^changed:" "$OUT/role-defaults.txt" > "$OUT/role-defaults-predicted-changes.txt" || true

# 3. Without the role's own nouveau blacklist file: the whole check-mode run predicts no change.
run role-no-blacklist ansible-playbook -i localhost, -e "ansible_python_interpreter=$PY" -e "driver_branch=$BRANCH" \
    -e driver_nouveau_blacklist=false --check --diff "$OUT/playbook.yml"
grep -A3 "PLAY RECAP" "$OUT/role-no-blacklist.txt" | grep -q "changed=0 " || {
    echo "FAIL: check mode predicted a change on a node whose loaded driver is the requested one" >&2; exit 1; }

# 4. An unknown branch is refused before any change, with the valid ones.
if run unknown-branch ansible-playbook -i localhost, -e "ansible_python_interpreter=$PY" -e driver_branch=999 \
    --check "$OUT/playbook.yml"; then
    echo "FAIL: branch 999 was accepted" >&2; exit 1
fi
grep -q "driver branch 999 is not available" "$OUT/unknown-branch.txt"

snapshot > "$OUT/after.txt"
if ! diff -u "$OUT/before.txt" "$OUT/after.txt" > "$OUT/state-diff.txt"; then
    echo "FAIL: the node changed (see $OUT/state-diff.txt)" >&2; exit 1
fi
echo "driver_check_mode: PASS (loaded $(cat /sys/module/nvidia/version), branch $BRANCH: nothing to do; node unchanged)"
