"""Offline stand-in for the pip bootstrap script ansible-test downloads from ci-files.testing.ansible.com.

CI machines reach PyPI (through a TLS-intercepting proxy whose CA is in the system bundle) but not that
host. ansible-test runs this file as `get-pip.py [pip install args]` inside a fresh virtual environment,
with a scrubbed environment: bootstrap pip from the interpreter's bundled wheel (ensurepip), point the
environment's pip at the system CA bundle (a `pip.conf` inside the venv, so later installs work too), then
install the pip version ansible-test asked for from PyPI.
"""

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = ("--no-setuptools", "--no-wheel")
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def main():
    ensurepip.bootstrap(upgrade=True)
    # ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the real install must see pip's config.
    os.environ.pop("PIP_CONFIG_FILE", None)
    bundle = next((path for path in CA_BUNDLES if os.path.exists(path)), None)
    if bundle:
        with open(os.path.join(sys.prefix, "pip.conf"), "w") as config:
            config.write("[global]\ncert = %s\n" % bundle)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)


if __name__ == "__main__":
    main()
