"""The SQLite databases of the pre-consolidation Zoe host, as DESIGN.md states the facts.

Facts reproduced (tests/unit/test_demo_host.py checks each):
- 15 databases in data/: zoe.db (primary), memory.db (embeddings, kept apart) and the 13 to fold.
- users: zoe.db 4 (testuser, admin, user, system); auth.db 2 (admin, user); developer_tasks.db 1 (system).
  testuser is missing from auth.db, so it cannot log in through zoe-auth.
- sessions tables in auth.db and sessions.db; people: zoe.db 17, memory.db 0.

The cases that break naive merges:
- auth.db's admin has another id than zoe.db's admin (same person, identical content): its sessions
  must follow to zoe.db's id.
- auth.db's user disagrees with zoe.db's user (email, password hash salted differently): a conflict.
- auth.db.users has a column (last_login) that zoe.db.users lacks.
- developer_tasks.db's tasks 1..5 collide with zoe.db's tasks 1..5: id 3 is the same task (identical),
  1, 2, 4 and 5 are different tasks whose comments (task_comments.task_id) must follow new ids.
- learning.db.events and self_awareness.db.events share a name but not a shape.
- learning.db is in WAL mode with committed rows that live only in its -wal.
- sessions.db.sessions.user_id points at zoe.db users without a declared foreign key.

Everything is deterministic for a seed; `scale` multiplies the bulk rows (not the facts above).
"""

import hashlib
import json
import os
import random
import sqlite3
import struct
import subprocess
import sys

EPOCH = 1735689600  # 2025-01-01T00:00:00Z, the fixed start of every demo timestamp

# The demo users and their passwords. Demo only: a real host's credentials come from a vault.
DEMO_PASSWORDS = {
    "testuser": "testuser-demo-pass",
    "admin": "admin-demo-pass",
    "user": "user-demo-pass",
    "system": "system-demo-pass",
}

FOLD_DATABASES = (
    "auth.db", "developer_tasks.db", "sessions.db", "satisfaction.db", "self_awareness.db",
    "learning.db", "agent_planning.db", "tool_registry.db", "snapshots.db", "model_performance.db",
    "context_cache.db", "knowledge.db", "aider_conversations.db",
)
KEEP_DATABASES = ("zoe.db", "memory.db")
# Found by the audit outside data/, never touched unless named in the configuration.
UNKNOWN_DATABASES = (
    "services/zoe-core/training.db",
    "services/mem-agent/cache/vector_cache.db",
    "scripts/archive/zoe_old_backup.db",
    "homeassistant/ha_history.db",
)

USERS_DDL = """CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    email TEXT,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'user',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL{extra}
)"""

SESSIONS_DDL = """CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL{fk},
    token_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ip_address TEXT
)"""

DEVELOPER_TASKS_DDL = """CREATE TABLE developer_tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    description TEXT,
    status TEXT NOT NULL DEFAULT 'open',
    priority INTEGER NOT NULL DEFAULT 3,
    assigned_to TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)"""


def ts(rng, span_days=300):
    """A deterministic ISO timestamp within `span_days` of the demo epoch."""
    import datetime

    seconds = EPOCH + rng.randrange(span_days * 86400)
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def password_hash(password, salt):
    """pbkdf2_sha256$iterations$salt$hex, the format the demo service checks."""
    iterations = 1000
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return "pbkdf2_sha256$%d$%s$%s" % (iterations, salt, digest)


def token(rng, nbytes=24):
    return "%0*x" % (nbytes * 2, rng.getrandbits(nbytes * 8))


def words(rng, count):
    vocabulary = ("zoe", "calendar", "reminder", "shopping", "family", "garden", "music", "meeting",
                  "doctor", "birthday", "school", "project", "code", "deploy", "memory", "travel",
                  "dinner", "weather", "energy", "light", "kitchen", "note", "review", "plan")
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def vector(rng, dims=384):
    return struct.pack("<%df" % dims, *(rng.uniform(-1, 1) for _ in range(dims)))


class DemoDatabases:
    """Builds every database of the demo host under `root` and records what it planted."""

    def __init__(self, root, seed=1, scale=1):
        self.root = root
        self.data = os.path.join(root, "data")
        self.seed = seed
        self.scale = max(1, int(scale))
        self.record = {"databases": {}, "users": {}, "cases": {}}

    def rng(self, name):
        """One random stream per database, so adding a database does not shift the others."""
        return random.Random("%s:%s" % (self.seed, name))

    def bulk(self, rows):
        return rows * self.scale

    def open(self, relpath, wal=False):
        path = os.path.join(self.root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        conn = sqlite3.connect(path)
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def finish(self, conn, relpath):
        conn.commit()
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        self.record["databases"][relpath] = {
            t: conn.execute('SELECT count(*) FROM "%s"' % t).fetchone()[0] for t in tables}
        conn.close()

    # -- the primary ------------------------------------------------------------------------------
    def users_rows(self, rng, names, ids, salt_prefix):
        rows = []
        for uid, name in zip(ids, names):
            created = ts(rng, 30)
            rows.append({
                "id": uid, "username": name, "email": "%s@zoe.local" % name,
                "password_hash": password_hash(DEMO_PASSWORDS[name], "%s-%s" % (salt_prefix, name)),
                "role": "admin" if name == "admin" else ("system" if name == "system" else "user"),
                "created_at": created, "updated_at": created,
            })
        return rows

    def insert(self, conn, table, rows):
        if not rows:
            return
        cols = list(rows[0])
        conn.executemany(
            'INSERT INTO "%s" (%s) VALUES (%s)' % (table, ", ".join('"%s"' % c for c in cols),
                                                  ", ".join("?" * len(cols))),
            [tuple(r[c] for c in cols) for r in rows])

    def build_zoe(self):
        rng = self.rng("zoe.db")
        conn = self.open("data/zoe.db")
        conn.execute(USERS_DDL.format(extra=""))
        users = self.users_rows(random.Random("users:%s" % self.seed),
                                ["testuser", "admin", "user", "system"], [1, 2, 3, 4], "zoe")
        self.insert(conn, "users", users)
        self.record["users"]["zoe.db"] = [u["username"] for u in users]
        self.zoe_users = {u["username"]: u for u in users}
        conn.executescript("""
            CREATE TABLE people (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id),
                name TEXT NOT NULL, relationship TEXT, birthday TEXT, notes TEXT, created_at TEXT NOT NULL);
            CREATE INDEX idx_people_user ON people(user_id);
            CREATE TABLE calendar_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id),
                title TEXT NOT NULL, start_time TEXT NOT NULL, end_time TEXT, location TEXT);
            CREATE INDEX idx_calendar_user_start ON calendar_events(user_id, start_time);
            CREATE TABLE lists (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id), name TEXT NOT NULL, list_type TEXT);
            CREATE TABLE list_items (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
                text TEXT NOT NULL, completed INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE tasks (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id),
                title TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'todo', due TEXT);
        """)
        conn.execute(DEVELOPER_TASKS_DDL)
        relations = ("partner", "child", "parent", "friend", "colleague", "neighbour", "sibling")
        self.insert(conn, "people", [
            {"user_id": 1 + i % 3, "name": "Person %02d" % (i + 1), "relationship": relations[i % 7],
             "birthday": "19%02d-%02d-%02d" % (60 + i, 1 + i % 12, 1 + i % 28),
             "notes": words(rng, 6), "created_at": ts(rng)} for i in range(17)])
        self.insert(conn, "calendar_events", [
            {"user_id": 1 + i % 4, "title": words(rng, 3), "start_time": ts(rng), "end_time": None,
             "location": rng.choice(["home", "office", "school", None])} for i in range(self.bulk(60))])
        self.insert(conn, "lists", [{"user_id": 1 + i % 3, "name": n, "list_type": "shopping" if i == 0 else "todo"}
                                    for i, n in enumerate(["Groceries", "Weekend", "Garden"])])
        self.insert(conn, "list_items", [{"list_id": 1 + i % 3, "text": words(rng, 2), "completed": i % 2}
                                         for i in range(self.bulk(30))])
        self.insert(conn, "tasks", [{"user_id": 1 + i % 4, "title": words(rng, 4), "status": "todo", "due": ts(rng)}
                                    for i in range(self.bulk(25))])
        self.zoe_dev_tasks = [
            {"id": i, "title": "Core task %d: %s" % (i, words(rng, 3)), "description": words(rng, 12),
             "status": "open", "priority": 1 + i % 5, "assigned_to": "zoe-core", "created_at": ts(rng, 20),
             "updated_at": ts(rng, 20)} for i in range(1, 6)]
        self.insert(conn, "developer_tasks", self.zoe_dev_tasks)
        self.finish(conn, "data/zoe.db")

    def build_memory(self):
        rng = self.rng("memory.db")
        conn = self.open("data/memory.db")
        conn.executescript("""
            CREATE TABLE people (
                id INTEGER PRIMARY KEY, name TEXT NOT NULL, summary TEXT, updated_at TEXT);
            CREATE TABLE embeddings (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                person_id INTEGER,               -- zoe.db people.id: the reason zoe.db ids never change
                chunk TEXT NOT NULL, model TEXT NOT NULL, vector BLOB NOT NULL, created_at TEXT NOT NULL);
            CREATE INDEX idx_embeddings_person ON embeddings(person_id);
            CREATE TABLE memories (
                id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER, text TEXT NOT NULL, created_at TEXT);
        """)
        self.insert(conn, "embeddings", [
            {"person_id": 1 + i % 17, "chunk": words(rng, 20), "model": "all-MiniLM-L6-v2",
             "vector": vector(rng), "created_at": ts(rng)} for i in range(self.bulk(1400))])
        self.insert(conn, "memories", [{"user_id": 1 + i % 4, "text": words(rng, 15), "created_at": ts(rng)}
                                       for i in range(self.bulk(120))])
        self.finish(conn, "data/memory.db")

    # -- the 13 to fold ---------------------------------------------------------------------------
    def build_auth(self):
        rng = self.rng("auth.db")
        conn = self.open("data/auth.db")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(USERS_DDL.format(extra=",\n    last_login TEXT"))
        admin = dict(self.zoe_users["admin"], id=1, last_login=None)        # same person, other id
        user = dict(self.zoe_users["user"], id=2, last_login=ts(rng),
                    email="user.new@zoe.local",                           # disagrees with zoe.db
                    password_hash=password_hash(DEMO_PASSWORDS["user"], "auth-user"),
                    updated_at=ts(rng, 60))
        self.insert(conn, "users", [admin, user])
        self.record["users"]["auth.db"] = ["admin", "user"]
        conn.execute(SESSIONS_DDL.format(fk=" REFERENCES users(id) ON DELETE CASCADE"))
        conn.execute("CREATE INDEX idx_sessions_user ON sessions(user_id)")
        self.insert(conn, "sessions", [
            {"session_id": "auth-%04d" % i, "user_id": 1 + i % 2, "token_hash": token(rng),
             "created_at": ts(rng), "expires_at": ts(rng), "ip_address": "192.0.2.%d" % (1 + i % 200)}
            for i in range(self.bulk(24))])
        conn.executescript("""
            CREATE TABLE password_resets (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                reset_token TEXT NOT NULL UNIQUE, expires_at TEXT NOT NULL);
        """)
        self.insert(conn, "password_resets", [
            {"user_id": 1 + i % 2, "reset_token": token(rng, 16), "expires_at": ts(rng)} for i in range(3)])
        self.record["cases"]["auth_admin_other_id"] = {"auth.db": 1, "zoe.db": 2}
        self.record["cases"]["auth_user_conflict"] = {"auth.db": 2, "zoe.db": 3}
        self.finish(conn, "data/auth.db")

    def build_sessions(self):
        rng = self.rng("sessions.db")
        conn = self.open("data/sessions.db")
        conn.execute(SESSIONS_DDL.format(fk=""))   # user_id means zoe.db users.id, undeclared
        self.insert(conn, "sessions", [
            {"session_id": "sess-%05d" % i, "user_id": 1 + i % 4, "token_hash": token(rng),
             "created_at": ts(rng), "expires_at": ts(rng), "ip_address": "198.51.100.%d" % (1 + i % 200)}
            for i in range(self.bulk(40))])
        self.finish(conn, "data/sessions.db")

    def build_developer_tasks(self):
        rng = self.rng("developer_tasks.db")
        conn = self.open("data/developer_tasks.db")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(USERS_DDL.format(extra=""))
        self.insert(conn, "users", [self.zoe_users["system"]])   # identical duplicate, same id
        self.record["users"]["developer_tasks.db"] = ["system"]
        conn.execute(DEVELOPER_TASKS_DDL)
        tasks = []
        for i in range(1, self.bulk(40) + 1):
            if i == 3:
                tasks.append(dict(self.zoe_dev_tasks[2]))     # identical to zoe.db's task 3
                continue
            tasks.append({"id": i, "title": "Dev task %d: %s" % (i, words(rng, 3)),
                          "description": words(rng, 15), "status": rng.choice(["open", "done", "blocked"]),
                          "priority": 1 + i % 5, "assigned_to": rng.choice(["aider", "zoe-core", None]),
                          "created_at": ts(rng), "updated_at": ts(rng)})
        self.insert(conn, "developer_tasks", tasks)
        conn.executescript("""
            CREATE TABLE task_comments (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                task_id INTEGER NOT NULL REFERENCES developer_tasks(id) ON DELETE CASCADE,
                author TEXT, body TEXT NOT NULL, created_at TEXT NOT NULL);
            CREATE INDEX idx_task_comments_task ON task_comments(task_id);
        """)
        self.insert(conn, "task_comments", [
            {"task_id": 1 + i % len(tasks), "author": rng.choice(["admin", "system", "aider"]),
             "body": words(rng, 10), "created_at": ts(rng)} for i in range(self.bulk(80))])
        self.record["cases"]["developer_task_collisions"] = {"colliding_ids": [1, 2, 4, 5], "identical_ids": [3]}
        self.finish(conn, "data/developer_tasks.db")

    def build_simple(self, name, ddl, rows_fn, wal_tail=None):
        """A database from DDL and a row generator; `wal_tail` rows are left committed in the -wal only."""
        rng = self.rng(name)
        relpath = "data/" + name
        conn = self.open(relpath)
        conn.executescript(ddl)
        tables = rows_fn(rng)
        for table, rows in tables.items():
            self.insert(conn, table, rows)
        self.finish(conn, relpath)
        if wal_tail:
            table, rows = wal_tail(rng)
            self.append_in_wal(relpath, table, rows)

    def append_in_wal(self, relpath, table, rows):
        """Commit `rows` in WAL mode and leave them in the -wal: the writer exits without a checkpoint.

        A clean close checkpoints the -wal into the main file and deletes it, so a child process
        commits and then calls os._exit(), the way a killed service leaves its database.
        """
        path = os.path.join(self.root, relpath)
        cols = list(rows[0])
        script = (
            "import json, os, sqlite3, sys\n"
            "path, table, cols, rows = json.loads(sys.stdin.read())\n"
            "conn = sqlite3.connect(path)\n"
            "conn.execute('PRAGMA journal_mode=WAL')\n"
            "conn.execute('PRAGMA wal_autocheckpoint=0')\n"
            "conn.executemany('INSERT INTO \"%s\" (%s) VALUES (%s)' % (table, ', '.join('\"%s\"' % c for c in cols),"
            " ', '.join('?' * len(cols))), rows)\n"
            "conn.commit()\n"
            "os._exit(0)\n")
        payload = json.dumps([path, table, cols, [[r[c] for c in cols] for r in rows]])
        subprocess.run([sys.executable, "-c", script], input=payload, text=True, check=True)
        if not os.path.exists(path + "-wal"):
            raise RuntimeError("%s: the -wal was not left behind" % path)
        self.record["databases"][relpath][table] += len(rows)
        self.record["cases"]["wal_only_rows"] = {"database": relpath, "table": table, "rows": len(rows)}

    def build_folds(self):
        self.build_auth()
        self.build_sessions()
        self.build_developer_tasks()
        b = self.bulk
        self.build_simple("satisfaction.db", """
            CREATE TABLE feedback (
                id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER, rating INTEGER CHECK (rating BETWEEN 1 AND 5),
                comment TEXT, created_at TEXT NOT NULL);
            CREATE TABLE satisfaction_metrics (
                id INTEGER PRIMARY KEY AUTOINCREMENT, metric TEXT NOT NULL, value REAL, recorded_at TEXT NOT NULL);
        """, lambda r: {
            "feedback": [{"user_id": 1 + i % 4, "rating": 1 + i % 5, "comment": words(r, 8), "created_at": ts(r)}
                         for i in range(b(50))],
            "satisfaction_metrics": [{"metric": r.choice(["nps", "csat", "latency"]), "value": r.uniform(0, 10),
                                      "recorded_at": ts(r)} for _ in range(b(120))]})
        self.build_simple("self_awareness.db", """
            CREATE TABLE self_reflections (
                id INTEGER PRIMARY KEY AUTOINCREMENT, reflection TEXT NOT NULL, mood TEXT, created_at TEXT NOT NULL);
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT, created_at TEXT NOT NULL);
        """, lambda r: {
            "self_reflections": [{"reflection": words(r, 20), "mood": r.choice(["calm", "busy"]), "created_at": ts(r)}
                                 for _ in range(b(40))],
            "events": [{"kind": r.choice(["boot", "reflect", "sleep"]), "payload": json.dumps({"n": i}),
                        "created_at": ts(r)} for i in range(b(60))]})
        self.build_simple("learning.db", """
            CREATE TABLE learning_patterns (
                id INTEGER PRIMARY KEY AUTOINCREMENT, pattern TEXT NOT NULL UNIQUE, confidence REAL NOT NULL,
                occurrences INTEGER NOT NULL DEFAULT 1, last_seen TEXT);
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, event_type TEXT NOT NULL, user_id INTEGER, data TEXT,
                occurred_at TEXT NOT NULL);
        """, lambda r: {
            "learning_patterns": [{"pattern": "pattern-%05d %s" % (i, words(r, 3)), "confidence": r.random(),
                                   "occurrences": 1 + i % 9, "last_seen": ts(r)} for i in range(b(150))],
            "events": [{"event_type": r.choice(["click", "ask", "correct"]), "user_id": 1 + i % 4,
                        "data": words(r, 5), "occurred_at": ts(r)} for i in range(b(80))]},
            wal_tail=lambda r: ("learning_patterns", [
                {"pattern": "wal-pattern-%05d" % i, "confidence": r.random(), "occurrences": 1, "last_seen": ts(r)}
                for i in range(25)]))
        self.build_simple("agent_planning.db", """
            CREATE TABLE plans (
                id INTEGER PRIMARY KEY AUTOINCREMENT, goal TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT);
            CREATE TABLE plan_steps (
                id INTEGER PRIMARY KEY AUTOINCREMENT, plan_id INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
                step_no INTEGER NOT NULL, description TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0);
        """, lambda r: {
            "plans": [{"goal": words(r, 6), "status": r.choice(["draft", "active", "done"]), "created_at": ts(r)}
                      for _ in range(b(20))],
            "plan_steps": [{"plan_id": 1 + i % b(20), "step_no": i // b(20) + 1, "description": words(r, 8),
                            "done": i % 2} for i in range(b(90))]})
        self.build_simple("tool_registry.db", """
            CREATE TABLE tools (
                name TEXT PRIMARY KEY, description TEXT, schema_json TEXT, enabled INTEGER NOT NULL DEFAULT 1,
                version TEXT NOT NULL);
            CREATE TABLE tool_usage (
                id INTEGER PRIMARY KEY AUTOINCREMENT, tool_name TEXT NOT NULL REFERENCES tools(name),
                user_id INTEGER, called_at TEXT NOT NULL, duration_ms INTEGER);
        """, lambda r: {
            "tools": [{"name": n, "description": words(r, 8), "schema_json": json.dumps({"type": "object"}),
                       "enabled": 1, "version": "1.%d" % i} for i, n in enumerate(
                           ["calendar.add", "lists.add", "memory.search", "people.find", "weather.get",
                            "music.play", "lights.set", "timer.start"])],
            "tool_usage": [{"tool_name": r.choice(["calendar.add", "memory.search", "lights.set"]),
                            "user_id": 1 + i % 4, "called_at": ts(r), "duration_ms": r.randrange(5, 900)}
                           for i in range(b(300))]})
        self.build_simple("snapshots.db", """
            CREATE TABLE snapshots (
                id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, taken_at TEXT NOT NULL, payload BLOB);
        """, lambda r: {"snapshots": [{"kind": r.choice(["state", "context"]), "taken_at": ts(r),
                                       "payload": r.randbytes(24000)} for _ in range(b(40))]})
        self.build_simple("model_performance.db", """
            CREATE TABLE model_runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, prompt_tokens INTEGER,
                completion_tokens INTEGER, latency_ms INTEGER, created_at TEXT NOT NULL);
            CREATE INDEX idx_model_runs_model ON model_runs(model, created_at);
        """, lambda r: {"model_runs": [{"model": r.choice(["llama3.2:3b", "qwen2.5:7b", "phi3"]),
                                        "prompt_tokens": r.randrange(10, 4000), "completion_tokens": r.randrange(5, 800),
                                        "latency_ms": r.randrange(50, 9000), "created_at": ts(r)}
                                       for _ in range(b(3000))]})
        self.build_simple("context_cache.db", """
            CREATE TABLE context_cache (
                cache_key TEXT PRIMARY KEY, user_id INTEGER, content TEXT NOT NULL, created_at TEXT NOT NULL,
                expires_at TEXT);
        """, lambda r: {"context_cache": [{"cache_key": "ctx-%06d" % i, "user_id": 1 + i % 4,
                                           "content": words(r, 120), "created_at": ts(r), "expires_at": ts(r)}
                                          for i in range(b(800))]})
        self.build_simple("knowledge.db", """
            CREATE TABLE knowledge_items (
                id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, body TEXT NOT NULL, source TEXT,
                created_at TEXT NOT NULL, updated_at TEXT);
            CREATE INDEX idx_knowledge_title ON knowledge_items(title);
            CREATE TRIGGER knowledge_items_touch AFTER UPDATE OF body ON knowledge_items
            BEGIN UPDATE knowledge_items SET updated_at = datetime('now') WHERE id = NEW.id; END;
        """, lambda r: {"knowledge_items": [{"title": words(r, 4), "body": words(r, 150),
                                             "source": r.choice(["web", "user", "doc"]), "created_at": ts(r),
                                             "updated_at": None} for _ in range(b(900))]})
        self.build_simple("aider_conversations.db", """
            CREATE TABLE conversations (
                id INTEGER PRIMARY KEY AUTOINCREMENT, session_name TEXT NOT NULL, started_at TEXT NOT NULL);
            CREATE TABLE messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
                role TEXT NOT NULL, content TEXT NOT NULL, created_at TEXT NOT NULL);
        """, lambda r: {
            "conversations": [{"session_name": "aider-%03d" % i, "started_at": ts(r)} for i in range(b(12))],
            "messages": [{"conversation_id": 1 + i % b(12), "role": r.choice(["user", "assistant"]),
                          "content": words(r, 40), "created_at": ts(r)} for i in range(b(200))]})

    def build_unknown(self):
        """Four databases outside data/ that the audit must find and report, never touch."""
        specs = {
            UNKNOWN_DATABASES[0]: ("CREATE TABLE training_examples (id INTEGER PRIMARY KEY, prompt TEXT, answer TEXT)",
                                   "training_examples", lambda r, i: {"id": i, "prompt": words(r, 8), "answer": words(r, 8)}),
            UNKNOWN_DATABASES[1]: ("CREATE TABLE vectors (id INTEGER PRIMARY KEY, key TEXT, vector BLOB)",
                                   "vectors", lambda r, i: {"id": i, "key": "k%d" % i, "vector": vector(r, 32)}),
            UNKNOWN_DATABASES[2]: (USERS_DDL.format(extra=""), "users", None),
            UNKNOWN_DATABASES[3]: ("CREATE TABLE states (id INTEGER PRIMARY KEY, entity TEXT, state TEXT, at TEXT)",
                                   "states", lambda r, i: {"id": i, "entity": "light.kitchen", "state": r.choice(["on", "off"]),
                                                           "at": ts(r)}),
        }
        for relpath, (ddl, table, row_fn) in specs.items():
            rng = self.rng(relpath)
            conn = self.open(relpath)
            conn.execute(ddl)
            if row_fn is None:   # an old copy of the users table, with the old hashes
                rows = [dict(u) for u in self.zoe_users.values()][:3]
            else:
                rows = [row_fn(rng, i) for i in range(1, 31)]
            self.insert(conn, table, rows)
            self.finish(conn, relpath)

    def build(self):
        os.makedirs(self.data, exist_ok=True)
        self.build_zoe()
        self.build_memory()
        self.build_folds()
        self.build_unknown()
        self.record["passwords"] = dict(DEMO_PASSWORDS)
        return self.record
