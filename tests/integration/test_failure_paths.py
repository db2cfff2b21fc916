"""Failure paths of consolidate.yml on a demo host whose services are not managed (zoe_manage_services=false).

Each test puts one real fault on a real demo tree (no containers: with the services not managed nothing else
opens the databases) and checks the message, and that the tree is byte for byte as it was, or that a rollback
is complete:
  - a FIFO named like a database is refused by name before anything is opened (what an audit ended by a
    signal leaves is tested in test_zoe_audit_signals.py);
  - a run refused at the run lock touches nothing of the run that holds it (its prepared merge, its staged
    compose and env files, its lock) and says so;
  - a table and a column named with `|` and a newline keep every table of the Markdown report intact;
  - consolidate then rollback.yml leaves every byte as it was, the -shm wal-indexes included (the tree digest of
    zoe_host counts a -shm by its presence only, because a running service rewrites it; here none runs).
Run: .venv/bin/pytest -q tests/integration/test_failure_paths.py
"""

import glob
import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess

import pytest
from markdown_it import MarkdownIt

from ansible.module_utils.run_lock import lock_content, process_start_time

from play_process import frozen_tree, streamed_playbook
from zoe_host import ZoeHost, tree_digest

pytestmark = [pytest.mark.slow]


@pytest.fixture
def host(tmp_path):
    zoe = ZoeHost(tmp_path, start=False)
    zoe.write_inventory(zoe_manage_services=False)
    yield zoe
    zoe.destroy()


def play_pausing_at(host, header, action, *args):
    """Run consolidate.yml; when the task header starting with `header` appears, freeze the whole run, call
    action(), let the run go on. Returns (returncode, output)."""
    lines, paused = [], False
    with streamed_playbook(host, "consolidate.yml", *args, timeout=600) as proc:
        for line in proc.stdout:
            lines.append(line)
            if not paused and line.startswith("TASK [" + header):
                with frozen_tree(proc.pid):
                    action()
                paused = True
    assert paused, "the run never reached %r:\n%s" % (header, "".join(lines)[-3000:])
    return proc.returncode, "".join(lines)


# -- a FIFO named like a database ----------------------------------------------------------------------

def test_a_fifo_named_like_a_fold_database_is_refused_by_name(host):
    fifo = os.path.join(host.root, "data", "snapshots.db")
    os.rename(fifo, fifo + ".real")
    os.mkfifo(fifo)
    try:
        before = every_byte(host.root)
        result = host.playbook("consolidate.yml", timeout=300)
        assert result.returncode != 0
        assert "data/snapshots.db is a named pipe (FIFO), not a database file" in result.stdout
        assert "Nothing was changed, no service was stopped" in result.stdout
        assert every_byte(host.root) == before
        assert not os.path.exists(host.backups)
    finally:
        os.unlink(fifo)
        os.rename(fifo + ".real", fifo)


# -- names that are Markdown -----------------------------------------------------------------------------

WEIRD_TABLE = "pipe|table\nname"
WEIRD_COLUMN = "col|umn\nx"


def markdown_tables(text):
    """[[cells of each row] of each table] of a Markdown document, as a GFM parser (markdown-it-py) reads it.

    The parser pads or cuts every row to the header's cell count, so each source line of a table is also checked
    to hold as many unescaped `|` as the header line: a name that split a row fails here.
    """
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    lines = text.split("\n")
    tables = []
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            source = lines[token.map[0]:token.map[1]]
            pipes = [len(re.findall(r"(?<!\\)\|", line)) for line in source]
            assert len(set(pipes)) == 1, "a row of this table splits:\n%s" % "\n".join(source)
            tables.append([])
        elif token.type == "tr_open":
            tables[-1].append([])
        elif token.type in ("th_open", "td_open"):
            inline = tokens[index + 1]
            tables[-1][-1].append("".join(c.content for c in inline.children or []) if inline.type == "inline" else "")
    return tables


def test_a_table_and_a_column_named_with_a_pipe_and_a_newline_keep_the_report_tables_whole(host):
    conn = sqlite3.connect(os.path.join(host.root, "data", "satisfaction.db"))
    conn.execute('CREATE TABLE "%s" (id INTEGER PRIMARY KEY, "%s" TEXT)' % (WEIRD_TABLE, WEIRD_COLUMN))
    conn.execute('INSERT INTO "%s" ("%s") VALUES (?)' % (WEIRD_TABLE, WEIRD_COLUMN), ("a row",))
    conn.commit()
    conn.close()
    result = host.playbook("consolidate.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    report = sorted(glob.glob(os.path.join(host.reports, "*.md")))[-1]
    with open(report) as handle:
        tables = markdown_tables(handle.read())
    assert len(tables) >= 3
    for table in tables:
        assert len({len(row) for row in table}) == 1, "a row of %s has another number of cells" % table[0]
    shown = WEIRD_TABLE.replace("\n", "\\n")
    merged = [row for table in tables for row in table if row[:2] == ["satisfaction.db", shown]]
    assert merged and merged[0][2] == shown and merged[0][3] == "1" and merged[0][4] == "1"
    assert any(shown + "=1" in cell for table in tables for row in table for cell in row)


# -- two runs at once ----------------------------------------------------------------------------------

def test_a_run_refused_at_the_lock_touches_nothing_of_the_run_holding_it(host):
    """The other run took the lock after this run's preflight looked: this run is refused at the lock and leaves
    the other's prepared merge, staged compose and env files and lock exactly as they are."""
    holder = subprocess.Popen(["sleep", "600"])   # the live controller process of the run holding the lock
    try:
        os.makedirs(host.backups, mode=0o700)
        prepared = os.path.join(host.backups, "prepared-merge")
        os.makedirs(prepared, mode=0o700)
        with open(os.path.join(prepared, "zoe.db"), "wb") as handle:
            handle.write(b"the other run's prepared merge")
        for name in ("docker-compose.yml", ".env"):
            with open(os.path.join(host.root, ".%s.zoe-staged" % name), "wb") as handle:
                handle.write(b"the other run's staged edit of %s\n" % name.encode())
        before = host.digest()
        lock = os.path.join(host.backups, ".consolidate.lock")
        owner = {"controller": socket.gethostname(), "pid": holder.pid, "pid_start": process_start_time(holder.pid)}
        held = {}

        def the_other_run_takes_the_lock():
            with open(lock, "wb") as handle:
                handle.write(lock_content("the-other-run", owner))
            held["backups"] = tree_digest(host.backups)

        code, out = play_pausing_at(host, "preflight : Create the backup root", the_other_run_takes_the_lock)
        assert code != 0
        assert "another consolidation run (run_id the-other-run" in out and "it is still running" in out
        assert "This run changed nothing and touches nothing of it" in out
        assert "force" not in out
        assert host.digest() == before
        assert tree_digest(host.backups) == held["backups"]
        assert json.load(open(lock))["run_id"] == "the-other-run"
    finally:
        holder.kill()
        holder.wait()


# -- consolidate, then rollback.yml: every byte back ---------------------------------------------------

def every_byte(root):
    """{relative path: (mode, sha256 or link target)} of every entry under root, -shm files by their bytes."""
    state = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                content = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            else:
                content = None
            state[os.path.relpath(path, root)] = (st.st_mode, content)
    return state


def test_consolidate_then_rollback_leaves_every_byte_as_it_was(host):
    """No service runs, so nothing but the play opens the databases: the -shm wal-indexes too keep their bytes
    (the live snapshot reads a byte copy of a database no connection has open instead of opening it)."""
    before = every_byte(host.root)
    assert [p for p in before if p.endswith("-shm")], "the demo host has no -shm to compare"
    result = host.playbook("consolidate.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert host.data_files() == ["memory.db", "zoe.db"]
    runs = sorted(os.listdir(os.path.join(host.backups, "runs")))
    rollback_point = runs[-1][:-len(".json")]
    assert os.path.isfile(os.path.join(host.backups, rollback_point, "manifest.json"))
    back = host.playbook("rollback.yml", "-e", "zoe_snapshot=%s" % rollback_point)
    assert back.returncode == 0, back.stdout[-3000:]
    after = every_byte(host.root)
    assert sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)) == []
