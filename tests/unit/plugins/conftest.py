"""Fixtures for the plugin tests (MIG helpers live in mig_helpers.py)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mig_helpers import mig_lock, nvidia_smi, no_nvidia_smi  # noqa: E402,F401  pylint: disable=unused-import
