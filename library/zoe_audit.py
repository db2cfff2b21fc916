#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: read-only audit of the SQLite databases of a Zoe host tree.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zoe_audit
short_description: Find, classify and check every SQLite database of a host tree, read-only
description:
  - Walks O(root) and finds every SQLite file by its header (not by its extension); C(-wal), C(-shm) and
    C(-journal) sidecars are not databases of their own, C(.git) is always skipped.
  - Classifies each database as C(keep) or C(fold) when it lies directly in O(data_dir) and its name is
    listed in O(keep) or O(fold), and as C(unknown) otherwise.
  - Reads every database through a private copy of the file and its C(-wal), so the source, its C(-wal)
    and its C(-shm) are never touched (not even their mtime) and committed WAL content is counted.
  - Reports integrity, row counts, the merge ledger of the primary database, the size of O(data_dir) and
    the free space where the backup will go. Never changes anything of the tree.
  - Opens only regular files; a named pipe, socket or device named like a database (C(*.db), C(*.sqlite),
    C(*.sqlite3), C(*.db3) or a name of O(keep) or O(fold)) is reported in RV(special_files), never opened.
  - Outside check mode, first removes from the temporary directory what an audit killed with SIGKILL left
    (its copies, its unpacked module payload), the directories of this user whose live mark no process holds
    (RV(leftovers_removed)). SIGTERM and SIGHUP end the module through its cleanup.
extends_documentation_fragment:
  - action_common_attributes
  - zoe.read_only
attributes:
  check_mode:
    details: Read-only; runs unchanged in check mode so a dry run plans against the real state.
options:
  root:
    description: The Zoe checkout on the host; every file below it is examined.
    type: path
    required: true
  data_dir:
    description:
      - The data directory bind-mounted into the containers (usually C(<root>/data)).
      - When it lies outside O(root) it is walked as well.
    type: path
    required: true
  keep:
    description: File names of the databases that stay in O(data_dir) (for example C(zoe.db), C(memory.db)).
    type: list
    elements: str
    default: []
  fold:
    description: File names of the databases of O(data_dir) that are to be merged into the primary.
    type: list
    elements: str
    default: []
  exclude:
    description:
      - Paths to leave out of the walk, with everything below them.
      - Absolute paths are compared as real paths (the path and everything below it).
      - Other entries are path globs, as in C(.gitignore), matched against the path relative to O(root)
        (relative to O(data_dir) below a O(data_dir) outside O(root)), with C(/) as the separator.
        C(*) and C(?) stay inside one path component and C(**) crosses C(/), so C(data/*.db) leaves out
        C(data/auth.db) but not C(data/old/auth.db), and C(data/**/*.db) leaves out both.
        A glob without C(/) is a file or directory name at any depth (C(node_modules), C(*.bak));
        a glob with C(/) is anchored at O(root) (a leading C(./) is dropped). A glob that names a directory
        leaves out everything below it.
      - O(backup_root) is always excluded (a snapshot holds copies of retired databases).
    type: list
    elements: str
    default: []
  integrity:
    description: Run C(PRAGMA integrity_check) on every database.
    type: bool
    default: true
  foreign_keys:
    description:
      - Run C(PRAGMA foreign_key_check) on every database and report violations in RV(foreign_key_failures).
    type: bool
    default: false
  counts:
    description: Count the rows of every table.
    type: bool
    default: true
  backup_root:
    description:
      - Where snapshots will be written; the free space of its filesystem (or of its nearest existing parent)
        is returned as RV(free_bytes).
    type: path
  ledger_table:
    description: Name of the merge ledger table in the primary database.
    type: str
    default: _zoe_merge_ledger
  primary:
    description: File name of the primary database in O(data_dir), the one that holds the ledger.
    type: str
    default: zoe.db
notes:
  - Runs with the host's own python3 and the standard library only.
seealso:
  - module: sqlite_merge
"""

EXAMPLES = r"""
- name: Audit the databases of the Zoe host
  zoe_audit:
    root: "{{ zoe_root }}"
    data_dir: "{{ zoe_root }}/data"
    keep: [zoe.db, memory.db]
    fold: [auth.db, sessions.db, developer_tasks.db]
    exclude: ["{{ backup_root }}", node_modules]
    backup_root: "{{ backup_root }}"
  register: preflight_audit

- name: Refuse to go on when a source is damaged
  ansible.builtin.assert:
    that: preflight_audit.integrity_failures | length == 0
    fail_msg: "integrity_check failed: {{ preflight_audit.integrity_failures }}"
"""

RETURN = r"""
databases:
  description: Every SQLite file found, sorted by path.
  returned: always
  type: list
  elements: dict
  sample:
    - path: /srv/zoe/data/auth.db
      relpath: data/auth.db
      name: auth.db
      class: fold
      size: 40960
      sidecars: []
      journal_mode: delete
      integrity: ok
      tables: {users: 2, sessions: 5}
fold_present:
  description: Names of O(fold) found as SQLite files in O(data_dir).
  returned: always
  type: list
  elements: str
  sample: [auth.db, sessions.db]
fold_missing:
  description: Names of O(fold) that are not in O(data_dir) (already retired, or never there).
  returned: always
  type: list
  elements: str
  sample: [knowledge.db]
keep_missing:
  description: Names of O(keep) that are not in O(data_dir).
  returned: always
  type: list
  elements: str
  sample: []
merged:
  description: The rows of the primary database's merge ledger, each as a dict of its columns; [] without a ledger.
  returned: always
  type: list
  elements: dict
  sample:
    - {id: 1, source: /srv/zoe/data/auth.db, digest: 9f2c..., merged_at: "2025-01-01T00:00:00Z", source_rows: 7}
merged_names:
  description: File names of the ledger's C(source) column (when the ledger has one), sorted and unique.
  returned: always
  type: list
  elements: str
  sample: [auth.db]
unknown:
  description: Relative paths of the databases classified C(unknown).
  returned: always
  type: list
  elements: str
  sample: [services/zoe-core/training.db]
data_bytes:
  description: Bytes of all regular files below O(data_dir).
  returned: always
  type: int
  sample: 6012928
free_bytes:
  description: Free bytes (for an unprivileged writer) on the filesystem of O(backup_root); null without O(backup_root).
  returned: always
  type: int
  sample: 52428800000
data_free_bytes:
  description:
    - Free bytes (for an unprivileged writer) on the filesystem of O(data_dir), where the merge grows the primary
      and a rollback stages its restore.
  returned: always
  type: int
  sample: 52428800000
free_path:
  description: The existing path whose filesystem was measured for RV(free_bytes).
  returned: always
  type: str
  sample: /srv
integrity_failures:
  description: Databases whose integrity check failed or that could not be read, with the messages.
  returned: always
  type: list
  elements: dict
  sample:
    - relpath: data/learning.db
      errors: ["*** in database main ***\nPage 5: btreeInitPage() returns error code 11"]
foreign_key_failures:
  description:
    - Databases with rows whose foreign keys point at missing parents (only with O(foreign_keys=true)),
      with the count and up to 20 violations as (table, rowid, parent, foreign key index).
  returned: always
  type: list
  elements: dict
  sample:
    - relpath: data/zoe.db
      violations: 2
      sample: [[sessions, 7, users, 0]]
not_databases:
  description: Relative paths of the files of O(data_dir) named C(*.db) that are not SQLite databases.
  returned: always
  type: list
  elements: str
  sample: [data/empty.db]
special_files:
  description: Files named like a database that are not regular files (named pipe, socket, device); never opened.
  returned: always
  type: list
  elements: dict
  sample:
    - relpath: data/snapshots.db
      kind: a named pipe (FIFO)
leftovers_removed:
  description: Temporary directories of killed audits removed before this one ran (none in check mode).
  returned: always
  type: list
  elements: str
  sample: [/tmp/zoe-audit-3k2j1x9q]
root:
  description: O(root) as a real path.
  returned: always
  type: str
  sample: /srv/zoe
data_dir:
  description: O(data_dir) as a real path.
  returned: always
  type: str
  sample: /srv/zoe/data
"""

import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils import zoe_audit as zoe_audit_utils
from ansible.module_utils.zoe_audit import (DEFAULT_LEDGER_TABLE, DEFAULT_PRIMARY, AuditError, AuditOptions,
                                            audit_host, end_on_signals, hold_live_mark, payload_dir, sweep_dead)


def main():
    end_on_signals()
    payload = payload_dir(zoe_audit_utils.__file__)
    if payload:
        hold_live_mark(payload)  # its descriptor stays open, and the flock held, until the process ends
    argument_spec = dict(
        root=dict(type="path", required=True),
        data_dir=dict(type="path", required=True),
        keep=dict(type="list", elements="str", default=[]),
        fold=dict(type="list", elements="str", default=[]),
        exclude=dict(type="list", elements="str", default=[]),
        integrity=dict(type="bool", default=True),
        counts=dict(type="bool", default=True),
        foreign_keys=dict(type="bool", default=False),
        backup_root=dict(type="path"),
        ledger_table=dict(type="str", default=DEFAULT_LEDGER_TABLE),
        primary=dict(type="str", default=DEFAULT_PRIMARY),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    removed = [] if module.check_mode else sweep_dead(tempfile.gettempdir())
    try:
        opts = AuditOptions(p["root"], p["data_dir"], keep=p["keep"], fold=p["fold"], exclude=p["exclude"],
                            integrity=p["integrity"], counts=p["counts"], backup_root=p["backup_root"],
                            foreign_keys=p["foreign_keys"],
                            ledger_table=p["ledger_table"], primary=p["primary"])
        result = audit_host(opts)
    except AuditError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, leftovers_removed=removed, **result)


if __name__ == "__main__":
    main()
