"""Pinned plans (controller side): build a dry run's plan, give it an id, and say in words how a new plan differs.

A plan is a JSON document (format 1) of what a run would do and what it was computed from: the content digest of
every kept and folded database (with its -wal), the merge's per-table accounting as sqlite_merge's check mode
returns it, the compose/env files' digests and planned edits (masked by compose_env), the code files to rewrite
and those left for review (db_references), the services to stop and restart, the settings and the project's
version. `plan_id` is the first 12 hex digits of the sha256 of the canonical JSON of everything else, so an
edited file no longer matches its id. Two plans are equal when everything but `plan_id` and `created` is.

Filters:
  facts | zoe_plan            the plan (with its plan_id) of the facts gathered by roles/preflight/tasks/plan_pin.yml
  plan | zoe_plan_id          the id the plan's content gives
  pinned | zoe_plan_refusals(plan)
                              [] when the pinned plan (the zoe_plan lookup's answer) still holds for `plan`, else one
                              sentence per reason: unreadable, unknown format, content not matching its id, another
                              host or checkout, and every difference of the content
"""

import datetime
import hashlib
import json
import os

from ansible.errors import AnsibleFilterError

FORMAT = 1
ID_LENGTH = 12
UNKNOWN_VERSION = "unknown"

# Keys of a module result that describe the call, not the plan (and that vary from run to run).
_RESULT_NOISE = frozenset(("changed", "failed", "msg", "diff", "invocation", "warnings", "deprecations", "skipped",
                           "skip_reason", "prepared", "prepared_reason", "timings", "item", "ansible_loop_var"))
# Keys of a plan that are not compared: its own id and when it was made.
_NOT_COMPARED = ("plan_id", "created")
# How a table's merge accounting is said in a difference ("sessions would insert 25 rows, the plan said 24").
_TABLE_PHRASES = {
    "inserted": "would insert {} rows",
    "identical": "would find {} identical rows",
    "conflicts": "would record {} conflicts",
    "source_rows": "would read {} rows",
    "conflicts_source_won": "would let the source win {} conflicts",
    "remapped": "would give {} rows new ids",
    "repointed": "would re-point {} children",
    "target_rows_before": "would meet {} rows in the target",
    "columns_added": "would add the columns {}",
    "target_table": "would go into {}",
}
_SHOWN = 3   # items named per added/removed list before "and N more"


class PlanError(AnsibleFilterError):
    """The facts cannot make a plan (a missing fact); the message names it."""


# ------------------------------------------------------------------------------------------------ version

def project_version(start=None):
    """The project's version: galaxy.yml's `version` beside plugins/ (the checkout), or MANIFEST.json's
    collection_info.version (an installed collection); UNKNOWN_VERSION when neither names one."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(start or __file__))))
    galaxy = os.path.join(root, "galaxy.yml")
    if os.path.isfile(galaxy):
        import yaml   # controller only; PyYAML comes with ansible-core
        with open(galaxy) as handle:
            version = (yaml.safe_load(handle) or {}).get("version")
        if version:
            return str(version)
    manifest = os.path.join(root, "MANIFEST.json")
    if os.path.isfile(manifest):
        with open(manifest) as handle:
            version = (json.load(handle).get("collection_info") or {}).get("version")
        if version:
            return str(version)
    return UNKNOWN_VERSION


# ------------------------------------------------------------------------------------------------ building

def _plain(value):
    """JSON-native copy (Ansible's string and container types become str, list, dict)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _canonical(plan):
    content = {k: v for k, v in plan.items() if k != "plan_id"}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def plan_id(plan):
    """The id of a plan's content (everything but plan_id itself)."""
    return hashlib.sha256(_canonical(plan).encode("utf-8")).hexdigest()[:ID_LENGTH]


def _rel(path, root):
    """`path` relative to `root` when it lies inside it, else unchanged."""
    if not isinstance(path, str) or not root:
        return path
    root = root.rstrip("/")
    if path == root:
        return "."
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return path


def _require(facts, *names):
    missing = [name for name in names if name not in facts]
    if missing:
        raise PlanError("zoe_plan: the facts lack %s" % ", ".join(missing))


def _databases(audit, digests, root):
    """Every database the audit found; the kept and folded ones with the sha256 of the file and of its -wal."""
    by_path = {f.get("path"): f.get("checksum") for f in digests or []}
    out = []
    for db in audit.get("databases") or []:
        entry = {"path": db.get("relpath") or _rel(db.get("path"), root), "class": db.get("class")}
        if db.get("class") in ("keep", "fold"):
            path = db.get("path")
            entry.update(sha256=by_path.get(path), wal_sha256=by_path.get("%s-wal" % path),
                         size=db.get("size"), tables=db.get("tables") or {})
        out.append(entry)
    return sorted(out, key=lambda e: e["path"])


def _conflict(conflict, root):
    """A conflict as the report shows it: where, which key, which columns differ, never the rows' values."""
    out = {k: v for k, v in conflict.items() if k not in ("source_row", "target_row")}
    if "source" in out:
        out["source"] = _rel(out["source"], root)
    return out


def _merge(result, root):
    """sqlite_merge's check-mode result, generically: every key but the call's own, paths relative to the root."""
    merge = {k: v for k, v in (result or {}).items()
             if k not in _RESULT_NOISE and not k.startswith(("_ansible", "ansible_"))}
    if "target" in merge:
        merge["target"] = _rel(merge["target"], root)
    sources = []
    for src in merge.get("sources") or []:
        src = dict(src)
        src["path"] = _rel(src.get("path"), root)
        sources.append(src)
    merge["sources"] = sources
    merge["conflicts"] = [_conflict(c, root) for c in merge.get("conflicts") or []]
    return merge


_CONFIG_KEYS = ("changed", "file_type", "changes", "changed_services", "changed_keys", "files")


def _config_files(results, stats, root):
    """Per compose/env file: its sha256, whether it would change and the planned edits (compose_env masks them)."""
    digests = {}
    for stat in stats or []:
        info = stat.get("stat") or {}
        digests[stat.get("item")] = info.get("checksum") if info.get("exists") else None
    out = []
    for result in results or []:
        path = result.get("item") or result.get("path")
        entry = {"path": _rel(path, root), "sha256": digests.get(path)}
        for key in _CONFIG_KEYS:
            if key in result:
                entry[key] = result[key]
        entry["changes"] = [dict(c, file=_rel(c.get("file"), root)) if "file" in c else c
                            for c in entry.get("changes") or []]
        entry["files"] = [{k: (_rel(v, root) if k == "path" else v) for k, v in f.items() if k != "backup_file"}
                          for f in entry.get("files") or []]
        out.append(entry)
    listed = {r.get("item") or r.get("path") for r in results or []}
    for path, digest in digests.items():     # stat'ed but not planned (a missing env file): its absence counts
        if path not in listed:
            out.append({"path": _rel(path, root), "sha256": digest})
    return sorted(out, key=lambda e: e["path"])


def _code(result):
    result = result or {}
    code = {"rewrite": sorted(result.get("files_changed") or []),
            "references": {f: n for f, n in sorted((result.get("changes") or {}).items())}}
    if "left_for_review" in result:
        code["left_for_review"] = result["left_for_review"]
    return code


def zoe_plan(facts):
    """The plan of a run from the facts preflight gathered (see roles/preflight/tasks/plan_pin.yml)."""
    if not isinstance(facts, dict):
        raise PlanError("zoe_plan expects a dict of facts, got %s" % type(facts).__name__)
    facts = _plain(facts)
    _require(facts, "host", "root", "settings", "audit", "merge", "config", "references", "services", "pending")
    root = facts["root"]
    settings = dict(facts["settings"])
    for key in ("compose_files", "env_files"):
        if key in settings:
            settings[key] = [_rel(p, root) for p in settings[key]]
    if "data_dir" in settings:
        settings["data_dir"] = _rel(settings["data_dir"], root)
    services = facts["services"]
    plan = {
        "format": FORMAT,
        "created": facts.get("created") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": facts["host"],
        "zoe_root": root,
        "version": facts.get("version") or project_version(),
        "pending": bool(facts["pending"]),
        "settings": settings,
        "databases": _databases(facts["audit"], facts.get("digests"), root),
        "merge": _merge(facts["merge"], root),
        "config_files": _config_files(facts["config"], facts.get("config_stats"), root),
        "code": _code(facts["references"]),
        "services": {k: sorted(services.get(k) or []) for k in ("stop", "restart", "interrupted")},
    }
    plan["plan_id"] = plan_id(plan)
    return plan


# ------------------------------------------------------------------------------------------------ comparing

def _say(value, limit=160):
    """A value as a difference shows it: lists joined, dicts as compact JSON, at most `limit` characters."""
    if value is None:
        text = "none"
    elif isinstance(value, list):
        text = ", ".join(_say(v, limit) for v in value) if value else "none"
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True, separators=(",", ": "))
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _some(items):
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    return shown + (" and %d more" % (len(items) - _SHOWN) if len(items) > _SHOWN else "")


def _table_label(table):
    name = table.get("source_table") or table.get("target_table") or "?"
    into = table.get("target_table")
    return name if not into or into == name else "%s (into %s)" % (name, into)


def _field_words(label, key, new, old):
    phrase = _TABLE_PHRASES.get(key)
    if phrase:
        return "%s %s, the plan said %s" % (label, phrase.format(_say(new)), _say(old))
    return "%s: %s would be %s, the plan said %s" % (label, key, _say(new), _say(old))


def _field_order(field):
    """Accounting fields in the order people read them (inserted, identical, conflicts, ...), the others after."""
    order = list(_TABLE_PHRASES)
    return (order.index(field), "") if field in order else (len(order), field)


def _table_differences(old_tables, new_tables):
    """Per table of one source: the accounting fields that differ, in words."""
    key = lambda t: (t.get("source_table"), t.get("target_table"))
    old_by = {key(t): t for t in old_tables or []}
    new_by = {key(t): t for t in new_tables or []}
    words = []
    for k in sorted(set(old_by) | set(new_by), key=lambda k: tuple(str(x) for x in k)):
        old, new = old_by.get(k), new_by.get(k)
        if old is None:
            words.append("table %s would be merged, it is not in the plan" % _table_label(new))
        elif new is None:
            words.append("table %s is in the plan, it would not be merged" % _table_label(old))
        else:
            for field in sorted(set(old) | set(new), key=_field_order):
                if old.get(field) != new.get(field):
                    words.append(_field_words(_table_label(new), field, new.get(field), old.get(field)))
    return words


def _source_differences(old_src, new_src):
    words = []
    if old_src.get("status") != new_src.get("status"):
        words.append("status %s, the plan said %s" % (_say(new_src.get("status")), _say(old_src.get("status"))))
    words += _table_differences(old_src.get("tables"), new_src.get("tables"))
    for field in sorted(set(old_src) | set(new_src)):
        if field in ("path", "status", "tables", "digest") or words:
            continue   # per-source sums follow from the tables; the digest is said with the database
        if old_src.get(field) != new_src.get(field):
            words.append("%s would be %s, the plan said %s"
                         % (field, _say(new_src.get(field)), _say(old_src.get(field))))
    return words


def _rows_words(old_db, new_db):
    old_t, new_t = old_db.get("tables") or {}, new_db.get("tables") or {}
    words = []
    for table in sorted(set(old_t) | set(new_t)):
        if table not in old_t:
            words.append("table %s is new (%s rows)" % (table, new_t[table]))
        elif table not in new_t:
            words.append("table %s is gone" % table)
        elif old_t[table] != new_t[table]:
            words.append("%s has %s rows, the plan said %s" % (table, new_t[table], old_t[table]))
    return words


def _by(items, key="path"):
    return {item.get(key): item for item in items or []}


def _database_and_merge_differences(old, new, since):
    words = []
    old_dbs, new_dbs = _by(old.get("databases")), _by(new.get("databases"))
    old_srcs, new_srcs = _by((old.get("merge") or {}).get("sources")), _by((new.get("merge") or {}).get("sources"))
    explained = set()
    for path in sorted(set(old_dbs) | set(new_dbs)):
        o, n = old_dbs.get(path), new_dbs.get(path)
        if o is None:
            words.append("%s is new since %s (%s)" % (path, since, n.get("class")))
            continue
        if n is None:
            words.append("%s is gone since %s" % (path, since))
            continue
        if o.get("class") != n.get("class"):
            words.append("%s is %s, in %s it was %s" % (path, n.get("class"), since, o.get("class")))
        if (o.get("sha256"), o.get("wal_sha256")) != (n.get("sha256"), n.get("wal_sha256")):
            detail = []
            if path in old_srcs and path in new_srcs:
                detail = _source_differences(old_srcs[path], new_srcs[path])
                explained.add(path)
            detail = detail or _rows_words(o, n) or ["its bytes differ, the same tables and row counts"]
            words.append("%s changed since %s: %s" % (path, since, "; ".join(detail)))
    for path in sorted(set(old_srcs) | set(new_srcs)):
        if path in explained:
            continue
        o, n = old_srcs.get(path), new_srcs.get(path)
        if o is None:
            words.append("%s would be merged, it is not in %s" % (path, since))
        elif n is None:
            words.append("%s is in %s, it would not be merged" % (path, since))
        else:
            detail = _source_differences(o, n)
            if detail:
                words.append("%s would merge differently than in %s: %s" % (path, since, "; ".join(detail)))
    return words


def _merge_rest_differences(old, new, since, explained):
    old_m, new_m = old.get("merge") or {}, new.get("merge") or {}
    words = []
    old_c = [json.dumps(c, sort_keys=True) for c in old_m.get("conflicts") or []]
    new_c = [json.dumps(c, sort_keys=True) for c in new_m.get("conflicts") or []]
    if old_c != new_c:
        label = lambda c: "%s %s" % (json.loads(c).get("target_table", "?"), _say(json.loads(c).get("key")))
        added = [label(c) for c in new_c if c not in old_c]
        gone = [label(c) for c in old_c if c not in new_c]
        parts = (["new: " + _some(added)] if added else []) + (["no longer: " + _some(gone)] if gone else [])
        words.append("the merge would record other conflicts than %s (%s)"
                     % (since, "; ".join(parts) or "another order"))
    if explained:
        return words
    for key in sorted(set(old_m) | set(new_m)):
        if key in ("sources", "conflicts"):
            continue
        if old_m.get(key) != new_m.get(key):
            words.append("the merge's %s would be %s, %s said %s"
                         % (key, _say(new_m.get(key)), since, _say(old_m.get(key))))
    return words


def _edit_label(change):
    parts = [str(change[k]) for k in ("service", "section", "key") if change.get(k) not in (None, "")]
    return " ".join(parts) or _say(change)


def _edit_differences(old_edits, new_edits):
    strip = lambda c: json.dumps({k: v for k, v in c.items() if k != "line"}, sort_keys=True)
    old_s, new_s = [strip(c) for c in old_edits or []], [strip(c) for c in new_edits or []]
    if old_s == new_s:
        return ["the same edits at other lines"] if old_edits != new_edits else []
    added = [_edit_label(json.loads(c)) for c in new_s if c not in old_s]
    gone = [_edit_label(json.loads(c)) for c in old_s if c not in new_s]
    words = ["%d edits, the plan said %d" % (len(new_s), len(old_s))]
    if added:
        words.append("new or different: " + _some(added))
    if gone:
        words.append("no longer: " + _some(gone))
    return words


def _config_differences(old, new, since):
    words = []
    old_f, new_f = _by(old.get("config_files")), _by(new.get("config_files"))
    for path in sorted(set(old_f) | set(new_f)):
        o, n = old_f.get(path), new_f.get(path)
        if o is None or (o.get("sha256") is None and n.get("sha256") is not None):
            words.append("%s is new since %s" % (path, since))
            continue
        if n is None or (n.get("sha256") is None and o.get("sha256") is not None):
            words.append("%s is gone since %s" % (path, since))
            continue
        detail = _edit_differences(o.get("changes"), n.get("changes"))
        for key in sorted((set(o) | set(n)) - {"path", "sha256", "changes"}):
            if o.get(key) != n.get(key) and not (key in ("changed_keys", "files") and detail):
                detail.append("%s would be %s, the plan said %s" % (key, _say(n.get(key)), _say(o.get(key))))
        if o.get("sha256") != n.get("sha256"):
            words.append("%s changed since %s%s" % (path, since, (": " + "; ".join(detail)) if detail else ""))
        elif detail:
            words.append("%s would be edited differently than in %s: %s" % (path, since, "; ".join(detail)))
    return words


def _listed(item):
    if isinstance(item, dict):
        name = item.get("file") or item.get("path") or _say(item)
        return "%s (%s)" % (name, item["reason"]) if item.get("reason") else str(name)
    return str(item)


def _code_differences(old, new, since):
    old_c, new_c = old.get("code") or {}, new.get("code") or {}
    words = []
    o_files, n_files = old_c.get("rewrite") or [], new_c.get("rewrite") or []
    added = [f for f in n_files if f not in o_files]
    gone = [f for f in o_files if f not in n_files]
    if added:
        words.append("the code rewrite would also touch %s, not in %s" % (_some(added), since))
    if gone:
        words.append("the code rewrite would no longer touch %s (in %s)" % (_some(gone), since))
    o_refs, n_refs = old_c.get("references") or {}, new_c.get("references") or {}
    counted = [f for f in sorted(set(o_refs) & set(n_refs)) if o_refs[f] != n_refs[f]]
    for path in counted[:_SHOWN]:
        words.append("%s: %s references to rewrite, the plan said %s" % (path, n_refs[path], o_refs[path]))
    if len(counted) > _SHOWN:
        words.append("%d more files with other reference counts" % (len(counted) - _SHOWN))
    if old_c.get("left_for_review") != new_c.get("left_for_review"):
        o_rev = [_listed(i) for i in old_c.get("left_for_review") or []]
        n_rev = [_listed(i) for i in new_c.get("left_for_review") or []]
        parts = ([_some([i for i in n_rev if i not in o_rev]) + " now"] if set(n_rev) - set(o_rev) else []) + \
                (["no longer " + _some([i for i in o_rev if i not in n_rev])] if set(o_rev) - set(n_rev) else [])
        words.append("the files left for review differ from %s: %s" % (since, "; ".join(parts) or "their details"))
    return words


def _services_differences(old, new, since):
    words = []
    verbs = {"stop": "stop", "restart": "restart", "interrupted": "bring back (left stopped by a killed run)"}
    old_s, new_s = old.get("services") or {}, new.get("services") or {}
    for key in sorted(set(old_s) | set(new_s)):
        if sorted(old_s.get(key) or []) != sorted(new_s.get(key) or []):
            words.append("the run would %s %s; %s said %s" % (verbs.get(key, key), _say(new_s.get(key) or []), since,
                                                              _say(old_s.get(key) or [])))
    return words


def _settings_differences(old, new, since):
    old_s, new_s = old.get("settings") or {}, new.get("settings") or {}
    return ["the setting %s is %s, %s said %s" % (k, _say(new_s.get(k)), since, _say(old_s.get(k)))
            for k in sorted(set(old_s) | set(new_s)) if old_s.get(k) != new_s.get(k)]


def differences(old, new):
    """In words, every way `new` (this run's plan) differs from `old` (the pinned one); [] when they are equal."""
    since = "plan %s" % old.get("plan_id", "?")
    words = []
    if old.get("version") != new.get("version"):
        words.append("%s was made by zoe-consolidate %s, this is %s" % (since, old.get("version"), new.get("version")))
    words += _settings_differences(old, new, since)
    db_words = _database_and_merge_differences(old, new, since)
    words += db_words
    words += _merge_rest_differences(old, new, since, explained=bool(db_words))
    words += _config_differences(old, new, since)
    words += _code_differences(old, new, since)
    words += _services_differences(old, new, since)
    comparable = lambda p: {k: v for k, v in p.items() if k not in _NOT_COMPARED}
    if not words and _canonical(comparable(old)) != _canonical(comparable(new)):
        keys = [k for k in sorted(set(old) | set(new)) if k not in _NOT_COMPARED and old.get(k) != new.get(k)]
        words.append("this run's plan differs from %s in %s" % (since, ", ".join(keys)))
    return words


def zoe_plan_refusals(pinned, plan):
    """Why the pinned plan does not hold for `plan`, one sentence each; [] when it holds.

    `pinned` is the zoe_plan lookup's answer: {path, plan} or {path, error}. The sentences about the file itself say
    "it" (the caller names the file first); an error of the lookup names its path.
    """
    if not isinstance(pinned, dict):
        raise PlanError("zoe_plan_refusals expects the zoe_plan lookup's answer, got %s" % type(pinned).__name__)
    pinned, plan = _plain(pinned), _plain(plan)
    if pinned.get("error"):
        return [pinned["error"]]
    old = pinned.get("plan")
    if not isinstance(old, dict):
        return ["it is not a plan file (a JSON object with format and plan_id)"]
    if old.get("format") != FORMAT:
        if "format" not in old:
            return ["it has no format: it is not a plan file"]
        return ["it is a plan of format %s; this version of zoe-consolidate reads plans of format %d only"
                % (_say(old.get("format")), FORMAT)]
    if old.get("plan_id") != plan_id(old):
        return ["it does not match its plan id %s: its content was changed after the dry run wrote it"
                % _say(old.get("plan_id"))]
    if old.get("host") != plan.get("host"):
        return ["it is a plan for another host (%s), not %s" % (old.get("host"), plan.get("host"))]
    if old.get("zoe_root") != plan.get("zoe_root"):
        return ["it is a plan for another checkout (%s), not %s" % (old.get("zoe_root"), plan.get("zoe_root"))]
    return differences(old, plan)


class FilterModule:
    def filters(self):
        return {"zoe_plan": zoe_plan, "zoe_plan_id": plan_id, "zoe_plan_refusals": zoe_plan_refusals}
