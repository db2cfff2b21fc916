# -*- coding: utf-8 -*-
"""The paths of a run, resolved once, and what they must be before anything is written. Read-only.

Standard library only: this runs on the managed host with its own python3.

Why it works the way it does:
- Every path is resolved with os.path.realpath before it is compared with another one: `DIR/zoe/`,
  `DIR/y/../zoe` and a symbolic link to DIR/zoe are the same checkout, and a backup root that is a link
  into data/ lies inside data/. The play uses the resolved paths from then on, so the snapshot it takes
  and the rollback that checks that snapshot see the same spelling. A backup root spelled as the root
  followed by `-backups` (the default, `{{ zoe_root }}-backups`) is the sibling of the resolved root, not
  the `-backups` directory that `DIR/zoe/` + `-backups` spells inside the checkout.
- An env file that is a symbolic link is followed: the run reads, snapshots and rewrites the file it points
  at, and the link stays as it is. A compose file that is a link is refused instead: compose and
  compose_env resolve the compose file's relative paths against its own directory, which a link changes.
- A fold database (or a sidecar of it) that is a link or a directory is refused by name: the retire step
  moves regular files out of data/, so a link would leave its target behind and a directory is no database.
- A file the run moves or rewrites must be movable and writable now, not only inside the downtime window:
  the immutable and append-only flags (FS_IOC_GETFLAGS) and access(2) with the effective ids, which also
  answers EROFS for a read-only filesystem, are checked for the file and its directory.
"""

from __future__ import annotations

import array
import fcntl
import os
import stat

SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
BACKUP_SUFFIX = "-backups"

# linux/fs.h: _IOR('f', 1, long); the kernel reads and writes an int through it.
FS_IOC_GETFLAGS = 0x80086601
FS_IMMUTABLE_FL = 0x00000010
FS_APPEND_FL = 0x00000020


def is_under(path, parent):
    """True when `path` is `parent` or lies below it (both real paths)."""
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def kind_of(path):
    """What is at `path`, in words, without following a final symbolic link (None when nothing is)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    for test, word in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "a special file"


def inode_flags(path):
    """The inode flags of a regular file or directory (chattr), 0 where the filesystem has none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return 0
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        return buf[0]
    except OSError:
        return 0
    finally:
        os.close(fd)


def _access(path, mode):
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _flag_words(flags):
    words = []
    if flags & FS_IMMUTABLE_FL:
        words.append("immutable")
    if flags & FS_APPEND_FL:
        words.append("append-only")
    return " and ".join(words)


def cannot_change(path, how):
    """Why the run could not move (how='move') or rewrite (how='rewrite') `path`; None when it can.

    Moving takes the file out of its directory; rewriting writes it in place or renames a new copy over it,
    with a journal or temp file beside it. Both need a writable directory and a file without the immutable
    or append-only flag; a rewrite also needs the file itself writable.
    """
    directory = os.path.dirname(path)
    words = _flag_words(inode_flags(path))
    if words:
        return "%s is %s (chattr; lsattr shows it): the run cannot %s it" % (path, words, how)
    words = _flag_words(inode_flags(directory))
    if words:
        return "its directory %s is %s (chattr): the run cannot %s %s" % (directory, words, how, path)
    if not _access(directory, os.W_OK | os.X_OK):
        return "its directory %s is not writable (read-only filesystem or no permission): the run cannot %s %s" % (
            directory, how, path)
    if how == "rewrite" and not _access(path, os.W_OK):
        return "%s is not writable: the run cannot rewrite it" % path
    return None


def resolve(path):
    """The real path of an absolute path (its final component need not exist)."""
    return os.path.realpath(path) if path else path


def _refuse_fold_kinds(data_dir, fold):
    """Sentences for the fold names whose file or sidecar in data_dir is a symbolic link or a directory."""
    problems = []
    for name in fold:
        for candidate in [name] + [name + suffix for suffix in SIDECAR_SUFFIXES]:
            path = os.path.join(data_dir, candidate)
            kind = kind_of(path)
            if kind == "a symbolic link":
                problems.append("%s in zoe_fold_databases is a symbolic link (to %s): the run merges a fold database and "
                                "then moves it out of %s, which would leave the file it points at behind; put the file "
                                "itself in its place." % (path, os.readlink(path), data_dir))
            elif kind == "a directory":
                problems.append("%s in zoe_fold_databases is a directory, not a database file." % path)
    return problems


def check_paths(root, data_dir=None, backup_root=None, compose_files=(), env_files=(), fold=(), retire=(), rewrite=()):
    """Resolve the run's paths and say what is wrong with them. Reads only metadata; never writes.

    Without data_dir or backup_root only the root is resolved and checked.

    Returns a dict: root, data_dir, backup_root, compose_files, env_files as real paths; followed_links
    ({link: target} of the env files followed); problems (sentences naming the path, [] when all is well);
    and, for the files in `retire` (moved out of data/, with their sidecars) and `rewrite` (written in
    place or replaced), not_changeable (sentences).
    """
    problems = []
    real_root = resolve(root)
    if real_root == os.sep:
        problems.append("zoe_root=%s resolves to the filesystem root /, not to a Zoe checkout: point it at the "
                        "checkout's directory." % root)
    if data_dir is None or backup_root is None:
        return {"root": real_root, "compose_files": [], "env_files": [], "followed_links": {}, "problems": problems,
                "not_changeable": []}
    real_data = resolve(data_dir)
    given_backup = backup_root
    if backup_root == root + BACKUP_SUFFIX:
        # `{{ zoe_root }}-backups`, the default, names the sibling of the checkout; with zoe_root=DIR/zoe/ the
        # text reads DIR/zoe/-backups, a directory inside the checkout.
        backup_root = real_root + BACKUP_SUFFIX
    real_backup = resolve(backup_root)
    inside = [(n, p) for n, p in (("the data directory", real_data), ("the checkout", real_root)) if is_under(real_backup, p)]
    around = [(n, p) for n, p in (("the checkout", real_root), ("the data directory", real_data)) if is_under(p, real_backup)]
    if inside:
        problems.append("zoe_backup_root=%s resolves to %s, inside %s %s: the snapshots hold every password hash and "
                        "token and must lie outside it; choose a directory outside the checkout and the data "
                        "directory." % ((given_backup, real_backup) + inside[0]))
    elif around:
        problems.append("zoe_backup_root=%s resolves to %s, which contains %s %s: choose a directory outside the "
                        "checkout and the data directory." % ((given_backup, real_backup) + around[0]))

    compose_real = []
    for path in compose_files:
        if os.path.islink(path):
            problems.append("compose file %s is a symbolic link (to %s): compose resolves its relative paths against "
                            "the file's own directory, so the run does not follow it; name the file itself in "
                            "zoe_compose_files." % (path, os.readlink(path)))
        compose_real.append(resolve(path))

    env_real, followed = [], {}
    for path in env_files:
        real = resolve(path)
        if os.path.islink(path):
            if not os.path.isfile(real):
                problems.append("env file %s is a symbolic link to %s, which is %s: point it at the env file or remove "
                                "it." % (path, real, kind_of(real) or "missing"))
            followed[path] = real
        env_real.append(real)

    problems += _refuse_fold_kinds(real_data, fold)

    not_changeable = []
    for name in retire:
        for candidate in [name] + [name + suffix for suffix in SIDECAR_SUFFIXES]:
            path = os.path.join(real_data, candidate)
            if os.path.isfile(path) and not os.path.islink(path):
                reason = cannot_change(path, "move")
                if reason:
                    not_changeable.append(reason)
    for path in rewrite:
        real = resolve(path)
        if os.path.exists(real):
            reason = cannot_change(real, "rewrite")
            if reason:
                not_changeable.append(reason)
    return {"root": real_root, "data_dir": real_data, "backup_root": real_backup, "compose_files": compose_real,
            "env_files": env_real, "followed_links": followed, "problems": problems, "not_changeable": not_changeable}

