"""Kills aimed inside the C core's critical windows (issue 11).

The chaos test (test_chaos.py) SIGKILLs workers at random *moments*; most of
them land in Python, between calls, where little is at stake.  This harness
aims the kill: it stops a victim process with ptrace a random number of
machine instructions into one of the core's critical functions, and SIGKILLs
it there, then lets another process go on and checks the books.

How a kill is aimed
    The victim runs with a copy of the package whose core is built from the
    same ``_core.c`` with ``-fno-inline -g`` (and the usual ``-O2``), so every
    static function of the core is a symbol of its own (``insert_in_tier``,
    ``stripe_acquire``, ``repair_stripe``, and GCC's ``.isra``/``.constprop``
    clones, which are breakpointed too).  The tracer (the test process)
    attaches with ``PTRACE_ATTACH``, writes an ``int3`` at the entry of the
    window's function (through ``/proc/PID/mem``), lets the victim run until
    its k-th call of that function (k random), then single-steps it ``N``
    instructions (callees and libc included), and SIGKILLs it while it is
    stopped.  The first kill of a window steps the whole call, to learn its
    length, and kills right after its return; later ones take ``N`` uniform
    up to the longest call seen.  When the call returns before ``N`` steps,
    the kill lands right after the return, and that is counted apart
    ("returned").  ptrace is driven through
    ``ctypes``: no gdb, no extra package (x86-64 Linux only).

The windows (``WINDOWS``): new-key inserts (``insert_new_slot``,
``insert_in_tier``, the stripe's ``stripe_acquire``, ``stripe_after_wait``
(between the semaphore and the holder word) and ``stripe_release``), deletes
(``Core_delete``, ``tombstone_slot``), tombstone sweeps (``compact_tier``,
``compact_window``: the victim's inserts sweep every nslots/8 deletes, holding
every stripe), the admission lock (``admit_change``,
``admit_lock``), stripe takeover (``stripe_acquire`` of a stripe whose
holder is dead, and ``repair_stripe``: a first victim is killed holding the
stripe, and the second, aimed one is killed while taking it over), and tier
growth (``Core_add_tier``, ``Core_publish_tier``: the C half of
``Table._grow``, after the new tier's segment exists and while it is being
attached and published).

While the victim runs, is stopped and is killed (insert, delete and
admission-lock windows), a *peer* process works on the same table, on keys
of its own (a call every 2 ms); it must finish its last call after the
kill, and its books are checked as the victim's.

After every kill
    * a *successor* process (forked from the test process, with the normal
      core) runs verbs on every stripe (insert a new key, delete it), a
      longer run of inserts on a growing table, and times each call: it must
      finish within WEDGE_SECONDS (else: a wedge), and the slowest call is
      reported against the documented bound (``stripe_poll +
      stall_timeout``, plus SLACK for scheduling).  The test suite asserts
      no timing but the wedge; the script exits 1 when a call was over;
    * the books: the victim journals, in a shared mapping outside the table,
      how many of its calls it started and how many returned; its calls are
      a deterministic sequence (from its seed), so every returned add's key
      must be in the table exactly once with its amount, every returned
      delete's key absent, and the one call in flight either landed whole or
      not at all (an add of a new key inserts it holding its amount, so the
      key is absent or holds the amount, never 0);
    * ``check()`` passes (repairing what the victim left), and a second
      ``check()`` finds nothing left to repair.

Run it as a script for the nightly size: ``scripts/killpoints`` (which runs
``python tests/shm/killpoints.py --kills N``); the test suite's version is
tests/shm/test_killpoints.py.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import mmap
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

#: Recovery settings of every process (short, so kills stay cheap).
POLL, STALL = 0.05, 0.5
#: The documented bound on how long a dead holder stalls the next process.
BOUND = POLL + STALL
#: Scheduling allowance on top of BOUND before a call counts as over it
#: (the bound is documented "plus scheduling"; 2 shared cores here).
SLACK = 0.25
#: A successor that has not finished its verbs after this long is wedged.
WEDGE_SECONDS = 60.0
#: Most instructions single-stepped into one call.
MAX_STEPS = 400_000

MIXED_CAPACITY = 256
GROW_CAPACITY, GROW_MAX = 16, 512


@dataclasses.dataclass(frozen=True)
class Window:
    """A kill point: break in ``function`` while a victim in ``mode`` runs."""

    name: str
    function: str
    mode: str              # "mixed", "takeover" or "grow"


WINDOWS: Tuple[Window, ...] = (
    Window("insert_new_slot", "insert_new_slot", "mixed"),
    Window("insert_in_tier", "insert_in_tier", "mixed"),
    Window("stripe_acquire", "stripe_acquire", "mixed"),
    Window("stripe_after_wait", "stripe_after_wait", "mixed"),
    Window("stripe_release", "stripe_release", "mixed"),
    Window("admit_change", "admit_change", "mixed"),
    Window("admit_lock", "admit_lock", "mixed"),
    Window("Core_delete", "Core_delete", "mixed"),
    Window("tombstone_slot", "tombstone_slot", "mixed"),
    Window("compact_tier", "compact_tier", "mixed"),
    Window("compact_window", "compact_window", "mixed"),
    Window("stripe_acquire/takeover", "stripe_acquire", "takeover"),
    Window("repair_stripe", "repair_stripe", "takeover"),
    Window("Core_add_tier", "Core_add_tier", "grow"),
    Window("Core_publish_tier", "Core_publish_tier", "grow"),
)

# Journal words (int64) of one victim.
J_READY, J_GO, J_STARTED, J_DONE, J_BAD, J_BADINFO, J_TAKEOVERS, J_FINISHED = range(8)
JOURNAL_WORDS = 8


# --------------------------------------------------------------------------
# The victim's calls: a deterministic sequence, replayed by the checker
# --------------------------------------------------------------------------

def plan(mode: str, seed: int, kid: int, stripe_of=None, stripe: int = -1
         ) -> Iterator[Tuple[str, object, int]]:
    """The victim's calls, in order: (kind, key, amount).

    ``mixed``: adds of new keys and ``load_and_delete`` of the oldest live
    one; ``takeover``: adds of new keys that all fall in ``stripe``
    (``stripe_of(key)``); ``grow``: adds of new keys only.  Each key is added
    once, so a returned add must leave exactly its amount, and a returned
    delete must have drained exactly that.
    """
    rng = random.Random(seed)
    live: List[Tuple[object, int]] = []
    i = 0
    while True:
        if mode == "mixed" and live and (len(live) > 24 or rng.random() < 0.4):
            key, amount = live.pop(0)
            yield "delete", key, amount
            continue
        amount = rng.randint(1, 9)
        if mode == "takeover":
            salt = next((k for k in range(100_000)
                         if stripe_of(("v", kid, i, k)) == stripe), None)
            if salt is None:
                raise RuntimeError(f"no key of stripe {stripe} in 100,000 tries")
            key: object = ("v", kid, i, salt)
        else:
            key = ("v", kid, i)
        i += 1
        live.append((key, amount))
        yield "add", key, amount


def open_journal(path: str) -> Tuple[mmap.mmap, "ctypes.Array[ctypes.c_int64]"]:
    """Map the journal file: int64 words shared by the victim and the tracer."""
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), JOURNAL_WORDS * 8)
    return mm, (ctypes.c_int64 * JOURNAL_WORDS).from_buffer(mm)


def open_table(name: str, mode: str):
    """Attach to (or create) a kill's table, with the short recovery bound."""
    import shmdict
    if mode == "grow":
        return shmdict.open(name, shmdict.Counter(), capacity=GROW_CAPACITY,
                            max_capacity=GROW_MAX, stripe_poll=POLL, stall_timeout=STALL)
    return shmdict.open(name, shmdict.Counter(), capacity=MIXED_CAPACITY,
                        stripe_poll=POLL, stall_timeout=STALL)


def victim_main(args: Dict[str, object]) -> int:
    """The victim: run the plan's calls until killed, journaling each one."""
    import warnings
    import shmdict
    from shmdict.backends.shm import _core
    warnings.simplefilter("ignore")
    expected = str(args["core"])
    if os.path.realpath(_core.__file__) != os.path.realpath(expected):
        print(f"victim imported the wrong core: {_core.__file__} (wanted {expected})",
              file=sys.stderr)
        return 3
    mm, j = open_journal(str(args["journal"]))
    table = shmdict.open(str(args["table"]), shmdict.Counter(), create=False,
                         capacity=GROW_CAPACITY if args["mode"] == "grow" else MIXED_CAPACITY,
                         max_capacity=GROW_MAX if args["mode"] == "grow" else None,
                         stripe_poll=POLL, stall_timeout=STALL)
    j[J_READY] = 1
    deadline = time.monotonic() + 30
    while not j[J_GO]:
        if time.monotonic() > deadline:
            return 4
        time.sleep(0.0005)
    calls = plan(str(args["mode"]), int(args["seed"]), int(args["kid"]),
                 table._stripe_of_key, int(args["stripe"]))
    for n, (kind, key, amount) in enumerate(calls):
        if n >= 50_000 or time.monotonic() > deadline:
            return 5                      # never reached the breakpoint
        j[J_STARTED] = n + 1
        if kind == "add":
            got = table.add(key, amount)
            ok = got == amount
        else:
            got, existed = table.load_and_delete(key)
            ok = existed and got == amount
        if not ok:
            j[J_BADINFO] = n
            j[J_BAD] = 1
        j[J_DONE] = n + 1
    return 0


# --------------------------------------------------------------------------
# The instrumented core
# --------------------------------------------------------------------------

def core_source() -> Path:
    """``_core.c`` of the shmdict this process imports (installed beside it)."""
    import shmdict.backends.shm as shm
    return Path(shm.__file__).parent / "_core.c"


def build_instrumented(workdir: Path) -> Tuple[Path, Path]:
    """Copy the package to ``workdir`` with a core built ``-fno-inline -g``.

    Returns (directory to run the victim from, path of the built core).
    Raises RuntimeError (with the compiler's output) when it cannot build.
    """
    import shmdict
    src = Path(shmdict.__file__).parent
    dest = workdir / "shmdict"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(__file__, workdir / "killpoints.py")
    # The same flags as setup.py, plus -fno-inline -g; compiled directly (no
    # setuptools: a Python 3.12+ venv has none).
    flags = ["-std=gnu11", "-O2", "-g", "-fno-inline", "-fPIC", "-shared"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mcx16")
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler")
    mutate(dest / "backends" / "shm" / "_core.c")
    out = dest / "backends" / "shm" / ("_core" + sysconfig.get_config_var("EXT_SUFFIX"))
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run(cc + flags + ["-I", sysconfig.get_paths()["include"],
                                        str(dest / "backends" / "shm" / "_core.c"),
                                        "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError("cannot build the instrumented core:\n" + proc.stdout + proc.stderr)
    return workdir, out


def mutate(source: Path) -> None:
    """Plant a bug in the victim's copy of the core, to see the harness catch
    it: ``SHMDICT_KILLPOINTS_MUTATE`` names a JSON file holding a list of
    [old, new] text replacements (each ``old`` must occur in ``_core.c``).
    Only the victims run the mutant; every other process runs the real core."""
    spec = os.environ.get("SHMDICT_KILLPOINTS_MUTATE")
    if not spec:
        return
    text = source.read_text()
    for old, new in json.loads(Path(spec).read_text()):
        if old not in text:
            raise RuntimeError(f"mutation {old!r} does not occur in {source}")
        text = text.replace(old, new, 1)
    source.write_text(text)
    print(f"killpoints: victims run a MUTANT core ({spec})", file=sys.stderr)


def compiler() -> Optional[List[str]]:
    """The C compiler this Python builds extensions with, if it is installed."""
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    if shutil.which(cc[0]) is None:
        cc = ["cc"]
    return cc if shutil.which(cc[0]) else None


def function_symbols(path: Path) -> Dict[str, List[Tuple[int, int]]]:
    """Function symbols of an ELF64 shared object: name -> [(value, size)].

    GCC's clones (``name.isra.0``, ``name.constprop.0``) are listed under the
    plain name too, so a breakpoint on a function catches all its copies.
    """
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise RuntimeError(f"{path} is not a little-endian ELF64 object")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + k * shentsize)
                for k in range(shnum)]
    out: Dict[str, List[Tuple[int, int]]] = {}
    for sh in sections:
        if sh[1] != 2:                    # SHT_SYMTAB
            continue
        off, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
        stroff = sections[link][4]
        for e in range(off, off + size, entsize):
            st_name, st_info, _other, shndx, value, sz = struct.unpack_from("<IBBHQQ", data, e)
            if st_info & 0xF != 2 or shndx == 0 or value == 0:   # STT_FUNC, defined
                continue
            end = data.index(b"\0", stroff + st_name)
            name = data[stroff + st_name:end].decode()
            out.setdefault(name.split(".")[0], []).append((value, sz))
            if "." in name:
                out.setdefault(name, []).append((value, sz))
    return out


# --------------------------------------------------------------------------
# ptrace through ctypes (x86-64 Linux)
# --------------------------------------------------------------------------

PTRACE_CONT, PTRACE_SINGLESTEP, PTRACE_GETREGS, PTRACE_SETREGS = 7, 9, 12, 13
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
WALL = 0x40000000                       # waitpid's __WALL (not in the os module)


class Regs(ctypes.Structure):
    """struct user_regs_struct of x86-64."""

    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
        "eflags rsp ss fs_base gs_base ds es fs gs").split()]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    r = _libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if r == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, f"ptrace({req}, {pid}): {os.strerror(err)}")
    return r


def ptrace_unavailable() -> Optional[str]:
    """Why this machine cannot run the harness, or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the ptrace harness drives x86-64 Linux only (this is {sys.platform}/" \
               f"{platform.machine()})"
    try:
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        scope = "0"
    if scope == "3":
        return "ptrace is disabled on this machine (kernel.yama.ptrace_scope = 3)"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _ptrace(PTRACE_ATTACH, child.pid)
    except OSError as exc:
        return f"ptrace(PTRACE_ATTACH) of a child process is refused here: {exc}"
    finally:
        # os.kill, not child.kill(): Popen's kill polls first, and its poll
        # can reap the attach stop as the child's "exit", then never signal.
        os.kill(child.pid, signal.SIGKILL)
    try:
        while True:                      # the attach stop, then the death
            _, st = os.waitpid(child.pid, WALL)
            if not os.WIFSTOPPED(st):
                break
    except ChildProcessError:
        pass
    child.returncode = -9
    return None


class Traced:
    """A victim process stopped and driven with ptrace (all calls from one thread)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: Optional[int] = None       # set once the process is reaped
        _ptrace(PTRACE_ATTACH, pid)
        while True:
            st = self._wait()
            if st is None:
                raise RuntimeError("victim died before it could be attached")
            if os.WSTOPSIG(st) == signal.SIGSTOP:
                break
            _ptrace(PTRACE_CONT, pid, 0, os.WSTOPSIG(st))
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
        self.breakpoints: Dict[int, bytes] = {}

    def _wait(self) -> Optional[int]:
        """The next stop's status; None (status kept) when the process ended."""
        _, st = os.waitpid(self.pid, WALL)
        if os.WIFSTOPPED(st):
            return st
        self.status = st
        return None

    def regs(self) -> Regs:
        r = Regs()
        _ptrace(PTRACE_GETREGS, self.pid, 0, ctypes.addressof(r))
        return r

    def set_regs(self, r: Regs) -> None:
        _ptrace(PTRACE_SETREGS, self.pid, 0, ctypes.addressof(r))

    def break_at(self, addresses: Sequence[int]) -> None:
        for a in addresses:
            self.breakpoints[a] = os.pread(self.mem, 1, a)
            os.pwrite(self.mem, b"\xcc", a)

    def clear_breakpoints(self) -> None:
        for a, b in self.breakpoints.items():
            os.pwrite(self.mem, b, a)
        self.breakpoints.clear()

    def run_to_breakpoint(self, hits: int) -> bool:
        """Continue until the ``hits``-th breakpoint hit (1-based); stopped at
        the function's first instruction, breakpoints removed.  False if the
        process ended first."""
        sig = 0
        while True:
            _ptrace(PTRACE_CONT, self.pid, 0, sig)
            st = self._wait()
            if st is None:
                return False
            sig = os.WSTOPSIG(st)
            if sig != signal.SIGTRAP:
                continue                        # pass other signals on
            sig = 0
            r = self.regs()
            at = r.rip - 1
            if at not in self.breakpoints:
                continue
            r.rip = at
            self.set_regs(r)
            hits -= 1
            if hits <= 0:
                self.clear_breakpoints()
                return True
            # Step over this one (original byte back for one instruction).
            saved = self.breakpoints[at]
            os.pwrite(self.mem, saved, at)
            if not self.step():
                return False
            os.pwrite(self.mem, b"\xcc", at)

    def step(self) -> bool:
        """One instruction; False if the process ended."""
        sig = 0
        while True:
            _ptrace(PTRACE_SINGLESTEP, self.pid, 0, sig)
            st = self._wait()
            if st is None:
                return False
            sig = os.WSTOPSIG(st)
            if sig == signal.SIGTRAP:
                return True
            # Another signal arrived: deliver it with the next step.

    def step_into(self, n: int) -> Tuple[int, bool, int]:
        """Step up to ``n`` instructions, stopping early when the current
        call returns.  Returns (steps done, returned, rip)."""
        entry_sp = self.regs().rsp
        for k in range(n):
            if not self.step():
                return k, False, 0
            r = self.regs()
            if r.rsp > entry_sp:
                return k + 1, True, r.rip
        return n, False, self.regs().rip

    def kill(self) -> int:
        """SIGKILL the (stopped) process and reap it; its wait status."""
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            while self._wait() is not None:
                pass
        os.close(self.mem)
        return self.status if self.status is not None else 0


def core_base(pid: int, core: Path) -> int:
    """Load address of ``core`` in process ``pid`` (its offset-0 mapping)."""
    real = os.path.realpath(core)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and os.path.realpath(parts[5]) == real and int(parts[2], 16) == 0:
            return int(parts[0].split("-")[0], 16)
    raise RuntimeError(f"{core} is not mapped in process {pid}")


# --------------------------------------------------------------------------
# The successor: the next process, which must get through
# --------------------------------------------------------------------------

# Successor result words.
S_DONE, S_CALLS, S_MAX_US, S_OVER, S_TAKEOVERS, S_ERROR, S_STALLED = range(7)
SUCCESSOR_WORDS = 7


def _peer(name: str, seed: int, kid: int, j, stop) -> None:
    """Another process at work on the table while the victim is stopped and
    killed: the mixed plan on keys of its own, a call every 2 ms,
    journaled as a victim's, until ``stop`` is set (bounded: 120 s)."""
    import warnings
    warnings.simplefilter("ignore")
    table = open_table(name, "mixed")
    deadline = time.monotonic() + 120
    for n, (kind, key, amount) in enumerate(plan("mixed", seed, kid)):
        if stop.value or time.monotonic() > deadline:
            break
        j[J_STARTED] = n + 1
        if kind == "add":
            ok = table.add(key, amount) == amount
        else:
            ok = table.load_and_delete(key) == (amount, True)
        if not ok:
            j[J_BADINFO] = n
            j[J_BAD] = 1
        j[J_DONE] = n + 1
        time.sleep(0.002)
    j[J_TAKEOVERS] = table._stripes.takeovers
    j[J_FINISHED] = 1
    table.close()


def _successor(name: str, mode: str, kid: int, out) -> None:
    """Insert and delete a new key in every stripe, grow a growing table
    further, timing every call; book them in ``out``."""
    import warnings
    import shmdict
    warnings.simplefilter("ignore")
    try:
        table = open_table(name, mode)
        calls, worst, over, stalled = 0, 0.0, 0, 0

        def timed(fn, *a):
            nonlocal calls, worst, over, stalled
            t0 = time.monotonic()
            r = fn(*a)
            dt = time.monotonic() - t0
            calls += 1
            worst = max(worst, dt)
            over += dt > BOUND + SLACK
            stalled += dt >= STALL      # waited out stall_timeout: no holder recorded
            return r

        nstripes = table._nstripes
        probes: Dict[int, object] = {}
        j = 0
        while len(probes) < nstripes and j < 100 * nstripes:
            key = ("probe", kid, j)
            probes.setdefault(table._stripe_of_key(key), key)
            j += 1
        for key in probes.values():
            assert timed(table.add, key, 1) == 1, f"probe {key} did not start at 0"
            assert timed(table.load_and_delete, key) == (1, True), f"probe {key} lost"
        if mode == "grow":
            extra = [("more", kid, i) for i in range(3 * GROW_CAPACITY)]
            for key in extra:
                assert timed(table.add, key, 1) == 1
            for key in extra:
                assert timed(table.load_and_delete, key) == (1, True)
        timed(len, table)
        out[S_CALLS] = calls
        out[S_MAX_US] = int(worst * 1e6)
        out[S_OVER] = over
        out[S_STALLED] = stalled
        out[S_TAKEOVERS] = table._stripes.takeovers
        out[S_DONE] = 1
        table.close()
    except BaseException as exc:             # reported by the parent
        out[S_ERROR] = 1
        sys.stderr.write(f"successor failed: {exc!r}\n")
        raise


# --------------------------------------------------------------------------
# The campaign
# --------------------------------------------------------------------------

@dataclasses.dataclass
class WindowFigures:
    kills: int = 0
    inside: int = 0            # killed before the call returned
    returned: int = 0          # the call returned before N steps: killed just after
    max_steps: int = 0         # deepest kill, instructions into the call
    longest_call: int = 0      # the longest call seen (instructions)
    in_flight: Dict[str, int] = dataclasses.field(default_factory=dict)
    landed: int = 0            # in-flight calls whose effect is in the table
    successor_takeovers: int = 0
    check_repairs: int = 0
    worst_successor_ms: float = 0.0
    over_bound: int = 0        # successor calls slower than BOUND + SLACK
    stall_waits: int = 0       # successor calls that waited out stall_timeout
    stopped_in: Dict[str, int] = dataclasses.field(default_factory=dict)
    peer_calls: int = 0        # calls of the process at work beside the victim
    peer_takeovers: int = 0


@dataclasses.dataclass
class Figures:
    seed: int
    windows: Dict[str, WindowFigures] = dataclasses.field(default_factory=dict)
    victims: int = 0           # processes killed (pre-victims of takeovers included)
    successor_calls: int = 0
    elapsed: float = 0.0

    def lines(self) -> List[str]:
        out = [f"killpoints: {sum(w.kills for w in self.windows.values())} aimed kills "
               f"({self.victims} processes SIGKILLed) in {len(self.windows)} windows, "
               f"{self.successor_calls} successor calls, seed {self.seed}, "
               f"{self.elapsed:.1f}s; bound stripe_poll+stall_timeout = {BOUND:.2f}s "
               f"(+{SLACK:.2f}s scheduling before a call counts as over it)"]
        for name, w in self.windows.items():
            out.append(
                f"  {name:24} kills {w.kills:4}  inside {w.inside:4}  returned {w.returned:3}"
                f"  deepest {w.max_steps:6} of {w.longest_call:6} instr  in flight "
                f"{dict(sorted(w.in_flight.items()))} landed {w.landed}  successor "
                f"takeovers {w.successor_takeovers}  peer calls {w.peer_calls} (takeovers "
                f"{w.peer_takeovers})  check repairs {w.check_repairs}  "
                f"slowest successor call {w.worst_successor_ms:.0f} ms (waited out "
                f"stall_timeout {w.stall_waits}, over the bound {w.over_bound})")
            where = sorted(w.stopped_in.items(), key=lambda kv: -kv[1])
            out.append(f"  {'':24} stopped in {len(where)} functions: "
                       + ", ".join(f"{f} {n}" for f, n in where[:8])
                       + (" ..." if len(where) > 8 else ""))
        return out


class Campaign:
    """Runs aimed kills; every check failing raises AssertionError saying
    which kill (seed, kill id, window, instructions) broke what."""

    def __init__(self, workdir: Path, seed: int, log=print) -> None:
        self.workdir = workdir
        self.seed = seed
        self.rng = random.Random(seed)
        self.log = log
        self.run_dir, self.core = build_instrumented(workdir)
        self.symbols = function_symbols(self.core)
        missing = [w.function for w in WINDOWS if w.function not in self.symbols]
        if missing:
            raise RuntimeError(f"the instrumented core has no symbol for {missing}")
        self.figures = Figures(seed)
        self.longest: Dict[str, int] = {}
        self._by_address: Optional[List[Tuple[int, int, str]]] = None
        self.verbose = False
        self.prefix = f"kp.{os.getpid()}"
        self.ctx = multiprocessing.get_context("fork")

    # ---------------------------------------------------------------- victims
    def _spawn_victim(self, table: str, mode: str, kid: int, seed: int, stripe: int
                      ) -> Tuple[int, mmap.mmap, "ctypes.Array[ctypes.c_int64]", str]:
        jpath = str(self.workdir / f"journal.{kid}")
        with open(jpath, "wb") as f:
            f.write(b"\0" * JOURNAL_WORDS * 8)
        mm, j = open_journal(jpath)
        args = {"table": table, "mode": mode, "kid": kid, "seed": seed, "stripe": stripe,
                "journal": jpath, "core": str(self.core)}
        env = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "PYTHONPATH", "COVERAGE_PROCESS_START")}
        pid = os.posix_spawn(sys.executable,
                             [sys.executable, str(self.run_dir / "killpoints.py"),
                              "--victim", json.dumps(args)], env)
        deadline = time.monotonic() + 60
        while not j[J_READY]:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                raise AssertionError(f"victim {kid} exited before it was ready "
                                     f"(status {status}): {args}")
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"victim {kid} did not start within 60 s")
            time.sleep(0.002)
        os.unlink(jpath)                  # both have it mapped
        return pid, mm, j, jpath

    def _aim(self, pid: int, j, window: Window, kid: int) -> Tuple[bool, int, bool, str]:
        """Attach, break in the window's function, step a random number of
        instructions, SIGKILL.  Returns (reached, steps, returned, the
        function the victim was stopped in).

        The first kill of a window calibrates it: it steps the whole call
        (up to MAX_STEPS) and kills right after the return; later kills step
        N uniform in [0, the longest call seen], so they land anywhere in the
        call, callees included (just after it when this call is shorter)."""
        watchdog = threading.Timer(120, os.kill, (pid, signal.SIGKILL))
        watchdog.start()
        stopped_in = "-"
        try:
            t = Traced(pid)
            base = core_base(pid, self.core)
            t.break_at([base + v for v, _ in self.symbols[window.function]])
            j[J_GO] = 1
            hits = 1 if window.mode != "mixed" else self.rng.randint(1, 12)
            reached = t.run_to_breakpoint(hits)
            steps, returned = 0, False
            if reached:
                longest = self.longest.get(window.name)
                n = MAX_STEPS if longest is None else self.rng.randint(0, longest)
                steps, returned, rip = t.step_into(min(n, MAX_STEPS))
                self.longest[window.name] = max(longest or 0, steps)
                stopped_in = self._function_at(rip - base)
            status = t.kill()
        finally:
            watchdog.cancel()
        if reached and not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise AssertionError(f"kill {kid}: victim ended with status {status}, not SIGKILL")
        return reached, steps, returned, stopped_in

    def _function_at(self, offset: int) -> str:
        """The core's function containing ``offset`` (from its load address),
        or "outside the core" (libc, the vDSO, the interpreter)."""
        if self._by_address is None:
            self._by_address = sorted((v, sz, name) for name, places in self.symbols.items()
                                      if "." not in name for v, sz in places)
        for v, sz, name in self._by_address:
            if v <= offset < v + max(sz, 1):
                return name
        return "outside the core"

    # ------------------------------------------------------------------ books
    def _books(self, table, mode: str, kid: int, seed: int, stripe: int, j,
               figures: Optional[WindowFigures], where: str) -> None:
        started, done = j[J_STARTED], j[J_DONE]
        assert not j[J_BAD], f"{where}: the victim's call {j[J_BADINFO]} returned a wrong value"
        assert done in (started, started - 1), f"{where}: journal {started}/{done}"
        calls = plan(mode, seed, kid, table._stripe_of_key, stripe)
        present: Dict[object, int] = {}
        in_flight = None
        for n in range(started):
            kind, key, amount = next(calls)
            if n < done:
                if kind == "add":
                    present[key] = amount
                else:
                    present.pop(key)
            else:
                in_flight = (kind, key, amount)
        mine: Dict[object, List[int]] = {}
        for key, value in table.items():
            if isinstance(key, tuple) and key[:2] == ("v", kid):
                mine.setdefault(key, []).append(value)
        dup = {k: v for k, v in mine.items() if len(v) != 1}
        assert not dup, f"{where}: keys in the table more than once: {dup}"
        got = {k: v[0] for k, v in mine.items()}
        landed = False
        if in_flight is not None:
            kind, key, amount = in_flight
            if kind == "add":
                # An add of a new key inserts it holding the amount: the key
                # is absent, or there with the amount, never at 0.
                if key in got:
                    assert got[key] == amount, \
                        f"{where}: in-flight add of {amount} to {key} left {got[key]}"
                    landed = got.pop(key) == amount
            else:
                # A delete in flight: the key still holds its amount, or is gone.
                landed = key not in got
                if not landed:
                    assert got[key] == amount, \
                        f"{where}: in-flight delete of {key} left {got[key]}, not {amount}"
                    present.pop(key)
                    got.pop(key)
                else:
                    present.pop(key)
        assert got == present, (
            f"{where}: the table disagrees with the victim's returned calls: missing "
            f"{ {k: v for k, v in present.items() if got.get(k) != v} }, extra "
            f"{ {k: v for k, v in got.items() if k not in present} }")
        if figures is not None:
            kind = in_flight[0] if in_flight else "none"
            figures.in_flight[kind] = figures.in_flight.get(kind, 0) + 1
            figures.landed += landed

    def _successor(self, name: str, mode: str, kid: int, figures: WindowFigures,
                   where: str) -> None:
        out = multiprocessing.RawArray(ctypes.c_int64, SUCCESSOR_WORDS)
        p = self.ctx.Process(target=_successor, args=(name, mode, kid, out))
        p.start()
        p.join(WEDGE_SECONDS)
        if p.is_alive():
            p.kill()
            p.join()
            raise AssertionError(f"{where}: WEDGE: the next process's verbs did not return "
                                 f"within {WEDGE_SECONDS:.0f} s")
        assert p.exitcode == 0 and out[S_DONE] and not out[S_ERROR], \
            f"{where}: the next process failed (exit {p.exitcode})"
        self.figures.successor_calls += out[S_CALLS]
        figures.worst_successor_ms = max(figures.worst_successor_ms, out[S_MAX_US] / 1000)
        figures.over_bound += out[S_OVER]
        figures.stall_waits += out[S_STALLED]
        figures.successor_takeovers += out[S_TAKEOVERS]

    # ------------------------------------------------------------------- kills
    def kill_once(self, window: Window, kid: int) -> None:
        """One aimed kill in ``window``, and every check after it."""
        import shmdict
        figures = self.figures.windows.setdefault(window.name, WindowFigures())
        name = f"{self.prefix}.{kid}"
        table = open_table(name, window.mode)
        where = f"kill {kid} (seed {self.seed}, window {window.name})"
        try:
            stripe = -1
            victims = []
            if window.mode == "takeover":
                # A first victim killed holding a stripe (inside insert_in_tier).
                pre_seed = self.rng.getrandbits(32)
                pid, _mm, j, _ = self._spawn_victim(name, "mixed", kid + 1_000_000, pre_seed, -1)
                reached, *_ = self._aim(pid, j, Window("pre", "insert_in_tier", "mixed"),
                                        kid + 1_000_000)
                assert reached, f"{where}: the first victim never reached insert_in_tier"
                self.figures.victims += 1
                calls = plan("mixed", pre_seed, kid + 1_000_000)
                for _ in range(j[J_STARTED]):
                    _kind, key, _amount = next(calls)
                stripe = table._stripe_of_key(key)
                victims.append(("mixed", kid + 1_000_000, pre_seed, -1, j))
            peer = None
            if window.mode == "mixed":
                # Another process at work throughout, on keys of its own.
                pj = multiprocessing.RawArray(ctypes.c_int64, JOURNAL_WORDS)
                stop = multiprocessing.RawValue(ctypes.c_int64, 0)
                pseed = self.rng.getrandbits(32)
                peer = (self.ctx.Process(target=_peer, args=(name, pseed, kid + 2_000_000,
                                                             pj, stop)), pj, stop, pseed)
                peer[0].start()
            seed = self.rng.getrandbits(32)
            pid, _mm, j, _ = self._spawn_victim(name, window.mode, kid, seed, stripe)
            victims.append((window.mode, kid, seed, stripe, j))
            try:
                reached, steps, returned, stopped_in = self._aim(pid, j, window, kid)
            finally:
                if peer is not None:
                    peer[2].value = 1
                    peer[0].join(WEDGE_SECONDS)
                    if peer[0].is_alive():
                        peer[0].kill()
                        peer[0].join()
                        raise AssertionError(f"{where}: WEDGE: the peer did not finish its "
                                             f"call within {WEDGE_SECONDS:.0f} s of the kill")
            if peer is not None:
                proc, pj, _stop, pseed = peer
                assert proc.exitcode == 0 and pj[J_FINISHED], f"{where}: the peer failed"
                assert pj[J_STARTED] == pj[J_DONE], f"{where}: the peer stopped mid-call"
                figures.peer_calls += pj[J_DONE]
                figures.peer_takeovers += pj[J_TAKEOVERS]
                victims.append(("mixed", kid + 2_000_000, pseed, -1, pj))
            assert reached, f"{where}: the victim never called {window.function}"
            figures.stopped_in[stopped_in] = figures.stopped_in.get(stopped_in, 0) + 1
            self.figures.victims += 1
            figures.kills += 1
            figures.inside += not returned
            figures.returned += returned
            figures.max_steps = max(figures.max_steps, steps)
            figures.longest_call = self.longest.get(window.name, 0)
            where += (f", {steps} instructions in{' (returned)' if returned else ''}, "
                      f"stopped in {stopped_in}")
            try:
                self._successor(name, window.mode, kid, figures, where)
                for mode, vkid, vseed, vstripe, vj in victims:
                    self._books(table, mode, vkid, vseed, vstripe, vj,
                                figures if vkid == kid else None, where)
                report = table.check()
                assert report, f"{where}: check() after the kill:\n{report}"
                figures.check_repairs += len(report.repaired)
                again = table.check()
                assert again and not again.repaired, f"{where}: second check():\n{again}"
            except shmdict.ShmDictError as exc:
                raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc
            if self.verbose:
                self.log(f"ok: {where}")
        finally:
            table.close()
            shmdict.unlink(name)

    def run(self, kills: int, windows: Sequence[Window] = WINDOWS) -> Figures:
        start = time.monotonic()
        for w in windows:
            self.figures.windows.setdefault(w.name, WindowFigures())
        try:
            for kid in range(kills):
                self.kill_once(windows[kid % len(windows)], kid)
        finally:
            self.figures.elapsed = time.monotonic() - start
        return self.figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int,
                        default=int(os.environ.get("SHMDICT_KILLPOINTS", "2000")))
    parser.add_argument("--seed", type=int,
                        default=int(os.environ.get("SHMDICT_KILLPOINTS_SEED",
                                                   random.randrange(1 << 30))))
    parser.add_argument("--window", action="append", help="only these windows (repeat)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per kill")
    parser.add_argument("--victim", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.victim:
        return victim_main(json.loads(args.victim))
    why = ptrace_unavailable()
    if why:
        print(f"killpoints: cannot run: {why}", file=sys.stderr)
        return 2
    windows = [w for w in WINDOWS if not args.window or w.name in args.window]
    # SIGTERM (a CI timeout) unwinds like an error: the figures so far are
    # printed, the current table unlinked, the scratch directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="shmdict-killpoints.") as tmp:
        campaign = Campaign(Path(tmp), args.seed)
        campaign.verbose = args.verbose
        try:
            campaign.run(args.kills, windows)
        finally:
            print("\n".join(campaign.figures.lines()))
    over = sum(w.over_bound for w in campaign.figures.windows.values())
    if over:
        print(f"killpoints: {over} successor calls took longer than the bound "
              f"({BOUND:.2f}s + {SLACK:.2f}s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
