"""volume_snapshot's `exclude` on real files: the project's path globs (zoe_glob), not fnmatch."""

import hashlib
import json
import os

from ansible.module_utils.volume_snapshot import (
    apply_restore, apply_snapshot, load_manifest, plan_restore, plan_snapshot)


def write(root, rel, data=b"x"):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def tree(tmp_path):
    root = str(tmp_path / "data")
    for rel in ("zoe.db", "data/a.db", "data/old/x.db", "data/old/notes.log", "run.log", "cache/blob.bin",
                "sub/cache/deep.bin", "keep/cachex.bin"):
        write(root, rel, rel.encode())
    return root


def snapshot_rels(backup_root, snap_id):
    manifest = load_manifest(os.path.join(backup_root, snap_id))
    return {entry["rel"] for entry in manifest["entries"] if entry["type"] == "file"}, manifest


def test_exclude_is_a_path_glob_not_fnmatch(tmp_path):
    """`data/*.db` names data/a.db only: under fnmatch (`*` crossing `/`) it also dropped data/old/x.db."""
    root, bk = tree(tmp_path), str(tmp_path / "bk")
    apply_snapshot(plan_snapshot(bk, [root], snapshot="s1", exclude=["data/*.db", "*.log", "cache"]))
    rels, manifest = snapshot_rels(bk, "s1")
    assert "data/old/x.db" in rels, "data/*.db must not exclude data/old/x.db"
    assert "data/a.db" not in rels
    assert not {"run.log", "data/old/notes.log"} & rels  # no `/`: a base name at any depth
    assert not {"cache/blob.bin", "sub/cache/deep.bin"} & rels  # a directory covers what is under it
    assert {"zoe.db", "keep/cachex.bin"} <= rels
    assert manifest["exclude_syntax"] == "path-glob"

    # A restore leaves the excluded live paths alone and brings the rest back.
    os.unlink(os.path.join(root, "data", "old", "x.db"))
    write(root, "data/b.db")  # also matches data/*.db: left alone
    write(root, "data/old/new.db")  # not excluded: an extra, removed
    plan = plan_restore(bk, "s1")
    removed = {a["path"] for a in plan.result["actions"] if a["action"] == "remove"}
    assert removed == {os.path.join(root, "data", "old", "new.db")}
    apply_restore(plan)
    for rel in ("data/a.db", "data/b.db", "run.log", "cache/blob.bin", "data/old/x.db"):
        assert os.path.exists(os.path.join(root, rel)), rel
    assert not os.path.exists(os.path.join(root, "data", "old", "new.db"))


def test_exclude_double_star_crosses_components(tmp_path):
    root, bk = tree(tmp_path), str(tmp_path / "bk")
    apply_snapshot(plan_snapshot(bk, [root], snapshot="s1", exclude=["data/**/*.db"]))
    rels, _manifest = snapshot_rels(bk, "s1")
    assert not {"data/a.db", "data/old/x.db"} & rels
    assert {"zoe.db", "data/old/notes.log"} <= rels


def test_restore_of_a_manifest_without_exclude_syntax_keeps_the_fnmatch_meaning(tmp_path):
    """A snapshot written when exclude was fnmatch left data/old/x.db out under `data/*.db`: restoring it
    must not remove that live file as an extra."""
    root, bk = tree(tmp_path), str(tmp_path / "bk")
    apply_snapshot(plan_snapshot(bk, [root], snapshot="s1", exclude=["data/*.db"]))
    snap = os.path.join(bk, "s1")
    manifest = load_manifest(snap)
    # What the fnmatch-era module wrote: no exclude_syntax, and no entry for data/old/x.db.
    del manifest["exclude_syntax"]
    manifest["entries"] = [e for e in manifest["entries"] if e["rel"] != "data/old/x.db"]
    os.unlink(os.path.join(snap, "files", "0", "data", "old", "x.db"))
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    for name, data in (("manifest.json", raw),
                       ("manifest.json.sha256", ("%s  manifest.json\n" % hashlib.sha256(raw).hexdigest()).encode())):
        os.chmod(os.path.join(snap, name), 0o600)
        with open(os.path.join(snap, name), "wb") as handle:
            handle.write(data)
    plan = plan_restore(bk, "s1")
    assert not [a for a in plan.result["actions"] if a["action"] == "remove"]
    assert not plan.changed
