"""run_lock: one run at a time; a killed run's, reused pid's or old lock is recovered; check mode writes nothing."""

import json
import multiprocessing
import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

from ansible.module_utils.run_lock import (LockHeldError, LockOwnedByOtherRunError, LockPathError, LockRaceError,
                                           LockUnreadableError, apply_lock, lock_content, plan_lock, process_alive,
                                           process_start_time, read_lock, staleness)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(REPO, ".venv", "bin", "ansible")
HOST = socket.gethostname()


def owner_of(pid, controller=HOST):
    return {"controller": controller, "pid": pid, "pid_start": process_start_time(pid), "user": "tester",
            "started": "2025-01-01T00:00:00Z"}


def take(path, run_id, owner, **kwargs):
    return apply_lock(plan_lock(path, "present", run_id, owner=owner, **kwargs))


def fingerprint(path):
    st = os.stat(path)
    with open(path, "rb") as handle:
        return handle.read(), st.st_mtime_ns


@pytest.fixture()
def lock_path(tmp_path):
    return str(tmp_path / "run" / "zoe.lock")


@pytest.fixture()
def dead_pid():
    """The pid of a `sleep` that was killed and reaped, with the start time it had."""
    proc = subprocess.Popen(["sleep", "300"])
    start = process_start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def test_take_creates_private_json_lock_and_directory(lock_path):
    plan = take(lock_path, "run-1", owner_of(os.getpid()))
    assert plan.action == "create" and plan.changed
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(lock_path)).st_mode) == 0o700
    doc = json.loads(open(lock_path).read())
    assert doc["run_id"] == "run-1" and doc["owner"]["pid"] == os.getpid() and doc["host"] == HOST
    assert [n for n in os.listdir(os.path.dirname(lock_path))] == ["zoe.lock"]  # no temporary left behind


def test_same_run_id_is_unchanged(lock_path):
    take(lock_path, "run-1", owner_of(os.getpid()))
    before = fingerprint(lock_path)
    plan = plan_lock(lock_path, "present", "run-1", owner=owner_of(os.getpid()))
    assert plan.action == "keep" and not plan.changed
    assert plan.result()["lock"]["run_id"] == "run-1"
    assert fingerprint(lock_path) == before


def test_second_run_is_refused_while_the_first_is_alive(lock_path):
    take(lock_path, "run-1", owner_of(os.getpid()))
    before = fingerprint(lock_path)
    with pytest.raises(LockHeldError) as err:
        plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()))
    assert str(err.value) == ("another consolidation run (run_id run-1, started 2025-01-01T00:00:00Z by controller "
                              "%s pid %d) holds the lock at %s; it is still running. This run changed nothing and touches "
                              "nothing of it: run again once it has ended" % (HOST, os.getpid(), lock_path))
    assert fingerprint(lock_path) == before


def test_lock_of_a_killed_run_is_recovered(lock_path, dead_pid):
    pid, start = dead_pid
    take(lock_path, "run-killed", {"controller": HOST, "pid": pid, "pid_start": start})
    plan = take(lock_path, "run-2", owner_of(os.getpid()))
    assert plan.action == "replace"
    result = plan.result()
    assert result["stale_lock_recovered"]["lock"]["run_id"] == "run-killed"
    assert result["stale_lock_recovered"]["reason"] == "controller process %d on %s is gone" % (pid, HOST)
    assert read_lock(lock_path)[1]["run_id"] == "run-2"
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600


def test_zombie_owner_is_stale(lock_path):
    proc = subprocess.Popen(["sleep", "300"])
    owner = owner_of(proc.pid)
    proc.kill()
    deadline = time.monotonic() + 5
    while process_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        take(lock_path, "run-zombie", owner)
        assert "is gone" in staleness(lock_path, read_lock(lock_path)[1], 21600)
    finally:
        proc.wait()


def test_reused_pid_is_stale(lock_path):
    """Same pid, another start time: the pid now belongs to another process."""
    take(lock_path, "run-old", dict(owner_of(os.getpid()), pid_start=1))
    plan = plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()))
    assert plan.action == "replace" and "now belongs to another process" in plan.stale_reason


def test_old_lock_is_stale_even_with_a_live_owner(lock_path):
    take(lock_path, "run-1", owner_of(os.getpid()))
    with pytest.raises(LockHeldError):
        plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()), stale_after=3600)
    doc = read_lock(lock_path)[1]
    doc["acquired_epoch"] -= 3601
    with open(lock_path, "w") as handle:
        json.dump(doc, handle)
    plan = take(lock_path, "run-2", owner_of(os.getpid()), stale_after=3600)
    assert plan.action == "replace" and "older than stale_after (3600 s)" in plan.stale_reason


def test_lock_of_another_controller_is_held_until_old(lock_path):
    take(lock_path, "run-1", owner_of(os.getpid(), controller="laptop.example"))
    with pytest.raises(LockHeldError, match="it is still running as far as this host can tell"):
        plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()))


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"no": "run_id"}'], ids=["empty", "garbage", "foreign-json"])
def test_unreadable_lock_is_refused_while_young_and_recovered_when_old(lock_path, content):
    os.makedirs(os.path.dirname(lock_path))
    with open(lock_path, "wb") as handle:
        handle.write(content)
    with pytest.raises(LockUnreadableError, match="not a run lock this module wrote"):
        plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()))
    old = time.time() - 30000
    os.utime(lock_path, (old, old))
    plan = take(lock_path, "run-2", owner_of(os.getpid()))
    assert plan.action == "replace" and plan.result()["stale_lock_recovered"]["content"] == content.decode()


@pytest.mark.parametrize("existing, run_id, force, action", [
    (None, "run-1", False, "none"),
    ("run-1", "run-1", False, "remove"),
    ("run-1", "run-2", True, "remove"),
], ids=["missing", "ours", "other-forced"])
def test_absent(lock_path, existing, run_id, force, action):
    if existing:
        take(lock_path, existing, owner_of(os.getpid()))
    plan = apply_lock(plan_lock(lock_path, "absent", run_id, force=force)) if action != "none" else \
        plan_lock(lock_path, "absent", run_id, force=force)
    assert plan.action == action and plan.changed == (action == "remove")
    assert not os.path.exists(lock_path)


def test_absent_refuses_another_runs_lock(lock_path):
    take(lock_path, "run-1", owner_of(os.getpid()))
    with pytest.raises(LockOwnedByOtherRunError, match="belongs to another run .*use force=true"):
        plan_lock(lock_path, "absent", "run-2")
    assert os.path.exists(lock_path)


def test_plan_reads_only(lock_path, dead_pid):
    pid, start = dead_pid
    take(lock_path, "run-killed", {"controller": HOST, "pid": pid, "pid_start": start})
    before = fingerprint(lock_path)
    for state, run_id in (("present", "run-2"), ("present", "run-killed"), ("absent", "run-killed")):
        plan_lock(lock_path, state, run_id, owner=owner_of(os.getpid()))
    assert fingerprint(lock_path) == before
    assert not os.path.exists(str(lock_path) + ".missing")
    assert plan_lock(lock_path + ".missing", "present", "r", owner={}).action == "create"
    assert not os.path.exists(lock_path + ".missing")


def test_replace_is_compare_and_swap(lock_path, dead_pid):
    pid, start = dead_pid
    take(lock_path, "run-killed", {"controller": HOST, "pid": pid, "pid_start": start})
    plan = plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()))
    os.unlink(lock_path)
    take(lock_path, "run-3", owner_of(os.getpid()))  # another run got there first
    with pytest.raises(LockRaceError, match="changed before it could be replaced"):
        apply_lock(plan)
    assert read_lock(lock_path)[1]["run_id"] == "run-3"


def test_create_race_is_detected(lock_path):
    plan = plan_lock(lock_path, "present", "run-2", owner=owner_of(os.getpid()))
    take(lock_path, "run-1", owner_of(os.getpid()))
    with pytest.raises(LockRaceError, match=r"taken by another run \(run_id run-1, .*this one changed nothing"):
        apply_lock(plan)
    assert read_lock(lock_path)[1]["run_id"] == "run-1"


def _contender(path, run_id, owner, barrier, results):
    barrier.wait()
    try:
        take(path, run_id, owner)
        results.put(run_id)
    except (LockHeldError, LockRaceError):
        results.put(None)


def test_only_one_of_many_contenders_recovers_a_stale_lock(lock_path, dead_pid):
    pid, start = dead_pid
    take(lock_path, "run-killed", {"controller": HOST, "pid": pid, "pid_start": start})
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    # Every contender names the (live) test process as its owner: a winner that exits would leave a stale lock.
    owner = owner_of(os.getpid())
    procs = [ctx.Process(target=_contender, args=(lock_path, "run-%d" % i, owner, barrier, results))
             for i in range(8)]
    for p in procs:
        p.start()
    winners = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    winners = [w for w in winners if w]
    assert len(winners) == 1
    assert read_lock(lock_path)[1]["run_id"] == winners[0]


def test_lock_path_is_a_directory(tmp_path):
    with pytest.raises(LockPathError, match="is a directory"):
        plan_lock(str(tmp_path), "present", "r", owner={})


def test_start_time_survives_a_comm_with_parentheses(tmp_path):
    odd = str(tmp_path / "a) (b c")
    shutil.copy(shutil.which("sleep"), odd)
    proc = subprocess.Popen([odd, "30"])
    try:
        time.sleep(0.05)
        assert isinstance(process_start_time(proc.pid), int)
        assert process_alive(proc.pid, process_start_time(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert process_start_time(proc.pid) is None


def test_content_is_json_with_epoch():
    doc = json.loads(lock_content("r", {"pid": 1}).decode())
    assert set(doc) == {"run_id", "owner", "host", "acquired_at", "acquired_epoch"}


# ------------------------------------------------------------------------ the module on a bare python3

def run_module(args, check=False, diff=False):
    """Run run_lock through `ansible localhost` on the bare system python3; (rc, result)."""
    cmd = [ANSIBLE, "localhost", "-m", "run_lock", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=/usr/bin/python3"] + (["--check"] if check else []) + \
        (["--diff"] if diff else [])
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    return proc.returncode, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_module_quartet_and_refusal(lock_path):
    args = {"path": lock_path, "run_id": "run-A", "owner": owner_of(os.getpid())}
    rc, result = run_module(args, check=True, diff=True)
    assert rc == 0 and result["changed"] and result["operation"] == "create"
    assert result["diff"][0]["before"] == "" and '"run-A"' in result["diff"][0]["after"]
    assert not os.path.exists(lock_path) and not os.path.exists(os.path.dirname(lock_path))
    rc, result = run_module(args)
    assert rc == 0 and result["changed"] and result["lock"]["run_id"] == "run-A"
    before = fingerprint(lock_path)
    for check in (True, False):
        rc, result = run_module(args, check=check)
        assert rc == 0 and not result["changed"] and result["operation"] == "keep"
    assert fingerprint(lock_path) == before
    rc, result = run_module(dict(args, run_id="run-B"))
    assert rc != 0 and result["failed"]
    assert result["msg"] == ("another consolidation run (run_id run-A, started 2025-01-01T00:00:00Z by controller "
                             "%s pid %d) holds the lock at %s; it is still running. This run changed nothing and touches "
                             "nothing of it: run again once it has ended" % (HOST, os.getpid(), lock_path))
    assert fingerprint(lock_path) == before


def test_module_recovers_a_killed_runs_lock_and_check_mode_writes_nothing(lock_path, dead_pid):
    pid, start = dead_pid
    take(lock_path, "run-killed", {"controller": HOST, "pid": pid, "pid_start": start})
    before = fingerprint(lock_path)
    args = {"path": lock_path, "run_id": "run-B", "owner": owner_of(os.getpid())}
    rc, result = run_module(args, check=True)
    assert rc == 0 and result["changed"] and result["operation"] == "replace"
    assert result["stale_lock_recovered"]["lock"]["run_id"] == "run-killed"
    assert fingerprint(lock_path) == before
    rc, result = run_module(args)
    assert rc == 0 and result["stale_lock_recovered"]["lock"]["run_id"] == "run-killed"
    assert read_lock(lock_path)[1]["run_id"] == "run-B"


def test_module_absent_quartet(lock_path):
    take(lock_path, "run-A", owner_of(os.getpid()))
    args = {"path": lock_path, "run_id": "run-A", "state": "absent"}
    rc, result = run_module(dict(args, run_id="run-other"))
    assert rc != 0 and "use force=true" in result["msg"]
    rc, result = run_module(args, check=True)
    assert rc == 0 and result["changed"] and os.path.exists(lock_path)
    rc, result = run_module(args)
    assert rc == 0 and result["changed"] and not os.path.exists(lock_path)
    for check in (True, False):
        rc, result = run_module(args, check=check)
        assert rc == 0 and not result["changed"] and result["operation"] == "none"


def test_lookup_names_the_ansible_playbook_main_process(tmp_path):
    """The zoe_run_owner lookup, run in a worker, names the main ansible-playbook process and its start time."""
    playbook = tmp_path / "owner.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Record the owner\n      ansible.builtin.set_fact:\n"
        "        owner: \"{{ lookup('zoe_run_owner') }}\"\n"
        "    - name: Show the owner\n      ansible.builtin.debug:\n        var: owner\n")
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json")
    proc = subprocess.Popen([os.path.join(REPO, ".venv", "bin", "ansible-playbook"), str(playbook)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    owner = json.loads(out)["plays"][0]["tasks"][1]["hosts"]["localhost"]["owner"]
    assert owner["pid"] == proc.pid  # Popen ran ansible-playbook itself (its shebang), not a shell
    assert owner["controller"] == HOST and isinstance(owner["pid_start"], int)
    assert owner["started"].endswith("Z")
