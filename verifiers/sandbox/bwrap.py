"""bubblewrap backend: one fresh set of Linux namespaces per check (~25 ms to start).

The sandbox sees: /usr read-only (with /usr/local hidden) and the /bin, /lib, /lib64, /sbin links or
directories the interpreter needs; a private /proc and minimal /dev; fresh size-capped tmpfs at /tmp,
/var/tmp and /dev/shm. No /etc, /home, /root, project or verifier files; an empty environment; no network
(its own network namespace holds only a down loopback); its own pid namespace, so when the run ends or is
killed every process in it dies with it (`--die-with-parent` on the namespace's init). It runs as uid
65534 with no capabilities, no new privileges and no further user namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .base import HARNESS_SOURCE, SCRATCH_DIRS, Backend, Limits, RawRun, SandboxUnavailable, communicate

HOST_UID = 65534  # "nobody": the host uid sandboxes run as when the verifier runs as root
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"


def system_mounts(python: str) -> list[str]:
    """Read-only system directories the interpreter needs, mirroring the host's layout (merged-/usr or not)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/sbin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if not os.path.realpath(python).startswith("/usr/local/") and os.path.isdir("/usr/local"):
        args += ["--tmpfs", "/usr/local"]  # pip-installed host packages are none of the sandbox's business
    return args


class BwrapBackend(Backend):
    name = "bwrap"

    def __init__(self, limits: Limits | None = None, *, python: str = "/usr/bin/python3", bwrap: str | None = None,
                 site_packages: bool = False):
        super().__init__(limits)
        self.python = python
        # -S (no site module) saves ~20 ms a check; the program then sees the standard library only
        self.python_flags = ["-I"] if site_packages else ["-I", "-S"]
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"

    def check_available(self) -> None:
        if not os.path.exists(self.bwrap):
            raise SandboxUnavailable(f"verifier.sandbox=bwrap: the bwrap binary was not found; {INSTALL_HINT}, "
                                     f"or choose --set verifier.sandbox=docker")
        if not os.path.exists(self.python):
            raise SandboxUnavailable(f"verifier.sandbox=bwrap: the sandbox interpreter {self.python} does not exist; "
                                     f"install python3 (`apt-get install python3`) or set verifier.options.python")

    def command(self) -> list[str]:
        tmp_bytes = str(self.limits.tmp_mb << 20)
        cmd = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
               "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        cmd += system_mounts(self.python)
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        for d in SCRATCH_DIRS:
            cmd += ["--size", tmp_bytes, "--perms", "1777", "--tmpfs", d]
        cmd += ["--remount-ro", "/"]  # bwrap's root is a tmpfs: without this it is unbounded scratch space
        cmd += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
        return cmd + ["--", self.python, *self.python_flags, "-c", HARNESS_SOURCE]

    def _run(self, data: bytes) -> RawRun:
        self.check_available()
        # As root, drop to an unprivileged uid before bwrap: the kernel exempts root's own processes from
        # RLIMIT_NPROC (so a fork bomb would not be capped), and an unprivileged user namespace holds no
        # capability over the host's.
        drop = {"user": HOST_UID, "group": HOST_UID, "extra_groups": []} if os.geteuid() == 0 else {}
        proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={}, cwd="/", start_new_session=True, close_fds=True, **drop)
        raw = communicate(proc, data, self.limits.timeout_s)
        if raw.exit_code not in (0, None) and b"bwrap:" in raw.stderr and not raw.timed_out:
            msg = raw.stderr.decode("utf-8", "replace").strip()[-300:]
            if "No permissions to creating new namespace" in msg or "Operation not permitted" in msg:
                raise SandboxUnavailable(f"bwrap cannot create namespaces on this machine ({msg}); enable "
                                         f"unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) "
                                         f"or use --set verifier.sandbox=docker")
        return raw
