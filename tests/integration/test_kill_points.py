"""consolidate.yml killed (SIGKILL of ansible-playbook and every descendant, the running module included) at task
boundaries, then recovered by the operator's rule.

The operator's rule after a killed run: rerun consolidate.yml; if it refuses, run rollback.yml (to the killed run's
rollback point when it was taken). A kill point is survived when either
  - the rerun completes with full row accounting: every demo user logs in, data/ holds zoe.db + memory.db only,
    zoe.db has exactly 4 users and every zoe.db table holds the row count of a clean, unkilled run; or
  - rollback.yml restores the tree byte for byte (digest equal to the digest before the killed run) and the old
    stack answers healthy (every container running, admin logs in, testuser does not yet).
EXPECTED_RECOVERY says which of the two each kill point must take; a kill point that takes the other one fails.

Kill points are the `TASK [` headers of a full run, in order: killing at header N kills the run as task N starts,
after task N-1 finished. The downtime window is one task (consolidate's downtime_window module), so its steps are
kill points of their own: `window <step>` kills the run as soon as the window's journal
(<backup root>/windows/<snapshot id>.json, rewritten at the start and end of each step) shows that step begun,
and records the step the journal shows after the kill (a step of a few milliseconds, retire or install, may be over
by then: the kill lands in a later one, which the result names). By default the points of SAMPLE run (the run
lock, the two preparation steps, every step of the window and one after it), plus one kill in the middle of the
merge of a larger host; ZOE_KILL_SAMPLE=wide adds more, ZOE_KILL_ALL=1 runs every header and every window step
(docs/RELIABILITY.md has the counts and times measured). Each point's figures go to ZOE_KILL_SUMMARY (default
zoe-kill-points.json in the temporary directory).

One host is reused: between kill points it is torn down and rebuilt from the deterministic generator.
"""

import glob
import json
import os
import shutil
import tempfile
import time

import pytest

from zoe_demo import build_demo_host

from play_process import kill_tree, streamed_playbook
from zoe_host import ZoeHost

pytestmark = [pytest.mark.docker, pytest.mark.slow]

USERS = ("testuser", "admin", "user", "system")
KILL_ALL = os.environ.get("ZOE_KILL_ALL") == "1"
SUMMARY = os.environ.get("ZOE_KILL_SUMMARY", os.path.join(tempfile.gettempdir(), "zoe-kill-points.json"))

# The sample of the test command: one kill before the lock, at the lock, at the merge prepared and the edits
# staged before the stop (left behind half-made), at each step of the downtime window (services stopping, rollback
# point being written, merge, databases moved, compose files renamed, services starting), and one after the
# window. ZOE_KILL_SAMPLE=wide adds more.
WINDOW_TASK = "consolidate : Stop the writers, take the rollback point"
WINDOW_STEPS = ("stop", "rollback_point", "merge", "retire", "install", "start")
SAMPLE = (
    "preflight : Take the run lock",
    "prepare : Prepare the merge while the services still run",
    "prepare : Stage the compose and env files",
) + tuple("window %s" % step for step in WINDOW_STEPS) + (
    "smoke_test : Log every user in",
)
if os.environ.get("ZOE_KILL_SAMPLE") == "wide":
    SAMPLE += (
        "preflight : Audit every SQLite file",
        "backup : Restore-test the live snapshot",
        "consolidate : Hand over the window",
        "rewrite : ",
        "report : Write the JSON report",
    )

# Every kill point is expected to be survived by the rerun; a key here names a kill point (task name prefix) that
# is expected to need rollback.yml instead. None so far.
EXPECTED_RECOVERY = {}

MERGE_SCALE = int(os.environ.get("ZOE_KILL_MERGE_SCALE", "60"))


# -- the host and the reference run -------------------------------------------------------------------

def rebuild(host):
    """Back to a fresh demo host: containers removed, tree, backups and reports rebuilt from the generator."""
    host.destroy_containers()
    for path in (host.backups, host.reports):
        shutil.rmtree(path, ignore_errors=True)
    build_demo_host(host.root, project=host.project, port_base=host.port_base, force=True,
                    **host.generator)
    host.demo("up")
    host.pre_digest = host.digest()


class KillHost(ZoeHost):
    """A ZoeHost that remembers its generator options and can be rebuilt in place."""

    def __init__(self, base_dir, **generator):
        self.generator = generator
        super().__init__(base_dir, **generator)
        self.pre_digest = self.digest()


def zoe_counts(host):
    tables = [name for (name,) in host.query("zoe.db", "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: host.query("zoe.db", 'SELECT count(*) FROM "%s"' % name.replace('"', '""'))[0][0]
            for name in tables}


def window_journal(host):
    """The newest window journal of the host's backup root, or None."""
    found = sorted(glob.glob(os.path.join(host.backups, "windows", "*.json")), key=os.path.getmtime)
    for path in reversed(found):
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, ValueError):   # being replaced right now: read the next poll
            return None
    return None


def step_begun(journal, step):
    """True once the window's journal shows `step` in progress or done, or a later step."""
    if not journal:
        return False
    seen = list(journal.get("done") or []) + [journal.get("step")]
    return any(s in WINDOW_STEPS and WINDOW_STEPS.index(s) >= WINDOW_STEPS.index(step) for s in seen if s)


def run_streaming(host, kill_at=None, delay=0.0, extra=(), window_step=None):
    """Run consolidate.yml, reading its task headers; with kill_at=N, SIGKILL it and every descendant at header N,
    or, with window_step as well, once the window task (header N) shows that step begun in its journal.

    Returns (headers seen, returncode, stdout); run_streaming.times holds each header's time since the start and
    run_streaming.journal the window's journal read right after a kill inside it.
    """
    started = time.monotonic()
    run_streaming.times, run_streaming.journal = [], None
    headers, lines = [], []
    with streamed_playbook(host, "consolidate.yml", *extra, timeout=900) as proc:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TASK ["):
                headers.append(line[len("TASK ["):line.index("]")])
                run_streaming.times.append(time.monotonic() - started)
                if kill_at is not None and len(headers) == kill_at:
                    if window_step:
                        deadline = time.monotonic() + 300
                        while not step_begun(window_journal(host), window_step) and time.monotonic() < deadline:
                            time.sleep(0.002)
                    if delay:
                        time.sleep(delay)
                    kill_tree(proc.pid)
                    if window_step:
                        run_streaming.journal = window_journal(host)
                    break
    # the process group may hold module processes that outlive the controller for a moment
    time.sleep(0.5)
    return headers, proc.returncode, "".join(lines)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """A clean run on a fresh host: its task headers (the kill points) and zoe.db's row counts after it."""
    host = KillHost(tmp_path_factory.mktemp("kill"))
    try:
        started = time.monotonic()
        headers, code, out = run_streaming(host)
        assert code == 0, out[-5000:]
        counts = zoe_counts(host)
        assert counts["users"] == len(host.users)
        host.full_run_seconds = time.monotonic() - started
        rebuild(host)
        yield host, headers, counts
    finally:
        host.destroy()


# -- recovery -------------------------------------------------------------------------------------------

def killed_rollback_point(host, before):
    """The killed run's rollback point id when it was completed, else None."""
    runs = os.path.join(host.backups, "runs")
    new = sorted(set(os.listdir(runs)) - before) if os.path.isdir(runs) else []
    for name in new:
        snap = name[:-len(".json")]
        if os.path.isfile(os.path.join(host.backups, snap, "manifest.json")):
            return snap
    return None


def check_rerun(host, counts):
    """The assertions of a consolidated host with full row accounting; returns a list of problems."""
    problems = []
    if host.data_files() != ["memory.db", "zoe.db"]:
        problems.append("data/ holds %s" % host.data_files())
    for user in USERS:
        if host.login(user) != 200:
            problems.append("%s cannot log in" % user)
    try:
        now = zoe_counts(host)
    except Exception as exc:  # a missing or damaged zoe.db is a problem to report, not a crash
        problems.append("zoe.db unreadable: %s" % exc)
    else:
        if now.get("users") != 4:
            problems.append("zoe.db has %s users" % now.get("users"))
        if now != counts:
            problems.append("row counts differ: %s" % {t: (now.get(t), counts.get(t))
                                                         for t in set(now) | set(counts) if now.get(t) != counts.get(t)})
    return problems


def check_rolled_back(host):
    problems = []
    if host.digest() != host.pre_digest:
        problems.append("the tree differs from the one before the killed run")
    containers = host.containers()
    if not containers or not all(running for _, _, running in containers.values()):
        problems.append("not every container runs: %s" % {s: r for s, (_, _, r) in containers.items()})
    if host.login("admin") != 200 or host.login("testuser") != 401:
        problems.append("the old stack does not answer as before (admin %s, testuser %s)"
                        % (host.login("admin"), host.login("testuser")))
    return problems


def recover(host, counts, runs_before):
    """Apply the operator's rule; returns (recovery taken, problems, detail)."""
    rerun = host.playbook("consolidate.yml")
    if rerun.returncode == 0:
        return "rerun", check_rerun(host, counts), rerun.stdout[-2500:]
    snap = killed_rollback_point(host, runs_before)
    args = ("-e", "zoe_snapshot=%s" % snap) if snap else ()
    back = host.playbook("rollback.yml", *args)
    problems = [] if back.returncode == 0 else ["rollback.yml failed: %s" % back.stdout[-1500:]]
    return "rollback", problems + check_rolled_back(host), rerun.stdout[-2500:]


def expected_recovery(header):
    for prefix, recovery in EXPECTED_RECOVERY.items():
        if header.startswith(prefix):
            return recovery
    return "rerun"


def kill_and_recover(host, counts, index, header, delay=0.0, window_step=None):
    runs = os.path.join(host.backups, "runs")
    runs_before = set(os.listdir(runs)) if os.path.isdir(runs) else set()
    started = time.monotonic()
    seen, code, out = run_streaming(host, kill_at=index, delay=delay, window_step=window_step)
    assert len(seen) == index, "the run did not reach kill point %d %r: %s" % (index, header, out[-2000:])
    header = seen[-1]   # the play's own name for the task it was killed at
    if window_step:
        journal = run_streaming.journal or {}
        header = "window %s (killed in %s, done: %s)" % (window_step, journal.get("step"),
                                                         ", ".join(journal.get("done") or []) or "none")
    recovery, problems, detail = recover(host, counts, runs_before)
    expected = expected_recovery(header)
    if recovery != expected:
        problems.append("recovered by %s, expected %s" % (recovery, expected))
    result = {"index": index, "task": header, "delay": delay, "recovery": recovery, "problems": problems,
              "seconds": round(time.monotonic() - started, 1)}
    if problems:
        result["detail"] = detail
    rebuild(host)
    return result


def kill_points(headers):
    """[(header index, window step or None)]: the task headers to kill at, and the window's steps."""
    window = next((i for i, name in enumerate(headers, 1) if name.startswith(WINDOW_TASK)), None)
    assert window, "no window task among the headers: %s" % headers
    steps = [(window, step) for step in WINDOW_STEPS]
    only = os.environ.get("ZOE_KILL_ONLY")   # debugging: kill point prefixes separated by '|'
    if only:
        wanted = only.split("|")
        return ([(i, None) for i, name in enumerate(headers, 1) if any(name.startswith(p) for p in wanted)]
                + [(i, step) for i, step in steps if any(("window %s" % step).startswith(p) for p in wanted)])
    if KILL_ALL:
        return [(i, None) for i in range(1, len(headers) + 1)] + steps
    return ([(i, None) for i, name in enumerate(headers, 1) if any(name.startswith(prefix) for prefix in SAMPLE)]
            + [(i, step) for i, step in steps if "window %s" % step in SAMPLE])


# -- the tests ------------------------------------------------------------------------------------------

def test_every_kill_point_is_survived(reference):
    host, headers, counts = reference
    points = kill_points(headers)
    assert points and len(points) >= (len(headers) if KILL_ALL else 1 if os.environ.get("ZOE_KILL_ONLY") else len(SAMPLE))
    started = time.monotonic()
    results = []
    for i, step in points:
        results.append(kill_and_recover(host, counts, i, headers[i - 1], window_step=step))
        write_summary(host, headers, results, started)
    failed = [r for r in results if r["problems"]]
    assert not failed, "%d of %d kill points not survived:\n%s" % (
        len(failed), len(results), "\n".join("%d %s: %s\n%s" % (r["index"], r["task"], r["problems"], r.get("detail", ""))
                                             for r in failed))


def write_summary(host, headers, results, started):
    """The figures of the kill points so far (rewritten after each one, so a long run can be read while it runs)."""
    summary = {"kill_points": len(results), "survived": sum(1 for r in results if not r["problems"]),
               "tasks_in_full_run": len(headers), "full_run_seconds": round(host.full_run_seconds, 1),
               "seconds": round(time.monotonic() - started, 1), "mode": "all" if KILL_ALL else "sample",
               "results": results}
    with open(SUMMARY, "w") as handle:
        json.dump(summary, handle, indent=2)


@pytest.fixture(scope="module")
def merge_host(images, tmp_path_factory):
    """A larger host (scale MERGE_SCALE) whose merge takes well over a second."""
    host = KillHost(tmp_path_factory.mktemp("killmerge"), scale=MERGE_SCALE)
    yield host
    host.destroy()


def test_a_kill_in_the_middle_of_the_merge_is_survived(merge_host):
    """The merge from scratch in the window (the fallback when the prepared merge is stale): killed half-way."""
    host = merge_host
    runs_before = set()
    unprepared = ("-e", "prepare_merge=false")
    headers, code, out = run_streaming(host, extra=unprepared)
    assert code == 0, out[-5000:]
    counts = zoe_counts(host)
    index = headers.index(next(h for h in headers if h.startswith(WINDOW_TASK))) + 1
    merge_seconds = next(s["seconds"] for s in window_journal_steps(host) if s["step"] == "merge")
    assert merge_seconds > 1.0, "the merge took %.2f s: raise ZOE_KILL_MERGE_SCALE" % merge_seconds
    rebuild(host)
    seen, code, out = run_streaming(host, kill_at=index, delay=0.3, extra=unprepared, window_step="merge")
    assert len(seen) == index
    assert run_streaming.journal["step"] == "merge", run_streaming.journal
    assert host.data_files() != ["memory.db", "zoe.db"], "the databases were retired before the kill"
    assert not host.query("zoe.db", "SELECT name FROM sqlite_master WHERE name = '_zoe_merge_ledger'"), \
        "the merge was written before the kill"
    recovery, problems, detail = recover(host, counts, runs_before)
    assert recovery == "rerun" and not problems, (recovery, problems, detail)


def window_journal_steps(host):
    """The steps (with their seconds) of the last complete window, from the newest JSON report of the host."""
    reports = sorted(glob.glob(os.path.join(host.reports, "*.json")), key=os.path.getmtime)
    reports = [p for p in reports if not p.endswith(".plan.json")]
    with open(reports[-1]) as handle:
        return json.load(handle)["window"]["steps"]
