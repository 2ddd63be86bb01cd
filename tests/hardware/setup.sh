# shellcheck shell=bash
# Sourced by the hardware evidence scripts on a real GPU host (no internet): installs the carried wheels
# (ansible-core and what it needs, from .whl/) into /tmp/gpuops-site, makes the collection in this checkout
# visible to Ansible, and points Ansible at the Python that has pynvml.
set -euo pipefail
GPUOPS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -d "$GPUOPS_REPO/.whl" ] && ! python3 -c "import ansible" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpuops-site \
        "$GPUOPS_REPO"/.whl/*.whl
fi
export PYTHONPATH="/tmp/gpuops-site${PYTHONPATH:+:$PYTHONPATH}"
export PATH="/tmp/gpuops-site/bin:$PATH"
mkdir -p /tmp/gpuops-collections/ansible_collections/gpuops
ln -sfn "$GPUOPS_REPO" /tmp/gpuops-collections/ansible_collections/gpuops/nvidia
export ANSIBLE_COLLECTIONS_PATH=/tmp/gpuops-collections
ANSIBLE_PYTHON_INTERPRETER="$(command -v python3)"
export ANSIBLE_PYTHON_INTERPRETER
export ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false ANSIBLE_NOCOLOR=1
export ANSIBLE_HOME=/tmp/gpuops-ansible-home
EVIDENCE="${OUT:-/tmp/gpuops-evidence}"
mkdir -p "$EVIDENCE"
