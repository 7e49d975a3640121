"""Several real users on one host: planted segments and semaphores are refused,
group sharing and tables made for another user (gunicorn ``--user``) work.

Needs root, to create throwaway users (``useradd``) and run each user's side
in a subprocess as that user (``subprocess.run(user=, group=,
extra_groups=)``); skipped otherwise (CI runs as root).  The users are
removed at the end.  Every user's process imports shmdict from this tree and
its virtualenv, which must be readable by others (checked).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pytest

import shmdict

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root and useradd to create throwaway users")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PRELUDE = textwrap.dedent("""
    import json, os, sys, time
    import shmdict
    def report(fn):
        t0 = time.monotonic()
        try:
            out = {"ok": fn()}
        except Exception as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
        out["elapsed"] = time.monotonic() - t0
        print(json.dumps(out))
""")


def _readable_by_others(path):
    """Whether every directory up to ``path`` lets other users in."""
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not (mode & stat.S_IROTH and (not stat.S_ISDIR(mode) or mode & stat.S_IXOTH)):
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def importable_copy() -> str:
    """A directory other users may read holding what ``import shmdict`` needs:
    the package this interpreter imports (its built core included) and its
    two compiled dependencies.  The checkout and its virtualenv may be in a
    directory only root can enter (a CI clone in a 0700 temporary folder)."""
    import posix_ipc
    import xxhash
    copy = tempfile.mkdtemp(prefix="shmdict-multiuser-")
    os.chmod(copy, 0o755)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.dirname(shmdict.__file__), os.path.join(copy, "shmdict"),
                    ignore=ignore)
    shutil.copytree(os.path.dirname(xxhash.__file__), os.path.join(copy, "xxhash"),
                    ignore=ignore)
    shutil.copy2(posix_ipc.__file__, copy)
    for root, dirs, files in os.walk(copy):
        for entry in dirs + files:
            path = os.path.join(root, entry)
            os.chmod(path, os.stat(path).st_mode | stat.S_IROTH | stat.S_IRGRP
                     | (stat.S_IXOTH | stat.S_IXGRP if os.path.isdir(path) else 0))
    return copy


def other_users_python():
    """``(interpreter, environment)`` with which another user's process can run
    shmdict: this interpreter if others may run it, else the system's Python
    of the same version, with :func:`importable_copy` on ``PYTHONPATH`` (a
    pyenv Python under /root is not readable by other users).  None when
    there is neither."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        real = os.path.realpath(candidate)
        if os.path.exists(real) and _readable_by_others(real):
            return candidate
    return None


PYTHON = other_users_python()
#: Set by the ``users`` fixture: (interpreter, environment) for other users.
OTHER: dict = {}


class User:
    def __init__(self, name, groups=()):
        self.name = name
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.groups = list(groups)

    def run(self, code, umask=0o077):
        """Run ``code`` (after PRELUDE) as this user; the JSON lines it printed."""
        python, env = OTHER["python"], OTHER["env"]
        proc = subprocess.run(
            [python, "-c", PRELUDE + textwrap.dedent(code)], user=self.uid,
            group=self.gid, extra_groups=self.groups, umask=umask, cwd="/",
            capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def users():
    """Users a and b in group g, and x (the attacker, in no shared group)."""
    if PYTHON is None:
        pytest.skip(f"no Python {sys.version_info[:2]} that other users may run: the "
                    f"throwaway users could not import shmdict")
    copy = importable_copy()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "PYTHONPATH": copy}
    # A sanitized build of the core (CI's ASan run) needs its runtime preloaded.
    env.update({k: v for k, v in os.environ.items()
                if k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")})
    OTHER.update(python=PYTHON, env=env)
    tag = uuid.uuid4().hex[:6]
    group = f"shmdict-t-{tag}g"
    made = []
    subprocess.run(["groupadd", group], check=True)
    try:
        gid = __import__("grp").getgrnam(group).gr_gid
        out = {}
        for who, extra in (("a", [group]), ("b", [group]), ("x", [])):
            uname = f"shmdict-t-{tag}{who}"
            cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-U"]
            if extra:
                cmd += ["-G", ",".join(extra)]
            subprocess.run(cmd + [uname], check=True)
            made.append(uname)
            out[who] = User(uname, [gid] if extra else [])
        out["group"] = group
        out["gid"] = gid
        [probe] = out["a"].run("report(lambda: shmdict.__file__)")
        assert probe["ok"].startswith(copy), probe
        yield out
    finally:
        for uname in made:
            subprocess.run(["userdel", uname], check=False)
        subprocess.run(["groupdel", group], check=False)
        shutil.rmtree(copy, ignore_errors=True)


# ----------------------------------------------------------- planted files
def test_a_table_planted_by_another_user_is_refused(users, name):
    x, b = users["x"], users["b"]
    [made] = x.run(f"""
        d = shmdict.open({name!r}, shmdict.Counter(), capacity=100, mode=0o666)
        report(lambda: d.add("balance", 1_000_000))
    """, umask=0)
    assert made["ok"] == 1_000_000
    [victim] = b.run(f"""
        report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=100).read("balance"))
    """)
    assert victim["error"] == "UnsafeSegment", victim
    assert x.name in victim["message"] and str(x.uid) in victim["message"]
    assert "0o666" in victim["message"]
    assert victim["elapsed"] < 4  # at once: no 5 s attach wait


@pytest.mark.parametrize("mode", [0o666, 0o644])
def test_an_empty_file_planted_by_another_user_is_refused_at_once(users, name, mode):
    x, b = users["x"], users["b"]
    x.run(f"""
        fd = os.open("/dev/shm/shmdict.{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, {mode})
        os.fchmod(fd, {mode})
    """)
    [victim] = b.run(f"""
        report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=100).add("k"))
    """)
    assert victim["error"] == "UnsafeSegment", victim
    assert x.name in victim["message"] and victim["elapsed"] < 4  # at once: no 5 s attach wait


def test_a_semaphore_planted_by_another_user_is_refused(users, name):
    x, b = users["x"], users["b"]
    x.run(f"""
        import posix_ipc
        posix_ipc.Semaphore("/shmdict.{name}.s0", posix_ipc.O_CREX, mode=0o666,
                            initial_value=0).close()       # "held" forever
    """, umask=0)
    [victim] = b.run(f"""
        report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=100).add("k"))
    """)
    assert victim["error"] == "UnsafeSegment", victim
    assert "semaphore" in victim["message"] and x.name in victim["message"]
    assert victim["elapsed"] < 4  # at once: no 5 s attach wait
    # nothing of the victim's is left behind
    assert not os.path.exists(f"/dev/shm/shmdict.{name}")
    assert not os.path.exists(f"/dev/shm/sem.shmdict.{name}.s1")


def test_a_symlink_planted_by_another_user_is_refused(users, name):
    x, b = users["x"], users["b"]
    [own] = b.run(f"""
        report(lambda: shmdict.open({name + '.real'!r}, shmdict.Counter(), capacity=10).add("k"))
    """)
    try:
        assert own["ok"] == 1
        x.run(f"""os.symlink("/dev/shm/shmdict.{name}.real", "/dev/shm/shmdict.{name}")""")
        [victim] = b.run(f"""
            report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=10).add("k"))
        """)
        assert victim["error"] == "UnsafeSegment" and "symbolic link" in victim["message"]
    finally:
        shmdict.unlink(name + ".real")


# ------------------------------------------------------------- sharing
def test_group_sharing_works_under_umask_077(users, name):
    a, b, x, group = users["a"], users["b"], users["x"], users["group"]
    adds = f"""
        d = shmdict.open({name!r}, shmdict.Counter(), capacity=100, group={group!r})
        for _ in range(1000):
            d.add("hits")
        report(lambda: d.read("hits")[0])
    """
    [first] = a.run(adds)
    assert first["ok"] == 1000, first
    for path in [f"/dev/shm/shmdict.{name}", f"/dev/shm/sem.shmdict.{name}.s0"]:
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid) == \
            (0o660, users["gid"], a.uid)
    [second] = b.run(adds)
    assert second["ok"] == 2000, second
    # a group member that did not ask for the sharing refuses the table
    [unasked] = b.run(f"""
        report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=100).add("hits"))
    """)
    assert unasked["error"] == "UnsafeSegment" and "group=" in unasked["message"], unasked
    # an outsider that claims the group cannot get in
    [outsider] = x.run(f"""
        report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=100,
                                    group={group!r}).add("hits"))
    """)
    assert outsider["error"] == "PermissionDenied", outsider


def test_only_root_creates_tables_for_another_user(users, name):
    a, b = users["a"], users["b"]
    [attempt] = a.run(f"""
        report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=10,
                                    owner={b.name!r}))
    """)
    assert attempt["error"] == "PermissionDenied" and "only root" in attempt["message"]
    assert not [e for e in os.listdir("/dev/shm") if name in e]


def test_root_creates_a_table_for_a_worker_user(users, name):
    """gunicorn's --user: the master (root) creates, the workers (a) attach."""
    a = users["a"]
    d = shmdict.open(name, shmdict.Counter(), capacity=100, owner=a.name)
    try:
        d.add("master")
        for path in [f"/dev/shm/shmdict.{name}", f"/dev/shm/sem.shmdict.{name}.s15"]:
            st = os.stat(path)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (a.uid, 0o600)
        [worker] = a.run(f"""
            d = shmdict.open({name!r}, shmdict.Counter(), capacity=100)
            report(lambda: [d.add("worker") for _ in range(10)][-1] + d.read("master")[0])
        """)
        assert worker["ok"] == 11, worker
        again = shmdict.open(name, shmdict.Counter(), capacity=100, owner=a.uid)
        assert again.read("worker") == (10, True)
        again.close()
        with pytest.raises(shmdict.UnsafeSegment, match="owner="):
            shmdict.open(name, shmdict.Counter(), capacity=100)
    finally:
        d.unlink()


def test_a_worker_that_may_not_open_the_table_is_told_what_to_pass(users, name):
    a = users["a"]
    d = shmdict.open(name, shmdict.Counter(), capacity=100)      # root's, mode 0600
    try:
        [worker] = a.run(f"""
            report(lambda: shmdict.open({name!r}, shmdict.Counter(), capacity=100).add("k"))
        """)
        assert worker["error"] == "PermissionDenied", worker
        assert "owner=" in worker["message"] and "group=" in worker["message"]
    finally:
        d.unlink()
