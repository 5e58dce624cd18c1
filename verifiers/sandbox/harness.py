"""The program that runs *inside* every sandbox (bwrap, docker, local). It is sent as `python3 -I -c SOURCE`,
so it must be self-contained: standard library only, no imports from treerpo.

Why two processes. The unit tests must run *after* the untrusted program is loaded, and anything that runs
in the same interpreter as the program can be tampered with by it (`sys.exit(0)` before the tests,
`os._exit(0)`, an `atexit` hook, a patched `AssertionError`, or simply printing a success banner). So:

- the trusted *judge* process (this script's main process) never executes model-written code. It runs the
  task's setup, the HumanEval prompt (trusted helpers such as `poly`) and the tests itself;
- it forks the *candidate* process, which drops its copy of the judge's stdin and stdout, sets rlimits,
  loads the program and then only answers calls: "call function NAME with these arguments";
- the names the tests call (HumanEval's `candidate`, MBPP's function names) are proxies in the judge that
  send the call to the candidate and decode the answer. Values cross as tagged JSON of plain built-in types
  (int, float, str, bytes, bool, None, list, tuple, dict, set, frozenset, complex); any other object stays
  in the candidate and the judge gets an opaque handle (RemoteRef) that can be passed back but is equal only
  to itself: the judge compares real values, so an object whose `__eq__` always says True never wins an
  `assert`;
- the judge reads the per-run token from its stdin *after* the fork (the candidate never holds it), marks
  itself non-dumpable (the candidate, same uid and no capabilities, can neither ptrace it nor open its
  /proc/PID/mem or /proc/PID/fd/*), and writes its report, which carries the token, on the stdout only it
  holds. The host accepts PASS only from a report with the right token that says every test ran.

Protocol on stdin: `<decimal length>\\n<request JSON>` then `<token>\\n`.
Report on stdout: one JSON line {"token", "status": passed|failed|timeout|error, "reason", "tests_run", "output"}.
"""

import builtins
import contextlib
import io
import json
import os
import resource
import signal
import threading
import time

MAX_LINE = 16 << 20  # largest RPC message accepted from the candidate


# -- values across the boundary (tagged JSON; decoding never runs code) --------------------------------
class RemoteRef:
    """The judge's stand-in for a program object that is not a plain value (an instance of a class the program
    defined, a generator...). It can be passed back to the program (MBPP's `f([Pair(1, 2)])`), and is equal
    only to itself: its real `__eq__` lives in the program and is never consulted."""

    def __init__(self, key):
        self.key = key

    def __eq__(self, other):
        return isinstance(other, RemoteRef) and other.key == self.key

    def __hash__(self):
        return hash(("RemoteRef", self.key))

    def __repr__(self):
        return f"<program object #{self.key}>"


def encode(value, keep=None, depth=0):
    """Plain values as tagged JSON. Anything else: on the program's side (`keep` given) it stays there and a
    handle crosses; on the judge's side only RemoteRefs (handles coming back) are allowed."""
    if depth > 100:
        raise TypeError("value nested deeper than 100 levels")
    t = type(value)
    if value is None or t in (bool, int, str):
        return value
    if t is float:
        return value if value == value and value not in (float("inf"), float("-inf")) else {"F": repr(value)}
    if t is list:
        return [encode(v, keep, depth + 1) for v in value]
    if t is tuple:
        return {"T": [encode(v, keep, depth + 1) for v in value]}
    if t is dict:
        return {"D": [[encode(k, keep, depth + 1), encode(v, keep, depth + 1)] for k, v in value.items()]}
    if t in (set, frozenset):
        return {"S" if t is set else "Z": [encode(v, keep, depth + 1) for v in value]}
    if t is bytes:
        return {"B": value.hex()}
    if t is complex:
        return {"C": [encode(value.real), encode(value.imag)]}
    if t is RemoteRef:
        return {"R": value.key}
    if keep is not None:
        keep[id(value)] = value
        return {"R": id(value)}
    raise TypeError(f"a value of type {t.__name__} cannot be passed to the program (plain built-in types only)")


def decode(value, ref):
    """Inverse of encode; `ref(key)` resolves a handle (the object itself in the program, a RemoteRef in the judge)."""
    if isinstance(value, list):
        return [decode(v, ref) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, inner), = value.items()
    if tag == "F":
        return float(inner)
    if tag == "T":
        return tuple(decode(v, ref) for v in inner)
    if tag == "D":
        return {decode(k, ref): decode(v, ref) for k, v in inner}
    if tag == "S":
        return set(decode(v, ref) for v in inner)
    if tag == "Z":
        return frozenset(decode(v, ref) for v in inner)
    if tag == "B":
        return bytes.fromhex(inner)
    if tag == "C":
        return complex(decode(inner[0], ref), decode(inner[1], ref))
    if tag == "R":
        return ref(inner)
    raise ValueError(f"unknown tag {tag!r}")


def read_exact(fd, n):
    chunks = []
    while n > 0:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            raise EOFError("stdin closed early")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def read_line(fd, limit):
    """One newline-terminated message, byte by byte from a raw fd so nothing past it is buffered."""
    out = bytearray()
    while True:
        b = os.read(fd, 1)
        if not b:
            raise EOFError
        if b == b"\n":
            return bytes(out)
        out += b
        if len(out) > limit:
            raise ValueError("message too long")


class LineReader:
    """Buffered reader of newline-terminated messages (the candidate's replies)."""

    def __init__(self, fd):
        self.fd, self.buf = fd, bytearray()

    def line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return out
            if len(self.buf) > MAX_LINE:
                raise ValueError(f"a reply from the program was longer than {MAX_LINE} bytes")
            b = os.read(self.fd, 1 << 20)
            if not b:
                raise EOFError
            self.buf += b


def lines_in(tb, filename):
    """Line numbers of `filename`'s frames in a traceback, outermost first (the traceback module is slow to import)."""
    out = []
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            out.append(tb.tb_lineno)
        tb = tb.tb_next
    return out


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


# -- the candidate process: loads the untrusted program, then answers calls ------------------------------
def candidate(req, call_r, reply_w, out_w):
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)  # the judge's stdin (where the token arrives) is gone
    os.dup2(out_w, 1)  # and so is the judge's stdout (the report channel)
    os.dup2(out_w, 2)
    for fd in (devnull, out_w):
        os.close(fd)
    os.setpgid(0, 0)
    lim = req["limits"]
    for name, value in (("RLIMIT_AS", lim["memory_bytes"]), ("RLIMIT_NPROC", lim["max_procs"]),
                        ("RLIMIT_FSIZE", lim["file_bytes"]), ("RLIMIT_NOFILE", lim["open_files"]),
                        ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    # SIGXCPU at the soft limit, SIGKILL a second later for a program that catches SIGXCPU
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    reply = os.fdopen(reply_w, "w", buffering=1)

    def send(obj):
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(req["setup"], "<setup>", "exec"), ns)
        exec(compile(req["program"], "<solution>", "exec"), ns)
    except SystemExit as e:
        send({"loaded": False, "error": f"the program called exit({e.code!r}) while loading, before any test ran"})
        os._exit(0)
    except BaseException as e:
        lines = lines_in(e.__traceback__, "<solution>")
        where = f" (line {lines[-1]})" if lines else ""
        if isinstance(e, SyntaxError):
            where = f" (line {e.lineno})"
        send({"loaded": False, "error": f"{type(e).__name__}: {e}{where}"})
        os._exit(0)
    names = [k for k, v in ns.items() if callable(v) and not k.startswith("__")]
    send({"loaded": True, "names": names})
    calls = LineReader(call_r)
    handles = {}  # objects handed to the judge as RemoteRefs, kept alive for when they come back
    while True:
        try:
            msg = json.loads(calls.line())
        except EOFError:
            os._exit(0)
        try:
            result = ns[msg["name"]](*decode(msg["args"], handles.__getitem__),
                                     **decode(msg["kwargs"], handles.__getitem__))
            out = {"ok": encode(result, handles)}
        except SystemExit as e:
            out = {"exc": "SystemExit", "msg": f"the program called exit({e.code!r}) during a test"}
        except BaseException as e:
            out = {"exc": type(e).__name__, "msg": str(e)[:500]}
        send(out)


# -- the judge process: runs the tests against proxies ----------------------------------------------------
class ProgramGone(Exception):
    """The candidate process ended (exit, crash, kill) while the tests still needed it."""


class RemoteError(Exception):
    """The program raised while a test was calling it."""


class Judge:
    def __init__(self, req, call_w, reply_r, out_r):
        self.req, self.pid = req, None  # pid: set once the candidate is forked
        self.call_w, self.replies = call_w, LineReader(reply_r)
        self.output, self.output_total, self.overflow = bytearray(), 0, False
        self.cap = req["limits"]["output_bytes"]
        self.drain = threading.Thread(target=self._drain, args=(out_r,), daemon=True)
        self.drain.start()
        self.status = None

    def _drain(self, fd):
        """Collect the program's stdout+stderr; past the cap, kill it (runaway printing)."""
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                return
            if not b:
                return
            self.output_total += len(b)
            self.output += b
            del self.output[: max(0, len(self.output) - 4096)]
            if self.output_total > self.cap and not self.overflow:
                self.overflow = True
                self.kill()

    def kill(self):
        if self.pid is None:
            return
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                target()
            except OSError:
                pass

    def gone_reason(self):
        """Why the candidate ended: output cap, a signal (CPU limit), or an exit code."""
        if self.overflow:
            return "failed", f"output limit exceeded (more than {self.cap} bytes printed)"
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "failed", "the program's process ended before the tests finished"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and self.cpu_used() >= self.req["limits"]["cpu_s"] - 0.1):
                return "timeout", "CPU time limit exceeded"
            return "failed", f"the program's process was killed by signal {signal.Signals(sig).name} before the tests finished"
        return "failed", f"the program's process exited with code {os.WEXITSTATUS(status)} before the tests finished"

    def cpu_used(self):
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    def receive(self):
        try:
            return json.loads(self.replies.line())
        except EOFError:
            raise ProgramGone() from None

    def proxy(self, name):
        judge = self

        def remote(*args, **kwargs):
            try:
                msg = json.dumps({"name": name, "args": encode(list(args)), "kwargs": encode(kwargs)}) + "\n"
                write_all(judge.call_w, msg.encode())
            except BrokenPipeError:
                raise ProgramGone() from None
            reply = judge.receive()
            if "exc" in reply:
                raise RemoteError(f"{name}() raised {reply['exc']}: {reply['msg']}")
            return decode(reply["ok"], RemoteRef)

        remote.__name__ = remote.__qualname__ = name
        return remote

    def run(self):
        req = self.req
        hello = self.receive()
        if not hello.get("loaded"):
            return "failed", str(hello.get("error", "the program did not load")), 0
        ns = {"__name__": "__main__"}
        exec(compile(req["setup"], "<setup>", "exec"), ns)
        if req.get("prompt"):
            exec(compile(req["prompt"], "<prompt>", "exec"), ns)  # trusted helpers (HumanEval's poly, ...)
        entry = req.get("entry_point")
        # Only names the trusted side does not define: a program's own `len` or `isclose` must never replace
        # the builtin or the setup's version that the tests mean.
        names = [entry] if entry else [n for n in hello["names"]
                                       if n.isidentifier() and n not in ns and not hasattr(builtins, n)]
        if entry and entry not in hello["names"]:
            return "failed", f"the program does not define {entry}()", 0
        for n in names:
            ns[n] = self.proxy(n)
        tests = req["tests"]
        if entry:
            tests += f"\n\ncheck({entry})\n"
        code = compile(tests, "<tests>", "exec")
        lines = tests.splitlines()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                exec(code, ns)
        except AssertionError as e:
            return "failed", "test failed: " + self.test_line(e, lines) + (f" ({e})" if str(e) else ""), 0
        except RemoteError as e:
            return "failed", f"{e} ({self.test_line(e, lines)})", 0
        return "passed", f"all tests passed ({req['n_tests']} test statement(s))", req["n_tests"]

    @staticmethod
    def test_line(exc, lines):
        for n in reversed(lines_in(exc.__traceback__, "<tests>")):
            if 0 < n <= len(lines):
                return f"line {n}: {lines[n - 1].strip()[:300]}"
        return "in the tests"


def reap_everything():
    """Docker: kill every other process of this uid (daemons the program left behind) until none is left;
    pid 1 of the container is exempt from kill(-1). False when something kept coming back."""
    me = os.getpid()
    for attempt in range(100):
        if attempt:
            time.sleep(0.01)  # SIGKILLed processes take a moment to become zombies
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
        alive = []
        for p in others:
            try:
                with open(f"/proc/{p}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                        alive.append(p)
            except OSError:
                pass
        if not alive:
            return True
    return False


def wipe(dirs):
    """Docker: empty the scratch dirs the next run will see (the container's tmpfs outlives one run)."""
    import shutil

    ok = True
    for d in dirs:
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for e in entries:
            p = os.path.join(d, e)
            for root, subdirs, _ in os.walk(p):
                for s in subdirs:
                    try:
                        os.chmod(os.path.join(root, s), 0o700)
                    except OSError:
                        pass
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
            except OSError:
                ok = False
    return ok


def main():
    try:  # non-dumpable: same-uid processes may not ptrace us or open our /proc/PID/{mem,fd}
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass
    n = int(read_line(0, 20))
    req = json.loads(read_exact(0, n))
    report_fd = os.dup(1)
    call_r, call_w = os.pipe()
    reply_r, reply_w = os.pipe()
    out_r, out_w = os.pipe()
    # The judge's thread starts before the program exists: a program that uses up the process limit (threads
    # count) must not be able to stop the judge from working, which would turn its failure into an ERROR.
    judge = Judge(req, call_w, reply_r, out_r)
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (call_w, reply_r, out_r, report_fd):
                os.close(fd)
            candidate(req, call_r, reply_w, out_w)
        finally:
            os._exit(70)
    judge.pid = pid
    for fd in (call_r, reply_w, out_w):
        os.close(fd)
    token = read_line(0, 200).decode()  # only now: the candidate never held it
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    tests_run = 0
    try:
        status, reason, tests_run = judge.run()
    except ProgramGone:
        status, reason = judge.gone_reason()
    except SyntaxError as e:
        status, reason = "error", f"the tests themselves do not compile: {e}"
    except Exception as e:
        status, reason = "failed", f"test failed: {type(e).__name__}: {e} ({Judge.test_line(e, req['tests'].splitlines())})"
    judge.kill()
    if judge.overflow:
        status, reason = "failed", f"output limit exceeded (more than {judge.cap} bytes printed)"
    clean = True
    if req.get("reap_all"):
        clean = reap_everything() and wipe(req.get("wipe", []))
    judge.drain.join(0.2)
    report = {"token": token, "status": status, "reason": reason[:2000], "tests_run": tests_run, "clean": clean,
              "output": judge.output[-2000:].decode("utf-8", "replace")}
    write_all(report_fd, (json.dumps(report) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
