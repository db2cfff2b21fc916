#!/usr/bin/env python3
"""Print the variables table of a role's README from its defaults/main.yml (comment above each key).

    tools/role_docs.py roles/backup      # paste the output under "## Variables" in roles/backup/README.md

tests/unit/test_role_docs.py fails when a default is missing from its role's README.
"""

import os
import sys


def defaults_with_comments(role_dir):
    """[(name, default text, comment)] in file order; the comment is the block of # lines above the key."""
    path = os.path.join(role_dir, "defaults", "main.yml")
    rows, comment, lines = [], [], open(path).read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            comment.append(line.lstrip("# ").rstrip())
        elif line and not line.startswith((" ", "-", "---")) and ":" in line:
            name, _, value = line.partition(":")
            value = value.strip()
            while i + 1 < len(lines) and lines[i + 1].startswith(" "):
                i += 1
                value += " " + lines[i].strip()
            rows.append((name.strip(), value, " ".join(comment)))
            comment = []
        elif not line.strip():
            comment = []
        i += 1
    return rows


def main(role_dir):
    print("| variable | default | meaning |")
    print("|---|---|---|")
    for name, value, comment in defaults_with_comments(role_dir):
        print("| `%s` | `%s` | %s |" % (name, value.replace("|", "\\|"), comment))


if __name__ == "__main__":
    main(sys.argv[1])
