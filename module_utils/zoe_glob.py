# -*- coding: utf-8 -*-
"""The one meaning of a glob in zoe-consolidate: path globs, as in .gitignore.

Every option that takes a glob (zoe_audit's `exclude`, volume_snapshot's `exclude`, db_references'
`include`/`exclude`/`exempt`, and the role variables that feed them) matches it here, against a path
relative to the root that option walks, with `/` as the separator:

- `*` and `?` stay inside one path component; `**` crosses `/` (`docs/**`, `**/migrations/*.py`);
  `[...]` is a character class (`[!...]` negates).
- A pattern without `/` matches a base name at any depth (`*.md`, `node_modules`), and a directory of
  that name also covers everything below it.
- A pattern with `/` is anchored at the root (`services/*/migrate.py`); a leading `./` or `/` is dropped.
  A pattern naming a directory also covers everything below it (`data/cache` covers `data/cache/x.db`).

Why this one and not fnmatch: fnmatch's `*` crosses `/`, so `data/*.db` would also exclude
`data/old/users.db`, and an exclude that says more than its author meant drops a database from the
audit or a file from the rollback point without a word. Path globs say exactly the components they name.

Standard library only: this file runs on the managed host.
"""
from __future__ import annotations

import fnmatch
import re


def glob_regex(pattern):
    """Translate a path glob (`*`, `?`, `**`, `[...]`) into a regex over `/` paths (not anchored)."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
                i += 1
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[%s]" % body)
                i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def normalize(pattern):
    """The pattern as matched: surrounding blanks, a leading `./` or `/` and a trailing `/` dropped."""
    pattern = pattern.strip()
    if pattern.startswith("./"):
        pattern = pattern[2:]
    return pattern.lstrip("/").rstrip("/")


def glob_match(pattern, relpath):
    """True when a root-relative path (`/`-separated) matches one path glob (see the module docstring)."""
    pattern = normalize(pattern)
    if not pattern:
        return False
    relpath = relpath.strip("/")
    if relpath.startswith("./"):
        relpath = relpath[2:]
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(part, pattern) for part in relpath.split("/"))
    return re.fullmatch(glob_regex(pattern) + "(?:/.*)?", relpath) is not None


def any_match(patterns, relpath):
    """True when any of the globs matches the path."""
    return any(glob_match(pattern, relpath) for pattern in patterns)
