# -*- coding: utf-8 -*-
# Sources of volume_snapshot: paths and Docker named volumes, scanned into manifest entries.
# Standard library only: this runs on the managed host with its system python3.
"""What a snapshot holds: the roots (paths, Docker named volumes), their entries, the excluded paths."""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import subprocess

from ansible.module_utils.volume_snapshot_common import SIDECAR_SUFFIXES, SourceError, VolumeError
from ansible.module_utils.zoe_glob import any_match
from ansible.module_utils.zoe_sqlite import is_sqlite_file

LIVE_MODES = ("backup_api", "read_lock")
# The manifest's `exclude_syntax`: O(exclude) holds zoe_glob path globs (manifests without it: fnmatch).
EXCLUDE_SYNTAX = "path-glob"


def _excluded(rel, patterns, syntax=EXCLUDE_SYNTAX):
    """True when a path relative to its root matches one of the O(exclude) globs.

    The project's path globs (zoe_glob): `*` stays in a component, `**` crosses `/`, a pattern without `/`
    names a base name at any depth, one with `/` is anchored at the root, a directory covers what is under
    it. A manifest without `exclude_syntax` was written when exclude meant fnmatch on the relative path or
    the base name (`*` crossing `/`); a restore of it leaves alone exactly the paths its snapshot left out.
    """
    if syntax == EXCLUDE_SYNTAX:
        return any_match(patterns, rel)
    name = os.path.basename(rel)
    return any(fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(name, pat) for pat in patterns)


def resolve_volume(name, docker_cli="docker"):
    """Mountpoint of a Docker named volume, asked of the engine through the docker CLI."""
    try:
        proc = subprocess.run([docker_cli, "volume", "inspect", "--format", "{{json .Mountpoint}}", name],
                              capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise VolumeError("cannot run the docker CLI (%s) to resolve volume %s: %s" % (docker_cli, name, exc))
    if proc.returncode != 0:
        raise VolumeError("docker volume %s cannot be inspected: %s" % (name, proc.stderr.strip()))
    mountpoint = json.loads(proc.stdout.strip() or '""')
    if not mountpoint or not os.path.isabs(mountpoint):
        raise VolumeError("docker volume %s has no local mountpoint" % name)
    return mountpoint


def resolve_roots(paths, volumes, docker_cli="docker"):
    """The snapshot roots, in option order: [{path, kind (dir/file), volume}]."""
    roots = []
    for path in paths or []:
        if not os.path.isabs(path):
            raise SourceError("O(paths) entry %s is not an absolute path" % path)
        path = os.path.normpath(path)
        if os.path.islink(path) or not os.path.exists(path):
            raise SourceError("O(paths) entry %s does not exist or is a symlink" % path)
        kind = "dir" if os.path.isdir(path) else "file"
        if kind == "file" and not os.path.isfile(path):
            raise SourceError("O(paths) entry %s is neither a regular file nor a directory" % path)
        roots.append({"path": path, "kind": kind, "volume": None})
    for name in volumes or []:
        roots.append({"path": os.path.normpath(resolve_volume(name, docker_cli)), "kind": "dir", "volume": name})
    seen = set()
    for root in roots:
        for other in seen:
            if root["path"] == other or root["path"].startswith(other + os.sep) or \
                    other.startswith(root["path"] + os.sep):
                raise SourceError("snapshot paths overlap: %s and %s" % (other, root["path"]))
        seen.add(root["path"])
    return roots


def _entry_for(index, rel, path, st):
    entry = {"root": index, "rel": rel, "path": path, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
             "gid": st.st_gid, "mtime_ns": st.st_mtime_ns, "atime_ns": st.st_atime_ns}
    if stat.S_ISDIR(st.st_mode):
        entry["type"] = "dir"
    elif stat.S_ISLNK(st.st_mode):
        entry["type"] = "symlink"
        entry["target"] = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        entry.update(type="file", size=st.st_size, ino=st.st_ino)
    else:
        return None
    return entry


def scan_root(index, root, exclude):
    """Entries of one root (parents before children) and the count of skipped special files.

    A file root brings its SQLite sidecars (-wal, -shm, -journal) along: they are part of the database.
    """
    entries, skipped = [], 0
    if root["kind"] == "file":
        base = os.path.basename(root["path"])
        for name in [base] + [base + suffix for suffix in SIDECAR_SUFFIXES]:
            path = os.path.join(os.path.dirname(root["path"]), name)
            try:
                entry = _entry_for(index, name, path, os.lstat(path))
            except FileNotFoundError:
                if name == base:
                    raise SourceError("O(paths) entry %s disappeared" % path)
                continue  # no such sidecar (or a live one came and went)
            if entry is not None:
                entries.append(entry)
        return entries, skipped
    top = root["path"]
    entries.append(_entry_for(index, ".", top, os.lstat(top)))
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        kept = []
        for name in dirnames + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            if _excluded(rel, exclude):
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if name.endswith(SIDECAR_SUFFIXES):
                    continue  # a live database's -journal (or -wal) came and went while we listed
                raise
            entry = _entry_for(index, rel, path, st)
            if entry is None:
                skipped += 1
                continue
            entries.append(entry)
            if name in dirnames and entry["type"] == "dir":
                kept.append(name)
        dirnames[:] = kept
    return entries, skipped


def _mark_databases(entries, sqlite_mode):
    """Flag SQLite databases; in a live mode, drop their sidecars.

    backup_api writes a self-contained copy; read_lock copies the -wal itself, under the same read
    transaction as the database, and only when the copy needs it (see sqlite_read_lock_copy()).
    """
    by_path = {entry["path"]: entry for entry in entries}
    for entry in entries:
        if entry["type"] == "file" and is_sqlite_file(entry["path"]):
            entry["sqlite"] = sqlite_mode
    if sqlite_mode not in LIVE_MODES:
        return entries
    dropped = set()
    for entry in entries:
        for suffix in SIDECAR_SUFFIXES:
            if entry["path"].endswith(suffix) and by_path.get(entry["path"][:-len(suffix)], {}).get("sqlite"):
                dropped.add(entry["path"])
    return [entry for entry in entries if entry["path"] not in dropped]


def _totals(entries):
    files = [e for e in entries if e["type"] == "file"]
    return {"files": len(files), "dirs": sum(1 for e in entries if e["type"] == "dir"),
            "symlinks": sum(1 for e in entries if e["type"] == "symlink"),
            "bytes": sum(e["size"] for e in files), "databases": sum(1 for e in files if e.get("sqlite"))}
