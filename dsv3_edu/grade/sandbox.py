"""Running the grading worker in an OS sandbox, and supervising it from outside. TRUSTED side.

The worker (``worker.py``) runs the learner's code. It is started with bubblewrap (``bwrap``, Debian package
``bubblewrap``) when that works on this machine:

- new user, PID, network, IPC and UTS namespaces (no network; it cannot see or signal the grader);
- a read-only view of the system and of Python (``/usr``, ``/etc``, the interpreter's prefix and the folders
  on ``sys.path``), of the package ``dsv3_edu`` and the course data ``data/``, and nothing else of the
  checkout: not ``solutions/``, not the fixtures, not ``exercises/``, not the home folder nor other
  submissions; a fresh ``/tmp``; one writable folder, its own temp folder;
- limits: address space (memory), file size, CPU time (setrlimit), wall-clock time per step and for the whole
  run, and output (the grader reads the worker's stdout/stderr and stops it past ``OUTPUT_CAP`` bytes).

Where bwrap is missing or cannot create namespaces (macOS, Windows, some containers), the worker runs as a
plain child process with the same limits and a private temp folder as its working folder: **unsandboxed**, and
the report says so. Scores are still computed outside the worker, from data.

The supervisor never trusts the worker's exit: when it dies, hangs or floods its output in a step, that step
is charged (the report names the cell), and a new worker is started that re-runs the earlier cells and
skips the step, up to ``MAX_RESTARTS`` times.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cells import repo_root

OUTPUT_CAP = 10_000_000        # bytes a worker may write to stdout/stderr before it is stopped
MEMORY_LIMIT = 16 << 30        # bytes of address space (torch reserves a lot of virtual memory)
FILE_LIMIT = 512 << 20         # bytes, largest file the worker may write
MAX_RESTARTS = 4
START_TIMEOUT = 120            # seconds for the worker to start (imports)


@dataclass
class StepOutcome:
    status: str                 # "ok", "error", "timeout", "died", "output", "not run"
    error: tuple[str, str] | None = None   # (exception type, message) a cell raised
    message: str = ""           # why the step did not finish
    output: str = ""            # what it printed (capped)


@dataclass
class WorkerRun:
    outcomes: dict[int, StepOutcome] = field(default_factory=dict)
    sandbox: str = ""           # "bubblewrap" or "unsandboxed: <why>"
    restarts: int = 0
    output_tail: str = ""


@functools.lru_cache(maxsize=1)
def bwrap_status() -> tuple[bool, str]:
    """(usable, why not): does bubblewrap exist here and can it create its namespaces?"""
    if os.environ.get("DSV3_GRADE_NO_SANDBOX") == "1":
        return False, "DSV3_GRADE_NO_SANDBOX=1"
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed"
    try:
        r = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap does not run: {e}"
    if r.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {r.stderr.strip()[:200]}"
    return True, ""


def _python_paths() -> list[str]:
    """Folders the interpreter needs, read-only: its prefixes and the existing sys.path folders."""
    root = repo_root().resolve()
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent)}
    for p in sys.path:
        if p and os.path.isdir(p):
            paths.add(os.path.realpath(p))
    out = []
    for p in sorted(paths):
        rp = Path(p).resolve()
        if rp == root or root in rp.parents or rp == Path("/"):
            continue  # the checkout itself: only the package is shown (below)
        out.append(str(rp))
    return out


def bwrap_command(workdir: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    root = repo_root().resolve()
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
           "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for sysdir in ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/etc"):
        if os.path.lexists(sysdir):
            cmd += ["--ro-bind", sysdir, sysdir] if not os.path.islink(sysdir) else \
                   ["--symlink", os.readlink(sysdir), sysdir]
    for p in _python_paths():
        cmd += ["--ro-bind", p, p]
    for part in ("dsv3_edu", "data"):
        if (root / part).is_dir():
            cmd += ["--ro-bind", str(root / part), str(root / part)]
    # the fixtures would be inside the package only if someone put them there: hide them anyway
    if (root / "dsv3_edu" / "grade" / "fixtures").is_dir():
        cmd += ["--tmpfs", str(root / "dsv3_edu" / "grade" / "fixtures")]
    cmd += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--clearenv"]
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    return cmd + argv


def worker_env(workdir: Path, fast: bool | None = None) -> dict[str, str]:
    """The worker's whole environment: nothing of the grader's except what is needed to run."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "PYTHONPATH": str(repo_root().resolve()),
           "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(workdir / ".mpl"), "IPYTHONDIR": str(workdir / ".ipython"),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(workdir / "tmp"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "LANG": "C.UTF-8", "DSV3_GRADE_WORKER": "1"}
    fast_env = os.environ.get("DSV3_FAST") if fast is None else ("1" if fast else "0")
    if fast_env is not None:
        env["DSV3_FAST"] = fast_env
    return env


def _limits(cpu_seconds: int):
    def apply():
        import resource
        os.setsid()
        for lim, value in ((resource.RLIMIT_AS, MEMORY_LIMIT), (resource.RLIMIT_FSIZE, FILE_LIMIT),
                           (resource.RLIMIT_CPU, cpu_seconds), (resource.RLIMIT_CORE, 0)):
            try:
                resource.setrlimit(lim, (value, value))
            except (ValueError, OSError):
                pass
    return apply


def _read_progress(path: Path) -> list[dict]:
    events = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return events
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events


def run_worker(workdir: Path, steps: list[dict], limits: list[float], total_limit: float,
               fast: bool | None = None, log=None) -> WorkerRun:
    """Run the plan's steps in sandboxed workers; the outcome of every step (see StepOutcome)."""
    usable, why = bwrap_status()
    run = WorkerRun(sandbox="bubblewrap" if usable else f"unsandboxed: {why}")
    (workdir / "tmp").mkdir(exist_ok=True)
    skip: set[int] = set()
    done_probes: set[int] = set()
    deadline = time.monotonic() + total_limit
    while True:
        plan = {"steps": steps, "skip": sorted(skip), "skip_probes": sorted(done_probes)}
        (workdir / "plan.json").write_text(json.dumps(plan))
        progress = workdir / "progress.jsonl"
        progress.unlink(missing_ok=True)
        env = worker_env(workdir, fast)
        argv = [sys.executable, "-m", "dsv3_edu.grade.worker", str(workdir)]
        cmd = bwrap_command(workdir, argv, env) if usable else argv
        cpu = int(total_limit) + 60
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=workdir, env=None if usable else env,
                                preexec_fn=_limits(cpu))  # noqa: PLW1509 (setrlimit before exec; the reader thread starts after)
        counted = [0]
        tail = bytearray()

        def pump(proc=proc, counted=counted, tail=tail):
            while True:
                chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(65536)
                if not chunk:
                    return
                counted[0] += len(chunk)
                tail.extend(chunk)
                del tail[:-20000]

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        killed = None
        started_at = time.monotonic()
        current, current_t, done_t = None, None, None
        while proc.poll() is None:
            time.sleep(0.05)
            events = _read_progress(progress)
            if any(e.get("event") == "done" for e in events):
                done_t = done_t or time.monotonic()
                if time.monotonic() - done_t > 5:  # finished, but something of the learner's lingers
                    _kill(proc)
                    break
                continue
            starts = [e for e in events if e.get("event") == "start"]
            ends = {e.get("step") for e in events if e.get("event") == "end"}
            if starts and starts[-1].get("step") not in ends:
                if starts[-1].get("step") != current:
                    current, current_t = starts[-1].get("step"), time.monotonic()
            else:
                current, current_t = None, None
            now = time.monotonic()
            if counted[0] > OUTPUT_CAP:
                killed = ("output", f"printed more than {OUTPUT_CAP // 1_000_000} MB: stopped")
            elif now > deadline:
                killed = ("timeout", f"the whole grading ran longer than {total_limit:.0f} s: stopped")
            elif current is not None and isinstance(current, int) and 0 <= current < len(steps) \
                    and now - current_t > limits[current]:
                killed = ("timeout", f"ran longer than {limits[current]:g} s and was stopped")
            elif current is None and not any(e.get("event") in ("start", "done") for e in events) \
                    and now - started_at > START_TIMEOUT:
                killed = ("died", f"the grading worker did not start within {START_TIMEOUT} s")
            if killed:
                _kill(proc)
                break
        proc.wait()
        reader.join(timeout=5)
        run.output_tail = tail.decode(errors="replace")
        events = _read_progress(progress)
        ended = {}
        last_start = None
        for e in events:
            s = e.get("step")
            if not isinstance(s, int) or not 0 <= s < len(steps):
                continue
            if e.get("event") == "start":
                last_start = s
            elif e.get("event") == "end":
                err = e.get("error")
                ended[s] = tuple(err) if isinstance(err, list) and len(err) == 2 else None
        for s, err in ended.items():
            out = _read_text(workdir / "out" / f"{s}.txt")
            if s not in run.outcomes or run.outcomes[s].status in ("ok", "error"):
                run.outcomes[s] = StepOutcome("error" if err else "ok", err, output=out)
            if steps[s]["kind"] == "probe":
                done_probes.add(s)
        finished = any(e.get("event") == "done" for e in events)
        if finished and not killed:
            break
        # the worker stopped inside a step: charge it, restart after it
        if last_start is not None and last_start not in ended:
            if killed:
                status, msg = killed
            else:
                code = proc.returncode
                how = (f"killed by signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
                       else f"exit code {code}")
                status, msg = "died", f"the grading process ended in this cell ({how})"
            run.outcomes[last_start] = StepOutcome(status, None, msg, _read_text(workdir / "out" / f"{last_start}.txt"))
            skip.add(last_start)
        elif killed and killed[0] == "output":
            # flooded before any step started or between steps: nothing to charge but the run
            pass
        if (killed and killed[1].startswith("the whole grading")) or run.restarts >= MAX_RESTARTS \
                or (last_start is None and not finished) or time.monotonic() > deadline:
            reason = killed[1] if killed else "the grading process stopped repeatedly"
            if last_start is None and not killed:
                reason = f"the grading worker failed to start: {run.output_tail.strip()[-500:]}"
            for s in range(len(steps)):
                if s not in run.outcomes:
                    run.outcomes[s] = StepOutcome("not run", None, f"not run: {reason}")
            break
        run.restarts += 1
        if log:
            log(f"worker restarted after step {last_start} ({run.outcomes[last_start].message})")
    return run


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _kill(proc: subprocess.Popen) -> None:
    """Stop the worker and everything it started (its own session; bwrap's PID namespace dies with it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
