"""Bad-input scenario verifier: the refusals left nothing of the roles on the node."""


def test_nothing_installed(host):
    for path in ("/etc/gpuops", "/usr/local/lib/gpuops-nvidia", "/usr/local/sbin/gpuops-mig-apply",
                 "/etc/systemd/system/gpuops-mps@.service", "/etc/systemd/system/gpuops-mig-apply.service"):
        assert not host.file(path).exists, path


def test_no_user_created(host):
    assert not host.user("no-such-user").exists
    assert host.run("getent passwd nvidia-persistenced").rc == 2
