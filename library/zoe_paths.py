#!/usr/bin/python
# -*- coding: utf-8 -*-
# zoe-consolidate: resolve the paths of a run and check them before anything is written.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: zoe_paths
short_description: Resolve the paths of a Zoe run and say what is wrong with them, read-only
description:
  - Resolves O(root), O(data_dir), O(backup_root), O(compose_files) and O(env_files) to real paths (trailing
    slashes, C(..) and symbolic links resolved), so that every later containment check and the snapshot's
    manifest use one spelling of each path.
  - Reports in RV(problems), one sentence each, a root that resolves to C(/); a backup root that resolves into
    the checkout or the data directory, or that contains them; a compose file that is a symbolic link; an env
    file that is a link to something other than a regular file; a fold database (or its C(-wal), C(-shm),
    C(-journal)) in O(data_dir) that is a symbolic link or a directory.
  - An env file that is a symbolic link to a regular file is followed; its target is returned in RV(env_files)
    and the link in RV(followed_links).
  - Reports in RV(not_changeable) every file of O(retire) (and its sidecars) that could not be moved out of
    O(data_dir), and every file of O(rewrite) that could not be rewritten, because the file or its directory is
    immutable or append-only (chattr), or the directory or file is not writable (permissions, read-only
    filesystem).
  - Never changes anything and never fails for these findings; the play decides how to refuse.
extends_documentation_fragment:
  - action_common_attributes
  - zoe.read_only
attributes:
  check_mode:
    details: Read-only; runs unchanged in check mode so a dry run checks the real paths.
options:
  root:
    description: The Zoe checkout on the host, as configured (C(zoe_root)).
    type: path
    required: true
  data_dir:
    description:
      - The data directory the services mount.
      - Without it only O(root) is resolved (the play resolves the root first, then the paths derived from it).
    type: path
  backup_root:
    description:
      - Where the snapshots, retired databases and the run lock go; it need not exist yet.
      - Spelled as O(root) followed by C(-backups) (the default C({{ zoe_root }}-backups)), it is the sibling of
        the resolved root, also when O(root) ends in C(/).
    type: path
  compose_files:
    description: The compose files the run rewrites and snapshots.
    type: list
    elements: path
    default: []
  env_files:
    description: The env files the run rewrites and snapshots (missing ones are returned resolved, not reported).
    type: list
    elements: path
    default: []
  fold:
    description: File names of the databases of O(data_dir) that the run merges and then moves out.
    type: list
    elements: str
    default: []
  retire:
    description: File names in O(data_dir) that the run will move out with their sidecars (the fold databases present).
    type: list
    elements: str
    default: []
  rewrite:
    description:
      - Paths the run will write in place or replace (the primary, compose, env and code files).
      - Missing ones are skipped.
    type: list
    elements: path
    default: []
notes:
  - Runs with the host's own python3 and the standard library only.
  - The immutable and append-only flags are read with the FS_IOC_GETFLAGS ioctl; on a filesystem without
    them only the permissions and the read-only state are checked.
seealso:
  - module: zoe_audit
"""

EXAMPLES = r"""
- name: Resolve the checkout first (the other paths derive from it)
  zoe_paths:
    root: /srv/zoe/
  register: root

- name: Resolve the paths of the run
  zoe_paths:
    root: /srv/zoe/
    data_dir: /srv/zoe/data
    backup_root: /srv/zoe-backups
    compose_files: [/srv/zoe/docker-compose.yml]
    env_files: [/srv/zoe/.env]
    fold: [auth.db, sessions.db]
  register: paths

- name: Check that what the run moves and rewrites can be moved and rewritten
  zoe_paths:
    root: /srv/zoe
    data_dir: /srv/zoe/data
    backup_root: /srv/zoe-backups
    retire: [auth.db, sessions.db]
    rewrite: [/srv/zoe/data/zoe.db, /srv/zoe/docker-compose.yml]
  register: changeable
"""

RETURN = r"""
root:
  description: O(root) as a real path.
  returned: always
  type: str
  sample: /srv/zoe
data_dir:
  description: O(data_dir) as a real path.
  returned: when O(data_dir) is given
  type: str
  sample: /srv/zoe/data
backup_root:
  description: O(backup_root) as a real path (its existing part resolved, the rest appended).
  returned: when O(backup_root) is given
  type: str
  sample: /srv/zoe-backups
compose_files:
  description: O(compose_files) as real paths, in order.
  returned: always
  type: list
  elements: str
  sample: [/srv/zoe/docker-compose.yml]
env_files:
  description: O(env_files) as real paths, in order; a link to an env file is replaced by its target.
  returned: always
  type: list
  elements: str
  sample: [/srv/zoe/.env.production]
followed_links:
  description: The env files of O(env_files) that are symbolic links, each with the real path it points at.
  returned: always
  type: dict
  sample: {/srv/zoe/.env: /srv/zoe/.env.production}
problems:
  description: One sentence per path that makes the run unsafe, naming the path; empty when there is none.
  returned: always
  type: list
  elements: str
  sample: ["/srv/zoe/data/auth.db in zoe_fold_databases is a directory, not a database file."]
not_changeable:
  description: One sentence per file of O(retire) or O(rewrite) that the run could not move or rewrite.
  returned: always
  type: list
  elements: str
  sample: ["/srv/zoe/data/auth.db is immutable (chattr; lsattr shows it): the run cannot move it"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.zoe_paths import check_paths


def main():
    argument_spec = dict(
        root=dict(type="path", required=True),
        data_dir=dict(type="path"),
        backup_root=dict(type="path"),
        compose_files=dict(type="list", elements="path", default=[]),
        env_files=dict(type="list", elements="path", default=[]),
        fold=dict(type="list", elements="str", default=[]),
        retire=dict(type="list", elements="str", default=[]),
        rewrite=dict(type="list", elements="path", default=[]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    result = check_paths(p["root"], p["data_dir"], p["backup_root"], compose_files=p["compose_files"],
                         env_files=p["env_files"], fold=p["fold"], retire=p["retire"], rewrite=p["rewrite"])
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
