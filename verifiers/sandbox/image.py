"""`treerpo sandbox build`: the default Docker image for the docker backend, built without any registry.

Choice: the image is assembled from the host's own Debian python3 (the interpreter, its standard library and
the shared libraries `ldd` says they need) and loaded with `docker import`. It builds in seconds with no
network, is ~50 MB (which matters with the vfs storage driver, which copies the image for every container),
and runs exactly the interpreter the bwrap backend runs, so both backends judge the same way. A debootstrap
root would work too but needs a Debian mirror and minutes. Any image with `python3` on its PATH can be named
instead (`--set verifier.options.image=NAME`).

Idempotent: an image with this tag and the same content hash is left alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

DEFAULT_IMAGE = "treerpo-sandbox:py3"
HOST_PYTHON = "/usr/bin/python3"
# parts of the standard library a unit test never needs (tests, GUI, installers): a smaller image
SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data"}


def _libs_of(paths: list[str]) -> set[str]:
    """Shared libraries (and the dynamic loader) that `ldd` resolves for these binaries."""
    out = set()
    for p in paths:
        res = subprocess.run(["ldd", p], capture_output=True, text=True)
        for m in re.finditer(r"(/\S+\.so[.\d]*)", res.stdout):
            out.add(m.group(1))
    return out


def image_files(python: str = HOST_PYTHON) -> list[str]:
    """Every host path the image needs: interpreter, stdlib, their libraries, plus the links leading to them."""
    exe = os.path.realpath(python)
    m = re.search(r"python(\d+\.\d+)$", exe)
    if not m:
        raise RuntimeError(f"{python} -> {exe} does not look like a versioned CPython interpreter")
    stdlib = Path(os.path.dirname(os.path.dirname(exe))) / "lib" / f"python{m.group(1)}"
    files = [python, exe]
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = [d for d in dirs if not (Path(root) == stdlib and (d in SKIP_DIRS or d.startswith("config-")))]
        files += [os.path.join(root, n) for n in names]
    dynload = [f for f in files if f.endswith(".so")]
    return sorted(set(files) | _libs_of([exe] + dynload))


def build_tar(python: str = HOST_PYTHON) -> bytes:
    """A root filesystem tar: the files above at their host paths, the host's top-level links (/lib64 -> usr/lib64
    on merged-/usr systems) and empty scratch dirs. Owned by root; file mtimes kept (the .pyc caches check them)."""
    buf = io.BytesIO()
    seen: set[str] = set()

    def add_dir(name: str, mode: int = 0o755) -> None:
        if name in seen or name in ("", "."):
            return
        add_dir(os.path.dirname(name))
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 0
        tar.addfile(ti)
        seen.add(name)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        for top in ("bin", "lib", "lib32", "lib64", "sbin"):
            if os.path.islink("/" + top):
                ti = tarfile.TarInfo(top)
                ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, os.readlink("/" + top), 0
                tar.addfile(ti)
                seen.add(top)
        for d in ("tmp", "var/tmp", "dev/shm"):
            add_dir(d, 0o1777)
        add_dir("etc")
        for path in image_files(python):
            real_parent = os.path.realpath(os.path.dirname(path))
            name = os.path.join(real_parent, os.path.basename(path)).lstrip("/")
            if name in seen:
                continue
            add_dir(os.path.dirname(name))
            ti = tar.gettarinfo(path, arcname=name)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"  # mtimes stay: the stdlib's .pyc files are validated against them
            if ti.issym():
                tar.addfile(ti)
                target = os.path.realpath(path)
                tname = target.lstrip("/")
                if tname not in seen and os.path.isfile(target):
                    add_dir(os.path.dirname(tname))
                    tt = tar.gettarinfo(target, arcname=tname)
                    tt.uid = tt.gid = 0
                    with open(target, "rb") as fh:
                        tar.addfile(tt, fh)
                    seen.add(tname)
            elif ti.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(ti, fh)
            seen.add(name)
        passwd = b"root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n"
        ti = tarfile.TarInfo("etc/passwd")
        ti.size, ti.mode, ti.mtime = len(passwd), 0o644, 0
        tar.addfile(ti, io.BytesIO(passwd))
    return buf.getvalue()


def build_image(client, tag: str = DEFAULT_IMAGE, python: str = HOST_PYTHON, force: bool = False) -> tuple[str, bool]:
    """Import the image unless one with the same content is already tagged. Returns (image id, built)."""
    import docker

    data = build_tar(python)
    digest = hashlib.sha256(data).hexdigest()[:16]
    old = None
    try:
        old = client.images.get(tag)
        if not force and (old.labels or {}).get("treerpo.sandbox.content") == digest:
            return old.id, False
    except docker.errors.ImageNotFound:
        pass
    repo, _, version = tag.partition(":")
    changes = ["ENV PATH=/usr/bin:/bin", "ENV LANG=C.UTF-8", "WORKDIR /tmp", f"LABEL treerpo.sandbox.content={digest}"]
    client.api.import_image_from_data(data, repository=repo, tag=version or "latest", changes=changes)
    new = client.images.get(tag)
    if old is not None and old.id != new.id:
        try:  # the previous build, now untagged; kept if a container still uses it
            client.images.remove(old.id)
        except docker.errors.APIError:
            pass
    return new.id, True
