"""Sandboxes for running model-written code: `bwrap` (default), `docker` (a pool of locked-down containers)
and `local` (rlimits only, no isolation; the CLI refuses it without --unsafe).

All three run the same in-sandbox harness (harness.py) and judge its report the same way (base.py).

What is protected (each has an adversarial test in tests/test_sandbox_*.py, on both isolating backends):
- wall-clock and CPU limits, the whole process tree killed (SIGTERM-ignoring and double-forked processes too);
- memory, process/thread count, output, file-size, tmp-space and open-file caps;
- no network, not even the host's loopback; no view of host files beyond the read-only runtime (/usr);
  an empty environment; fresh /tmp, /var/tmp, /dev/shm per run; killing every process from inside harms
  only the sandbox; no process outlives the run; parallel runs are separate;
- no false PASS: the tests run in a process the program never touches, against proxies, and PASS needs a
  report carrying a per-run token that only that process holds (harness.py explains the design).

What is not protected:
- kernel exploits: these are namespaces, rlimits and cgroups, not a VM. Run untrusted code on a machine
  you can afford to lose, or in a VM, when the stakes are high;
- CPU time stolen from other work on the machine within the limits (docker caps CPUs; bwrap does not);
- bwrap caps memory per process (RLIMIT_AS), so a program may use up to memory_mb times max_procs in all;
  docker also caps the container as a whole (cgroup);
- tests that are too weak (a program that special-cases the tested inputs passes, as it would anywhere);
- a program whose functions return values that are not plain built-in types fails even when "correct":
  only plain values cross from the program to the tests, so the tests never run the program's code.
- `local`: only the rlimits and the judge/candidate split; the program sees your files, network and
  environment, and can kill your processes.
"""

from __future__ import annotations

from .base import Backend, Job, Limits, SandboxUnavailable

BACKENDS = ("bwrap", "docker", "local")


def make_backend(name: str, limits: Limits | None = None, **options) -> Backend:
    """The backend called `name`, checked to be usable here (SandboxUnavailable says how to fix it otherwise)."""
    if name == "bwrap":
        from .bwrap import BwrapBackend as cls
    elif name == "docker":
        from .docker_pool import DockerPoolBackend as cls
    elif name == "local":
        from .local import LocalBackend as cls
    else:
        raise SandboxUnavailable(f"unknown verifier.sandbox {name!r}; choose one of {', '.join(BACKENDS)}")
    backend = cls(limits, **options)
    backend.check_available()
    return backend


__all__ = ["BACKENDS", "Backend", "Job", "Limits", "SandboxUnavailable", "make_backend"]
