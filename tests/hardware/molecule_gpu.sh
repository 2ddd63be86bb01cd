#!/usr/bin/env bash
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Runs the Molecule scenario `gpu` (non-destructive level) on a host that has only python3 (with nvidia-ml-py) and
# the NVIDIA driver: Molecule, ansible-core and their dependencies come from wheels carried in .whl/ (see
# docs/testing.md), no systemd is needed. With .nvshare-src/nvshare-src.tar.gz (a git archive of
# github.com/grgalex/nvshare, never committed; its sha256 in nvshare-src.tar.gz.sha256) the scenario also builds
# nvshare with the nvshare role and runs its schedulers with two oversubscribing CUDA clients per GPU
# (GPUOPS_GPU_NVSHARE_SRC set here; an empty one skips nvshare). Evidence: $OUT/gpu-evidence.tgz (the scenario's
# JSON, the Molecule log, nvidia-smi settings before/after, nvshare/). Exit status: Molecule's, or 1 when the
# settings differ.
#   bash tests/hardware/molecule_gpu.sh            # device tool: carry .whl and .nvshare-src
FINAL_OUT="${OUT:-/tmp/gpuops-gpu-final}"
export OUT=/tmp/gpuops-gpu-evidence
rm -rf "$OUT"
source "$(dirname "$0")/setup.sh"
set +e
GPUOPS_GPU_PYTHON="$(command -v python3)"
if [ -z "${GPUOPS_GPU_NVSHARE_SRC+set}" ] && [ -s "$GPUOPS_REPO/.nvshare-src/nvshare-src.tar.gz" ]; then
    GPUOPS_GPU_NVSHARE_SRC="$GPUOPS_REPO/.nvshare-src/nvshare-src.tar.gz"
fi
export GPUOPS_GPU_OUT="$EVIDENCE" GPUOPS_GPU_PYTHON GPUOPS_GPU_NVSHARE_SRC="${GPUOPS_GPU_NVSHARE_SRC:-}" PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
SETTINGS="index,uuid,persistence_mode,compute_mode,mig.mode.current"
nvidia-smi --query-gpu=$SETTINGS --format=csv >"$EVIDENCE/settings-before.csv"
nvidia-smi -L >"$EVIDENCE/gpus.txt"
cd "$GPUOPS_REPO" || exit 2
start=$(date +%s)
MOLECULE_GLOB="extensions/molecule/*/molecule.yml" python3 -m molecule --base-config extensions/molecule/config.yml test -s gpu >"$EVIDENCE/molecule.log" 2>&1
status=$?
echo "molecule test -s gpu: rc=$status in $(( $(date +%s) - start )) s" | tee -a "$EVIDENCE/summary.txt"
nvidia-smi --query-gpu=$SETTINGS --format=csv >"$EVIDENCE/settings-after.csv"
free -g >"$EVIDENCE/free.txt" 2>&1
# the kernel's last words (an OOM kill of a client shows here)
dmesg 2>/dev/null | tail -n 80 >"$EVIDENCE/dmesg-tail.txt" || true
if diff -q "$EVIDENCE/settings-before.csv" "$EVIDENCE/settings-after.csv" >/dev/null; then
    echo "GPU settings identical before and after (nvidia-smi)" | tee -a "$EVIDENCE/summary.txt"
else
    echo "GPU settings DIFFER before and after" | tee -a "$EVIDENCE/summary.txt"; status=1
fi
grep -E "TASK \[|ok:|changed:|fatal:|FAILED|PLAY RECAP|failed=" "$EVIDENCE/molecule.log" | tail -n 60
mkdir -p "$FINAL_OUT"
tar czf "$FINAL_OUT/gpu-evidence.tgz" -C "$EVIDENCE" .
exit $status
