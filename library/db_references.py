#!/usr/bin/python
# -*- coding: utf-8 -*-
# Audit and rewrite references to database file names in a source tree.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: db_references
short_description: Audit and rewrite references to database names in a source tree
description:
  - V(audit) walks a tree and reports every reference to the configured database names with its file,
    line, column and kind. The preflight role and the guard use it.
  - >-
    V(rewrite) replaces the references by O(mapping) and writes each changed file atomically (temporary
    file in the same directory, mode and owner kept). Files matching O(exempt) are never rewritten: the
    migration's own tooling and records keep their old names on purpose. Every reference not rewritten
    is listed in RV(left_alone) with the reason.
  - >-
    V(rewrite) also finds, without configuration, the files it must not rewrite: a file that names a
    retired name (a key of O(mapping)) and the name it maps to (the primary) in roles that differ. A
    rewrite would make it name the primary where it named a database other than the primary: a migration
    tool would copy the primary onto itself, a validator would forbid the primary, a mapping would map
    the primary to itself. Three signs mark such a file. C(together): one line names both
    (C('auth.db': 'zoe.db'), C(cp auth.db zoe.db), a docstring or doc line "merge auth.db into zoe.db").
    C(attach): the file runs an SQL C(ATTACH) and names both. C(opposite roles): the identifiers and keys
    next to a retired name and next to the primary (on the name's line, or when it has none, on the
    nearest less-indented line above, the list or block it is in) carry source/old/forbidden words for
    one and target/new/allowed words for the other (C(SRC_DB)/C(DST_DB), C(FORBIDDEN = [...])/C(ALLOWED
    = [...]), JSON C("retired")/C("allowed")). Such a file is left byte-identical and listed in
    RV(left_for_review) with the reason and the lines; its references are in RV(left_alone) with reason
    C(left for review).
  - >-
    Code that opens several databases, each for its own tables, shows none of these signs and is
    rewritten: after the merge those tables live in the primary. Role words count in code only;
    comments and doc files count for C(together) alone. Not detected: a tool that reads the primary and
    retired databases alike as sources of a third database; list such files in O(exempt).
  - "Matching respects file-name boundaries: C(auth.db) matches C(/app/data/auth.db), C(\"auth.db\"),
    C(auth.db-wal) (a SQLite sidecar of the same database) and C(auth.db.) at the end of a sentence,
    and does not match C(oauth.db), C(myauth.db), C(zoe-auth.db), C(.auth.db) or C(auth.db.bak)
    (a name followed by more file-name characters is another file)."
  - >-
    Skipped without being read: directories in O(skip_dirs), paths ignored by C(.gitignore) files or
    C(.git/info/exclude) when O(respect_gitignore), symbolic links, binary files (a NUL byte in the first 8 KiB) and files larger
    than O(max_file_size). Skipped files are listed in RV(skipped_files).
  - Diffs and messages are masked for values that look like secrets.
options:
  root:
    description: The tree to walk (the Zoe checkout).
    type: path
    required: true
  mode:
    description: V(audit) reports only; V(rewrite) also replaces the references by O(mapping).
    type: str
    choices: [audit, rewrite]
    default: audit
  mapping:
    description: Old name -> new name, for example C(auth.db) -> C(zoe.db). Required for V(rewrite).
    type: dict
    default: {}
  names:
    description: The names to report. Default the keys of O(mapping); the keys of O(mapping) are always looked for.
    type: list
    elements: str
    default: []
  include:
    description:
      - Globs of files to look at, relative to O(root) (C(*.py), C(services/**)). Empty means every file.
        A glob without C(/) matches the base name at any depth.
    type: list
    elements: str
    default: []
  exclude:
    description: Globs of files not to look at, as O(include).
    type: list
    elements: str
    default: []
  exempt:
    description:
      - Globs or paths (absolute or relative to O(root)) of files that are reported but never rewritten.
    type: list
    elements: str
    default: []
  skip_dirs:
    description:
      - Directories never entered, by name at any depth (C(node_modules)) or by path relative to
        O(root) (C(data/backups)). Put the backup area here when it lies inside O(root).
        C(.zoe-guard) is where the guard role installs its validator and configuration.
    type: list
    elements: str
    default: ['.git', '.hg', '.svn', 'node_modules', '__pycache__', '.venv', 'venv', '.tox', '.mypy_cache',
              '.pytest_cache', '.cache', '.zoe-consolidate', '.zoe-guard']
  respect_gitignore:
    description: >-
      Skip what the C(.gitignore) files of the tree and its C(.git/info/exclude) ignore (root and nested
      files, negation, dir-only rules).
    type: bool
    default: true
  max_file_size:
    description: Files larger than this many bytes are skipped (and listed in RV(skipped_files)). 0 means no limit.
    type: int
    default: 2097152
extends_documentation_fragment:
  - action_common_attributes
  - zoe
attributes:
  idempotent:
    description: A second rewrite with the same mapping finds nothing to change and reports changed=false.
    details: >-
      A mapping whose new name is itself a mapped name is refused, so a rerun never changes a file again.
notes:
  - Runs on the managed host with the standard library only.
  - "Kinds - C(doc) (a Markdown/reST/text file or anything under docs/), C(comment) (after a comment marker),
    C(env_default) (C(os.getenv(\"DB\", \"auth.db\")), C(${DB:-...})), C(connect_call)
    (C(sqlite3.connect(...)), C(create_engine(...))), C(path_literal)
    (in a quoted string or after a C(/), such as C(DB=/app/data/auth.db)), C(other)."
"""

EXAMPLES = r"""
- name: Audit references to the retired databases
  db_references:
    root: /opt/zoe
    names: [auth.db, sessions.db]
  register: zoe_refs

- name: Point code at zoe.db, leaving the migration tooling alone
  db_references:
    root: /opt/zoe
    mode: rewrite
    mapping:
      auth.db: zoe.db
      sessions.db: zoe.db
    exempt:
      - scripts/migrate_*.py
      - docs/MIGRATION.md
"""

RETURN = r"""
references:
  description: Every reference found (before any rewrite), sorted by file and line.
  returned: always
  type: list
  elements: dict
  sample:
    - {file: services/auth/db.py, line: 12, column: 31, name: auth.db, kind: connect_call}
total:
  description: Number of references found.
  returned: always
  type: int
  sample: 441
counts:
  description: References found per file.
  returned: always
  type: dict
  sample: {services/auth/db.py: 3}
kinds:
  description: References found per kind.
  returned: always
  type: dict
  sample: {path_literal: 120, env_default: 30, connect_call: 40, comment: 50, doc: 200, other: 1}
files_scanned:
  description: Number of text files read.
  returned: always
  type: int
  sample: 310
files_changed:
  description: Files rewritten (in check mode, that would be rewritten), relative to O(root).
  returned: always
  type: list
  elements: str
  sample: [services/auth/db.py]
changes:
  description: References rewritten per file.
  returned: always
  type: dict
  sample: {services/auth/db.py: 3}
left_for_review:
  description:
    - >-
      Files not rewritten in V(rewrite) mode because they name a retired name and the primary in roles that
      differ, with the reason (which sign, which names, which role words) and the lines that show it. The
      files are left byte-identical. Empty in V(audit) mode.
  returned: always
  type: list
  elements: dict
  sample:
    - file: scripts/utilities/consolidate_databases.py
      reason: "line 42 names auth.db and zoe.db together: rewritten, it would name zoe.db twice"
      lines: [42]
left_alone:
  description: >-
    References found but not rewritten in V(rewrite) mode, with the reason (exempt, left for review,
    not in mapping).
  returned: always
  type: list
  elements: dict
  sample:
    - {file: scripts/migrate_auth.py, line: 4, column: 9, name: auth.db, kind: path_literal, reason: exempt}
skipped_files:
  description: Files not read, with the reason (binary, larger than max_file_size).
  returned: always
  type: list
  elements: dict
  sample:
    - {file: data/auth.db, reason: binary}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.db_references import (
    DEFAULT_SKIP_DIRS, ReferencesError, apply_references, plan_references)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            mode=dict(type="str", choices=["audit", "rewrite"], default="audit"),
            mapping=dict(type="dict", default={}),
            names=dict(type="list", elements="str", default=[]),
            include=dict(type="list", elements="str", default=[]),
            exclude=dict(type="list", elements="str", default=[]),
            exempt=dict(type="list", elements="str", default=[]),
            skip_dirs=dict(type="list", elements="str", default=list(DEFAULT_SKIP_DIRS)),
            respect_gitignore=dict(type="bool", default=True),
            max_file_size=dict(type="int", default=2097152),
        ),
        required_if=[("mode", "rewrite", ("mapping",))],
        supports_check_mode=True,
    )
    params = module.params
    try:
        plan = plan_references(
            params["root"], mode=params["mode"], mapping=params["mapping"], names=params["names"],
            include=params["include"], exclude=params["exclude"], exempt=params["exempt"],
            skip_dirs=params["skip_dirs"], respect_gitignore=params["respect_gitignore"],
            max_file_size=params["max_file_size"])
        if plan.changed and not module.check_mode:
            apply_references(module, plan)
    except ReferencesError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    references = plan.references()
    kinds = {}
    for ref in references:
        kinds[ref["kind"]] = kinds.get(ref["kind"], 0) + 1
    result = dict(
        changed=plan.changed,
        references=references,
        total=len(references),
        counts=plan.counts(),
        kinds=kinds,
        files_scanned=len(plan.files),
        files_changed=[item.relpath for item in plan.changed_files],
        changes=plan.changes(),
        left_for_review=plan.left_for_review(),
        left_alone=plan.left_alone(),
        skipped_files=plan.skipped,
    )
    if module._diff and plan.changed:
        result["diff"] = plan.diffs()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
