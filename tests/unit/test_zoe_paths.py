"""zoe_paths: the run's paths resolved once, where they lead checked, and what cannot be moved or rewritten named.

Real directories, links and files in tmp_path; the immutable and append-only cases use chattr and are skipped
where the filesystem has no such flags. The 0555-directory case runs only without root (root writes into it);
as root, a read-only filesystem is test_a_read_only_data_dir in tests/integration/test_bad_inputs.py.
"""

import os
import shutil
import subprocess

import pytest

from ansible.module_utils.zoe_paths import cannot_change, check_paths, inode_flags, kind_of


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "zoe"
    (root / "data").mkdir(parents=True)
    for name in ("zoe.db", "auth.db", "sessions.db"):
        (root / "data" / name).write_bytes(b"SQLite format 3\0")
    (root / "docker-compose.yml").write_text("services: {}\n")
    (root / ".env").write_text("A=1\n")
    return tmp_path


def paths(tree, root=None, backup=None, **kwargs):
    root = root or str(tree / "zoe")
    return check_paths(root, kwargs.pop("data_dir", os.path.join(root, "data")),
                       backup if backup is not None else root + "-backups",
                       compose_files=kwargs.pop("compose_files", [os.path.join(root, "docker-compose.yml")]),
                       env_files=kwargs.pop("env_files", [os.path.join(root, ".env")]),
                       fold=kwargs.pop("fold", ["auth.db", "sessions.db"]), **kwargs)


def chattr(flag, path):
    if shutil.which("chattr") is None or subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode:
        pytest.skip("this filesystem has no chattr flags")


@pytest.mark.parametrize("spelling", ["{z}/", "{z}//", "{b}/y/../zoe", "{b}/link"],
                         ids=["trailing-slash", "double-slash", "dotdot", "symlinked-root"])
def test_every_spelling_of_the_root_resolves_to_the_checkout_and_its_sibling_backups(tree, spelling):
    (tree / "y").mkdir()
    (tree / "link").symlink_to(tree / "zoe")
    given = spelling.format(z=tree / "zoe", b=tree)
    # The inventory's `{{ zoe_root }}-backups` and `{{ zoe_root }}/data`, built from the text as given.
    result = paths(tree, root=given, backup=given + "-backups", data_dir=given + "/data")
    assert result["problems"] == []
    assert result["root"] == str(tree / "zoe")
    assert result["data_dir"] == str(tree / "zoe" / "data")
    assert result["backup_root"] == str(tree / "zoe-backups")


def test_the_root_alone_resolves_and_the_filesystem_root_is_named(tree):
    assert check_paths(str(tree / "zoe") + "/")["root"] == str(tree / "zoe")
    (tree / "slash").symlink_to("/")
    for given in ("/", str(tree / "slash")):
        problems = check_paths(given)["problems"]
        assert problems == ["zoe_root=%s resolves to the filesystem root /, not to a Zoe checkout: point it at the "
                            "checkout's directory." % given]


@pytest.mark.parametrize("where", ["data/bk2", "data", "logs/bk", "."], ids=["into-data", "data-itself", "into-checkout",
                                                                             "the-checkout"])
def test_a_backup_root_that_resolves_into_the_checkout_is_refused(tree, where):
    target = tree / "zoe" / where
    target.mkdir(parents=True, exist_ok=True)
    (tree / "zoe-backups").symlink_to(target)
    problems = paths(tree)["problems"]
    assert len(problems) == 1
    assert problems[0].startswith("zoe_backup_root=%s resolves to %s, inside the " % (tree / "zoe-backups",
                                                                                     os.path.realpath(str(target))))
    assert ("inside the data directory" in problems[0]) == where.startswith("data")


def test_a_backup_root_that_contains_the_checkout_is_refused(tree):
    problems = paths(tree, backup=str(tree))["problems"]
    assert problems == ["zoe_backup_root=%s resolves to %s, which contains the checkout %s: choose a directory outside "
                        "the checkout and the data directory." % (tree, tree, tree / "zoe")]


def test_a_backup_root_that_does_not_exist_yet_is_resolved_through_its_parent(tree):
    (tree / "bk").symlink_to(tree / "zoe" / "data")
    result = paths(tree, backup=str(tree / "bk" / "new" / "deeper"))
    assert result["backup_root"] == str(tree / "zoe" / "data" / "new" / "deeper")
    assert result["problems"][0].startswith("zoe_backup_root=%s resolves to %s, inside the data directory %s:" % (
        tree / "bk" / "new" / "deeper", result["backup_root"], tree / "zoe" / "data"))
    assert not (tree / "zoe" / "data" / "new").exists()


def test_a_fold_database_that_is_a_link_or_a_directory_is_named_as_such(tree):
    data = tree / "zoe" / "data"
    (data / "auth.db").unlink()
    (tree / "outside.db").write_bytes(b"SQLite format 3\0")
    (data / "auth.db").symlink_to(tree / "outside.db")
    (data / "sessions.db").unlink()
    (data / "sessions.db").mkdir()
    (data / "zoe.db-wal").symlink_to(tree / "outside.db")  # the primary's sidecar: not a fold file, not refused here
    problems = paths(tree)["problems"]
    assert problems == [
        "%s in zoe_fold_databases is a symbolic link (to %s): the run merges a fold database and then moves it out "
        "of %s, which would leave the file it points at behind; put the file itself in its place."
        % (data / "auth.db", tree / "outside.db", data),
        "%s in zoe_fold_databases is a directory, not a database file." % (data / "sessions.db")]


def test_a_fold_sidecar_that_is_a_link_is_refused(tree):
    data = tree / "zoe" / "data"
    (data / "auth.db-wal").symlink_to(tree / "elsewhere-wal")
    assert paths(tree)["problems"][0].startswith("%s in zoe_fold_databases is a symbolic link" % (data / "auth.db-wal"))


def test_an_env_file_that_is_a_link_is_followed_and_a_compose_link_is_refused(tree):
    root = tree / "zoe"
    (root / ".env").rename(root / ".env.production")
    (root / ".env").symlink_to(".env.production")
    result = paths(tree)
    assert result["problems"] == []
    assert result["env_files"] == [str(root / ".env.production")]
    assert result["followed_links"] == {str(root / ".env"): str(root / ".env.production")}
    assert os.path.islink(str(root / ".env"))

    (root / "docker-compose.yml").rename(root / "compose.real.yml")
    (root / "docker-compose.yml").symlink_to("compose.real.yml")
    assert paths(tree)["problems"] == [
        "compose file %s is a symbolic link (to compose.real.yml): compose resolves its relative paths against the "
        "file's own directory, so the run does not follow it; name the file itself in zoe_compose_files."
        % (root / "docker-compose.yml")]


def test_an_env_link_to_nothing_or_a_directory_is_refused(tree):
    root = tree / "zoe"
    (root / ".env").unlink()
    (root / ".env").symlink_to("missing.env")
    assert paths(tree)["problems"] == ["env file %s is a symbolic link to %s, which is missing: point it at the env "
                                       "file or remove it." % (root / ".env", root / "missing.env")]
    (root / ".env").unlink()
    (root / ".env").symlink_to("data")
    assert "which is a directory" in paths(tree)["problems"][0]


def test_a_missing_env_file_is_resolved_and_not_reported(tree):
    (tree / "zoe" / ".env").unlink()
    result = paths(tree)
    assert result["problems"] == [] and result["env_files"] == [str(tree / "zoe" / ".env")]


@pytest.mark.parametrize("flag,word", [("+i", "immutable"), ("+a", "append-only")])
def test_an_immutable_or_append_only_fold_file_is_named_before_the_run_moves_it(tree, flag, word):
    data = tree / "zoe" / "data"
    (data / "sessions.db-wal").write_bytes(b"")
    victim = data / "sessions.db-wal"
    chattr(flag, victim)
    try:
        result = paths(tree, retire=["auth.db", "sessions.db"])
        assert result["not_changeable"] == ["%s is %s (chattr; lsattr shows it): the run cannot move it" % (victim, word)]
        assert paths(tree, retire=["auth.db"])["not_changeable"] == []
    finally:
        subprocess.run(["chattr", flag.replace("+", "-"), str(victim)], check=True)


def test_a_file_in_an_immutable_directory_cannot_be_moved_or_rewritten(tree):
    data = tree / "zoe" / "data"
    chattr("+i", data)
    try:
        result = paths(tree, retire=["auth.db"], rewrite=[str(data / "zoe.db"), str(tree / "zoe" / ".env")])
        assert result["not_changeable"] == [
            "its directory %s is immutable (chattr): the run cannot move %s" % (data, data / "auth.db"),
            "its directory %s is immutable (chattr): the run cannot rewrite %s" % (data, data / "zoe.db")]
    finally:
        subprocess.run(["chattr", "-i", str(data)], check=True)


def test_an_immutable_compose_file_cannot_be_rewritten_and_missing_rewrites_are_skipped(tree):
    compose = tree / "zoe" / "docker-compose.yml"
    chattr("+i", compose)
    try:
        result = paths(tree, rewrite=[str(compose), str(tree / "zoe" / "src" / "gone.py")])
        assert result["not_changeable"] == ["%s is immutable (chattr; lsattr shows it): the run cannot rewrite it"
                                            % compose]
    finally:
        subprocess.run(["chattr", "-i", str(compose)], check=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 directory")
def test_a_read_only_directory_is_named_for_an_unprivileged_run(tree):
    data = tree / "zoe" / "data"
    data.chmod(0o555)
    try:
        assert cannot_change(str(data / "auth.db"), "move") == (
            "its directory %s is not writable (read-only filesystem or no permission): the run cannot move %s"
            % (data, data / "auth.db"))
    finally:
        data.chmod(0o755)


def test_the_checks_change_nothing(tree):
    data = tree / "zoe" / "data"
    before = {p: (os.lstat(p).st_mtime_ns, open(p, "rb").read()) for p in map(str, data.iterdir())}
    dir_mtime = os.stat(str(data)).st_mtime_ns
    paths(tree, retire=["auth.db", "sessions.db"], rewrite=[str(data / "zoe.db")])
    assert {p: (os.lstat(p).st_mtime_ns, open(p, "rb").read()) for p in map(str, data.iterdir())} == before
    assert os.stat(str(data)).st_mtime_ns == dir_mtime
    assert not (tree / "zoe-backups").exists()


def test_kind_of_and_flags_of_plain_files(tree):
    data = tree / "zoe" / "data"
    os.mkfifo(str(data / "fifo"))
    assert [kind_of(str(p)) for p in (data / "zoe.db", data, data / "fifo", data / "none")] == [
        "a regular file", "a directory", "a FIFO", None]
    assert inode_flags(str(data / "zoe.db")) & 0x30 == 0
