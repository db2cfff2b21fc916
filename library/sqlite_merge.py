#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sqlite_merge
short_description: Merge SQLite source databases into a target database with every row accounted for
description:
  - Folds each source database into O(target). Tables the target lacks are created from the source's own
    schema, their foreign keys pointed at where their parents went. Same-named tables are matched by name (or
    O(table_map)) and decided per pair by their keys, not by declared type names.
  - Same entity, drifted schema (the same primary-key columns, or a natural key from O(keys) on both sides) merges.
    The columns are the union (source-only columns are added, nullable; target-only columns take their default);
    inserts name their columns. A value whose storage class the target column's affinity would change (V('007')
    into a NUMERIC column becomes 7) is never converted silently. It is inserted as the target stores it and recorded
    with both versions in O(conflicts_table) (resolution V(converted)). With O(on_conflict=fail) it is refused
    instead, naming the table, column and a sample key.
  - With a natural key and a primary key that is not it (or of another column or type), the target's key wins.
    Each source key maps to the key the target holds for that natural key. An unmatched row gets a key of the
    target's kind (the natural key itself where the target's key holds it, a fresh id otherwise). Every child
    column that points at a mapped key (declared foreign keys and O(references), of any declared type) is
    re-pointed; parents go before children whatever the order of the sources.
  - Rows are matched by that key (else the declared non-integer primary key or a unique constraint).
    Identical rows are skipped and counted, new rows inserted, rows with the same key and different content
    are conflicts, resolved by O(on_conflict) and always recorded with both versions in O(conflicts_table).
  - Tables whose only key is an integer id treat the id as surrogate; a row with the same content is identical,
    any other row is new and gets a new id if its id is taken; child rows follow the new ids. Rows of the target
    keep their ids.
  - Same-named tables whose keys do not correspond (other primary-key columns and no natural key, or a NOT NULL
    target column the source cannot fill) are kept apart as C(<source stem>_<table>), with working foreign keys;
    O(clash_policy=refuse) makes that an error.
  - Views, triggers and indexes of a source are carried over (renamed where their name or table was) or refused
    by name; triggers and views are created after every source's rows. The result lists every schema object.
  - Sources and the target are read through private copies (WAL content included), so no source file, -wal
    or -shm is modified. The merge runs on a copy of the target, is verified (integrity_check,
    foreign_key_check, source_rows = inserted + identical + conflicts per table), and is written into the
    target in one transaction with the SQLite online backup API. On any error the target is unchanged.
  - A ledger table in the target records every merged source (path, sha256, counts, time); sources already in
    it are skipped, and missing sources that are in it (retired) are not an error.
  - Needs SQLite 3.33 or later on the managed host.
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  check_mode:
    details: Check mode runs the whole merge on a private copy and returns its exact accounting; the target is not written.
  diff_mode:
    details: The diff is a per-table summary (rows inserted, identical, conflicts, remaps, schema changes), secrets masked.
  idempotent:
    details: A second run with the same sources finds them in the ledger and reports no change.
options:
  target:
    description: The database to merge into (must exist). Symlinks are resolved.
    type: path
    required: true
  sources:
    description: Source databases, merged in this order. A source that is the target (also via a link) is refused.
    type: list
    elements: path
    required: true
  keys:
    description: Natural key columns per table (target table name), for example C(users=[username]).
    type: dict
    default: {}
  on_conflict:
    description: What a row with the same key and different content does. Every conflict is recorded either way.
    type: str
    choices: [keep_target, keep_source, newest, fail]
    default: keep_target
  newest_column:
    description: Timestamp column compared when O(on_conflict=newest); the later value wins, ties keep the target.
    type: str
  table_map:
    description:
      - Source table -> target table. Global (source table name to target table name) or per source by path, file name or stem
        (see EXAMPLES). The rename way out of a shape clash.
    type: dict
    default: {}
  clash_policy:
    description:
      - What a source table does when the target has a table of that name whose keys do not correspond (other
        primary-key columns and no natural key in O(keys), or a NOT NULL target column without default that the
        source lacks). V(prefix) keeps it apart as C(<source stem>_<table>), its foreign keys pointing at the merged
        or renamed parents; V(refuse) stops before anything is written, naming the table and the reason.
    type: str
    choices: [prefix, refuse]
    default: prefix
  references:
    description:
      - Columns that hold keys of another table without a declared foreign key, per table (see EXAMPLES) or per
        source (source file name, stem or path -> table -> column -> parent). The parent is a table of the same
        source, or C(other.db:table) for a table of another source (that source is merged first). A parent the
        source lacks means the values already are target keys.
    type: dict
    default: {}
  secret_columns:
    description: Name fragments of columns whose values are masked in the result and diff (default, the shared list).
    type: list
    elements: str
  ledger_table:
    description: Name of the ledger table in the target.
    type: str
    default: _zoe_merge_ledger
  conflicts_table:
    description: Name of the table in the target that records both versions of every conflict.
    type: str
    default: _zoe_merge_conflicts
  lock_timeout:
    description: Seconds to wait for the target's write lock when writing the result.
    type: float
    default: 5.0
  workdir:
    description: Directory for the private copies (default is the system temporary directory); it needs room for the target and the sources.
    type: path
  prepare:
    description:
      - Compute the merge now and keep it in O(prepared_dir) instead of writing the target. Nothing else is written.
      - Run it before the services stop; a later run with the same options and O(prepared_dir) writes the kept result
        if the target and every source still hold the very bytes the preparation read, and merges from scratch
        otherwise. The downtime window then holds only the check (sha256 of each file) and the write.
    type: bool
    default: false
  prepared_dir:
    description:
      - Directory of a prepared merge (0700, its files 0600, for the merged copy holds password hashes). Not a
        symlink, not inside the target's directory. It is removed once used or found stale.
      - Required with O(prepare=true). Without O(prepare), a prepared merge found there is written if it is still
        exact (RV(prepared=used)), else discarded (RV(prepared=stale)) and the merge runs from scratch. Check mode
        always plans from scratch and leaves the directory alone.
    type: path
notes:
  - Virtual tables and WITHOUT ROWID tables in a source are refused with a clear error.
  - A view or trigger body names tables by identifiers; an identifier spelled like a table kept apart is renamed
    with it. A carried view that does not compile in the target, or a UNIQUE index the merged rows violate, is
    refused by name (RV(sources[].objects) lists what became of each object).
  - A row whose value was stored converted is recorded once; a rerun with the ledger skips its source, a merge
    without the ledger (not what the module does) compares the stored value with the source's and may insert the
    row again in a table keyed only by an integer id.
  - Keys and rows shown in the result, the diff and error messages are masked where the column name looks secret
    (O(secret_columns) plus pass, code, pin, otp, nonce, key) or the value looks like a hash or token.
seealso:
  - name: SQLite online backup API
    link: https://www.sqlite.org/backup.html
"""

EXAMPLES = r"""
- name: Fold the Zoe databases into zoe.db
  sqlite_merge:
    target: /srv/zoe/data/zoe.db
    sources:
      - /srv/zoe/data/auth.db
      - /srv/zoe/data/sessions.db
      - /srv/zoe/data/developer_tasks.db
    keys:
      users: [username]
    references:
      sessions:
        user_id: users
    table_map:
      self_awareness.db:
        events: awareness_events
  register: zoe_merge

- name: Show what a merge would do; refuse tables whose keys do not correspond instead of keeping them apart
  sqlite_merge:
    target: /srv/zoe/data/zoe.db
    sources: [/srv/zoe/data/learning.db]
    clash_policy: refuse
  check_mode: true
  diff: true
"""

RETURN = r"""
target:
  description: The resolved target path.
  returned: always
  type: str
  sample: /srv/zoe/data/zoe.db
sources:
  description:
    - Per source its path, status (V(merged), V(already_merged), V(retired)), sha256 digest, per table the
      accounting and decision, and C(objects), what became of each of its tables, indexes, triggers and views
      (type, name, target_name, action V(created), V(merged), V(kept_apart) or V(present)).
    - Per table C(source_rows), C(inserted), C(identical), C(conflicts), C(conflicts_source_won), C(converted)
      (inserted rows with a value the target's type changed, recorded as conflicts), C(remapped), C(repointed),
      C(filled) (values of columns this merge added, copied into the matched target rows that had none),
      C(action) (create or merge), C(decision) (created, merged or kept_apart, with C(clash) saying why),
      C(mode), C(columns_added), C(type_differences) (column, both declared types and affinities,
      values_converted, handling), and with a natural key C(natural_key), C(source_key_mapped),
      C(keys_to_existing), C(keys_new); C(children_repointed) lists per column the parent and the rows re-pointed.
  returned: always
  type: list
  elements: dict
  sample: [{path: /srv/zoe/data/auth.db, status: merged, source_rows: 4, inserted: 2, identical: 1, conflicts: 1,
            tables: [{source_table: users, target_table: users, decision: merged, source_rows: 2, inserted: 0,
                      identical: 1, conflicts: 1, natural_key: [username], source_key_mapped: id -> user_id,
                      keys_to_existing: 2, keys_new: 0, repointed: 2, remapped: 0, columns_added: [last_login],
                      type_differences: [{column: created_at, source_type: TEXT, target_type: TIMESTAMP,
                                          source_affinity: TEXT, target_affinity: NUMERIC, values_converted: 0,
                                          handling: every new value keeps its type and bytes}]},
                     {source_table: sessions, target_table: sessions, decision: merged,
                      children_repointed: [{column: user_id, parent: "auth.db:users", rows: 2}]}],
            objects: [{type: index, name: idx_users_email, table: users, target_name: idx_users_email,
                       action: created}]}]
plan:
  description: The plan in words, one line per source table (created, merged or kept apart and why, keys mapped,
    columns added, type differences, children re-pointed) and per index, trigger and view.
  returned: always
  type: list
  elements: str
  sample: ["auth.db users -> users: 2 source rows = 0 inserted + 1 identical + 1 conflicts (merged; matched by
            username (source key id -> user_id): 2 key(s) to existing rows, 0 new)"]
totals:
  description: Sums over all sources.
  returned: always
  type: dict
  sample: {sources_merged: 5, source_rows: 13, inserted: 10, identical: 2, conflicts: 1, converted: 0, remapped: 5,
           repointed: 2, tables_kept_apart: 1}
schema_changes:
  description: Tables created and columns added (C(table.column)).
  returned: always
  type: dict
  sample: {tables_created: [events], columns_added: [users.last_login]}
prepared:
  description:
    - What happened with O(prepared_dir). V(none) without it, V(stored) when O(prepare=true) kept a merge,
      V(used) when a prepared merge was written, V(stale) when one was found out of date and the merge ran from
      scratch (see RV(prepared_reason)).
  returned: always
  type: str
  sample: used
written_by:
  description:
    - How a prepared merge was written. V(rename) when its kept copy replaced the target with one rename (a target
      with one link, the copy on the same filesystem, given the target's owner, mode and extended attributes, the
      target's -wal folded in first), V(backup) when it was written through SQLite's online backup.
  returned: when RV(prepared=used)
  type: str
  sample: rename
prepared_reason:
  description: Why a prepared merge was not used (a file changed since the preparation, other options, none found).
  returned: when RV(prepared=stale)
  type: str
  sample: /srv/zoe/data/auth.db changed since the merge was prepared
conflicts:
  description: The conflicts recorded by this run (first 20), both versions with secret values masked.
  returned: always
  type: list
  elements: dict
  sample: [{target_table: users, key: {username: user}, columns_differ: [email, password_hash],
            resolution: kept_target}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sqlite_merge import (CLASH_POLICY_CHOICES, DEFAULT_CONFLICTS_TABLE, DEFAULT_LEDGER_TABLE,
                                               ON_CONFLICT_CHOICES, MergeError)
from ansible.module_utils.sqlite_merge_prepare import plan_call


def run(module):
    """Plan, then apply once under the single check-mode guard."""
    params = dict(module.params)
    target, sources, prepare = params.pop("target"), params.pop("sources"), params.pop("prepare")
    prepared_dir = params.pop("prepared_dir")
    if module.check_mode:
        prepared_dir = None  # check mode always plans from scratch and leaves the prepared directory alone
    plan, apply, prepared, show_diff = plan_call(target, sources, prepare, prepared_dir, params)
    with plan:
        if plan.changed and not module.check_mode:
            result = apply()  # before plan.result(): the backup runs beside the result checks (apply_merge)
        else:
            result = dict(plan.result(), **prepared)
        if module._diff and plan.changed and show_diff:
            result["diff"] = [plan.diff()]
    result["changed"] = plan.changed
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            target=dict(type="path", required=True),
            sources=dict(type="list", elements="path", required=True),
            keys=dict(type="dict", default={}, no_log=False),
            on_conflict=dict(type="str", choices=list(ON_CONFLICT_CHOICES), default="keep_target"),
            newest_column=dict(type="str"),
            table_map=dict(type="dict", default={}),
            clash_policy=dict(type="str", choices=list(CLASH_POLICY_CHOICES), default="prefix"),
            references=dict(type="dict", default={}),
            secret_columns=dict(type="list", elements="str", no_log=False),
            ledger_table=dict(type="str", default=DEFAULT_LEDGER_TABLE),
            conflicts_table=dict(type="str", default=DEFAULT_CONFLICTS_TABLE),
            lock_timeout=dict(type="float", default=5.0),
            workdir=dict(type="path"),
            prepare=dict(type="bool", default=False),
            prepared_dir=dict(type="path"),
        ),
        required_if=[("on_conflict", "newest", ("newest_column",)), ("prepare", True, ("prepared_dir",))],
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except MergeError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
