"""zoe_glob: the one glob meaning of every option that takes a glob (path globs, as in .gitignore)."""

import pytest

from ansible.module_utils.zoe_glob import any_match, glob_match


@pytest.mark.parametrize("pattern, path, expected", [
    # `*` stays in one component: the case fnmatch gets wrong for an exclude
    ("data/*.db", "data/zoe.db", True),
    ("data/*.db", "data/old/users.db", False),
    ("data/**/*.db", "data/old/users.db", True),
    ("data/**", "data/old/users.db", True),
    ("**/migrations/*.py", "services/zoe-core/migrations/001.py", True),
    ("**/migrations/*.py", "migrations/001.py", True),
    # no `/`: a base name or a directory name at any depth
    ("*.md", "docs/deep/README.md", True),
    ("*.md", "docs/README.mdx", False),
    ("node_modules", "web/node_modules/pkg/index.js", True),
    ("cache", "data/cache/x.db", True),
    ("zoe.db", "data/zoe.db-wal", False),
    ("zoe.db*", "data/zoe.db-wal", True),
    # `/`: anchored at the root; a directory covers what is below it; ./ and / are dropped
    ("services/*/migrate.py", "services/zoe-core/migrate.py", True),
    ("services/*/migrate.py", "x/services/zoe-core/migrate.py", False),
    ("data/cache", "data/cache/x.db", True),
    ("./data/cache/", "data/cache/x.db", True),
    ("/data/cache", "data/cache/x.db", True),
    ("data/cache", "data/cachex/x.db", False),
    ("?.db", "a.db", True),
    ("?.db", "ab.db", False),
    ("[!a]*.db", "b.db", True),
    ("[!a]*.db", "a.db", False),
    ("", "a.db", False),
])
def test_glob_match(pattern, path, expected):
    assert glob_match(pattern, path) is expected


def test_any_match():
    assert any_match(["*.md", "data/*.db"], "data/zoe.db")
    assert not any_match(["*.md", "data/*.db"], "data/old/zoe.db")
    assert not any_match([], "data/zoe.db")
