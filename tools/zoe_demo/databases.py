"""The SQLite databases of the pre-consolidation Zoe host, with the schemas the Zoe services' own code creates.

Every table below carries the columns, declared types, keys and foreign keys of the CREATE TABLE in the
public repository jason-easyazz/zoe-ai-assistant that makes it (docs/ZOE_FACTS.md names the file and
commit of each); the rows are the generator's own. The schemas drifted between the services, and the
merge has to cope with what they really are:

- users keyed three ways: zoe.db by the username itself (`user_id TEXT`, services/zoe-core/routers/auth.py),
  auth.db by a `usr_...` id with nine columns zoe.db lacks (role, passcode_hash, ..., zoe-auth's
  models/database.py), developer_tasks.db by an INTEGER id. zoe.db 4 (testuser, admin, user, system),
  auth.db 2 (admin, user), developer_tasks.db 1 (system): testuser cannot log in through zoe-auth.
- children pointing at each kind of key: auth.db passcodes, auth_sessions, sessions, password_history and
  audit_logs by declared foreign keys to the `usr_...` ids; developer_tasks.db developer_tasks.user_id
  INTEGER REFERENCES users(id), where zoe.db's developer_tasks.user_id is TEXT REFERENCES users(user_id);
  sessions.db sessions.user_id and the user_id columns of the other services name zoe.db usernames
  without a declared foreign key.
- sessions in auth.db and sessions.db with drifted columns (session_type / last_activity, is_active,
  metadata); session `shared-0001` is in both with different content.
- auth.db's admin is zoe.db's admin (same email, hash and creation time under another key); auth.db's
  user disagrees with zoe.db's user (email and hash salted differently): one key, two contents.
- learning.db and knowledge.db both hold knowledge_base: row 1 is byte-identical in the two.
- developer_tasks.db and agent_planning.db both hold a task_executions table that is another thing in each
  (an INTEGER-keyed run log of dynamic_tasks; a TEXT-keyed step log of task_plans).
- learning.db is in WAL mode with committed rows that live only in its -wal.
- model_performance.db has a table and columns whose names need quoting.
- people: zoe.db 17, memory.db 0 (memory.db is light_rag_memory.py's own, different people table).

Everything is deterministic for a seed; `scale` multiplies the bulk rows (not the facts above).
"""

import datetime
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
# zoe-auth's quick login (passcode_hash): only auth.db's users have one.
DEMO_PASSCODES = {"admin": "246810"}

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

# The table whose name and columns need quoting (model_performance.db).
QUOTED_TABLE = 'model stats "daily"'

# Columns holding secrets: never in a plan, diff or report.
SECRET_COLUMNS = {
    "users": ["password_hash", "passcode_hash"],
    "passcodes": ["passcode_hash", "salt"],
    "password_history": ["password_hash"],
    "user_sessions": ["token"],
    "user_api_keys": ["encrypted_key"],
}

# The task tables: zoe.db's developer_tasks (unified_schema_design.sql) and developer_tasks.db's developer_tasks
# and dynamic_tasks (services/zoe-core/routers/developer_tasks.py) carry the same columns after `id` and the user key.
TASK_COLUMNS = """
    title TEXT NOT NULL,
    objective TEXT NOT NULL,
    requirements TEXT NOT NULL,
    constraints TEXT,
    acceptance_criteria TEXT,
    priority TEXT DEFAULT 'medium',
    assigned_to TEXT DEFAULT 'zack',
    status TEXT DEFAULT 'pending',
    context_snapshot TEXT,
    last_analysis TEXT,
    execution_count INTEGER DEFAULT 0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_executed_at TIMESTAMP,
    completed_at TIMESTAMP
);"""


def task_table(name, user_key=None):
    """The CREATE TABLE of a task table: `id TEXT PRIMARY KEY`, the user key column when it has one, then the
    columns every task table shares."""
    key = "\n    %s," % user_key if user_key else ""
    return "CREATE TABLE %s (\n    id TEXT PRIMARY KEY,%s%s" % (name, key, TASK_COLUMNS)


# -- zoe.db: services/zoe-core ---------------------------------------------------------------------------
ZOE_USERS = """CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    email TEXT UNIQUE NOT NULL,
    username TEXT UNIQUE NOT NULL,
    password_hash TEXT NOT NULL,
    is_active BOOLEAN DEFAULT 1,
    is_admin BOOLEAN DEFAULT 0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    settings_json TEXT DEFAULT '{}'
)"""

ZOE_DDL = """
CREATE TABLE user_sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (user_id) REFERENCES users(user_id)
);
CREATE TABLE user_api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    service TEXT NOT NULL,
    encrypted_key TEXT NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (user_id) REFERENCES users(user_id),
    UNIQUE(user_id, service)
);
CREATE TABLE people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT DEFAULT 'default',
    name TEXT NOT NULL,
    relationship TEXT,
    birthday DATE,
    phone TEXT,
    email TEXT,
    address TEXT,
    notes TEXT,
    avatar_url TEXT,
    tags TEXT,
    metadata JSON,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT DEFAULT 'default',
    title TEXT NOT NULL,
    description TEXT,
    start_date DATE NOT NULL,
    start_time TIME,
    end_date DATE,
    end_time TIME,
    category TEXT DEFAULT 'personal',
    location TEXT,
    all_day BOOLEAN DEFAULT FALSE,
    recurring TEXT,
    metadata JSON,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_events_user ON events(user_id);
CREATE TABLE lists (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT DEFAULT 'default',
    list_type TEXT NOT NULL,
    list_category TEXT DEFAULT 'personal',
    name TEXT NOT NULL,
    items JSON,
    metadata JSON,
    shared_with JSON,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_lists_user ON lists(user_id);
""" + task_table("developer_tasks", "user_id TEXT NOT NULL REFERENCES users(user_id)") + "\n"

# -- memory.db: services/zoe-core/light_rag_memory.py --------------------------------------------------
MEMORY_DDL = """
CREATE TABLE entity_embeddings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_type TEXT NOT NULL,
    entity_id INTEGER NOT NULL,
    entity_name TEXT NOT NULL,
    embedding_vector BLOB NOT NULL,
    context_summary TEXT,
    embedding_hash TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(entity_type, entity_id)
);
CREATE TABLE search_cache (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_hash TEXT UNIQUE NOT NULL,
    query_text TEXT NOT NULL,
    results_json TEXT NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    expires_at TIMESTAMP
);
CREATE TABLE people (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    relationship TEXT,
    notes TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE memory_facts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_type TEXT,
    entity_id INTEGER,
    fact TEXT NOT NULL,
    category TEXT,
    importance INTEGER DEFAULT 5,
    source TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
"""

# -- auth.db: services/zoe-auth (models/database.py, core/auth.py, simple_main.py) ----------------------
AUTH_USERS = """CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    username TEXT UNIQUE NOT NULL,
    email TEXT UNIQUE NOT NULL,
    password_hash TEXT,
    passcode_hash TEXT,
    role TEXT NOT NULL DEFAULT 'user',
    is_active INTEGER NOT NULL DEFAULT 1,
    is_verified INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_login TEXT,
    failed_login_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    settings TEXT DEFAULT '{}',
    metadata TEXT DEFAULT '{}'
)"""

AUTH_DDL = """
CREATE TABLE passcodes (
    user_id TEXT PRIMARY KEY,
    passcode_hash TEXT NOT NULL,
    algorithm TEXT NOT NULL DEFAULT 'argon2',
    salt TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_used TEXT,
    expires_at TEXT,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5,
    is_active INTEGER NOT NULL DEFAULT 1,
    FOREIGN KEY (user_id) REFERENCES users(user_id) ON DELETE CASCADE
);
CREATE TABLE auth_sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    session_type TEXT NOT NULL DEFAULT 'standard',
    auth_method TEXT NOT NULL,
    device_info TEXT DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_activity TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    expires_at TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    permissions_cache TEXT DEFAULT '[]',
    role_cache TEXT,
    metadata TEXT DEFAULT '{}',
    FOREIGN KEY (user_id) REFERENCES users(user_id) ON DELETE CASCADE
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    expires_at TIMESTAMP NOT NULL,
    session_type TEXT DEFAULT 'password',
    FOREIGN KEY (user_id) REFERENCES users(user_id)
);
CREATE TABLE audit_logs (
    log_id TEXT PRIMARY KEY,
    user_id TEXT,
    action TEXT NOT NULL,
    resource TEXT,
    result TEXT NOT NULL,
    ip_address TEXT,
    user_agent TEXT,
    details TEXT DEFAULT '{}',
    timestamp TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (user_id) REFERENCES users(user_id) ON DELETE SET NULL
);
CREATE TABLE password_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (user_id) REFERENCES users(user_id) ON DELETE CASCADE
);
CREATE TABLE roles (
    role_id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    description TEXT,
    permissions TEXT NOT NULL DEFAULT '[]',
    inherits_from TEXT,
    is_system INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    metadata TEXT DEFAULT '{}',
    FOREIGN KEY (inherits_from) REFERENCES roles(role_id)
);
CREATE INDEX idx_users_username ON users(username);
CREATE INDEX idx_auth_sessions_user ON auth_sessions(user_id);
"""

# -- sessions.db: services/zoe-core/session_manager.py ---------------------------------------------------
SESSIONS_DDL = """
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    metadata TEXT
);
"""

# -- developer_tasks.db: services/zoe-core/routers/developer_tasks.py (+ users, developer_tasks) --------
DEV_USERS = """CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT UNIQUE NOT NULL,
    email TEXT,
    role TEXT DEFAULT 'developer',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""

DEV_DDL = "\n" + task_table("developer_tasks", "user_id INTEGER NOT NULL REFERENCES users(id)") + "\n" + \
    task_table("dynamic_tasks") + """
CREATE TABLE task_executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    execution_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    system_state_before TEXT,
    plan_generated TEXT,
    execution_result TEXT,
    success BOOLEAN,
    changes_made TEXT,
    FOREIGN KEY (task_id) REFERENCES dynamic_tasks(id)
);
"""

# -- the other services of zoe-core ----------------------------------------------------------------------
SATISFACTION_DDL = """
CREATE TABLE user_feedback (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, interaction_id TEXT NOT NULL, feedback_type TEXT NOT NULL,
    satisfaction_level INTEGER, explicit_rating INTEGER, implicit_signals TEXT, feedback_text TEXT,
    context TEXT, processed BOOLEAN DEFAULT FALSE, timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE satisfaction_metrics (
    user_id TEXT PRIMARY KEY, total_interactions INTEGER DEFAULT 0, explicit_feedback_count INTEGER DEFAULT 0,
    implicit_feedback_count INTEGER DEFAULT 0, average_satisfaction REAL DEFAULT 0.0, satisfaction_trend TEXT,
    top_positive_factors TEXT, top_negative_factors TEXT, last_updated TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE interaction_tracking (
    interaction_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, request_text TEXT, response_text TEXT,
    response_time REAL, task_completed BOOLEAN DEFAULT FALSE, follow_up_questions INTEGER DEFAULT 0,
    engagement_duration REAL, context TEXT, timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
"""

SELF_AWARENESS_DDL = """
CREATE TABLE identity (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, data JSON NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, UNIQUE(user_id));
CREATE TABLE self_reflections (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, timestamp TIMESTAMP NOT NULL, reflection_type TEXT NOT NULL,
    content TEXT NOT NULL, insights JSON, action_items JSON, emotional_state TEXT DEFAULT 'neutral',
    confidence_level REAL DEFAULT 0.5);
CREATE TABLE self_memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, memory_type TEXT NOT NULL, content TEXT NOT NULL,
    importance REAL DEFAULT 5.0, tags JSON, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
"""

KNOWLEDGE_BASE = """
CREATE TABLE knowledge_base (
    id INTEGER PRIMARY KEY AUTOINCREMENT, category TEXT NOT NULL, title TEXT NOT NULL, content TEXT NOT NULL,
    confidence_score REAL DEFAULT 0.0, usage_count INTEGER DEFAULT 0, last_used TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
"""

LEARNING_DDL = """
CREATE TABLE learning_patterns (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pattern_type TEXT NOT NULL, pattern_data TEXT NOT NULL,
    success_count INTEGER DEFAULT 0, failure_count INTEGER DEFAULT 0,
    last_updated TIMESTAMP DEFAULT CURRENT_TIMESTAMP, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE task_execution_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL, task_title TEXT,
    execution_time TIMESTAMP DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, execution_duration REAL,
    error_message TEXT, system_context TEXT, improvements_applied TEXT, learning_insights TEXT);
""" + KNOWLEDGE_BASE

AGENT_PLANNING_DDL = """
CREATE TABLE agent_goals (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, objective TEXT NOT NULL, constraints TEXT, success_criteria TEXT,
    priority TEXT DEFAULT 'medium', deadline TEXT, estimated_duration_minutes INTEGER, dependencies TEXT,
    context TEXT, assigned_agent TEXT, status TEXT DEFAULT 'pending', created_at TEXT DEFAULT CURRENT_TIMESTAMP,
    completed_at TEXT);
CREATE TABLE task_plans (
    plan_id TEXT PRIMARY KEY, goal_id TEXT NOT NULL, goal_data TEXT, steps TEXT, estimated_total_duration INTEGER,
    critical_path TEXT, parallel_steps TEXT, risk_assessment TEXT, rollback_strategy TEXT,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP, status TEXT DEFAULT 'planned',
    FOREIGN KEY (goal_id) REFERENCES agent_goals(id));
CREATE TABLE task_executions (
    execution_id TEXT PRIMARY KEY, plan_id TEXT NOT NULL, step_id TEXT NOT NULL, agent_id TEXT NOT NULL,
    started_at TEXT DEFAULT CURRENT_TIMESTAMP, completed_at TEXT, status TEXT DEFAULT 'running', result TEXT,
    error_message TEXT, FOREIGN KEY (plan_id) REFERENCES task_plans(plan_id));
"""

TOOL_REGISTRY_DDL = """
CREATE TABLE tools (
    tool_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, category TEXT NOT NULL,
    permissions TEXT, parameters TEXT, status TEXT DEFAULT 'available', requires_confirmation BOOLEAN DEFAULT FALSE,
    timeout_seconds INTEGER DEFAULT 30, retry_count INTEGER DEFAULT 3, created_at TEXT DEFAULT CURRENT_TIMESTAMP,
    last_used TEXT, usage_count INTEGER DEFAULT 0, success_rate REAL DEFAULT 1.0, metadata TEXT);
CREATE TABLE tool_executions (
    execution_id TEXT PRIMARY KEY, tool_id TEXT NOT NULL, parameters TEXT, status TEXT DEFAULT 'pending',
    result TEXT, error_message TEXT, started_at TEXT, completed_at TEXT, duration_ms INTEGER,
    user_id TEXT DEFAULT 'default', session_id TEXT, requires_confirmation BOOLEAN DEFAULT FALSE,
    confirmed BOOLEAN DEFAULT FALSE, FOREIGN KEY (tool_id) REFERENCES tools(tool_id));
"""

SNAPSHOTS_DDL = """
CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT, snapshot_id TEXT UNIQUE NOT NULL, created_at TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, encrypted BOOLEAN NOT NULL, compression_ratio REAL, checksum TEXT NOT NULL,
    status TEXT NOT NULL, backup_path TEXT NOT NULL, metadata TEXT);
CREATE TABLE snapshot_config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

MODEL_PERFORMANCE_DDL = """
CREATE TABLE model_performance (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT NOT NULL, timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    response_time REAL, quality_score REAL, warmth_score REAL, intelligence_score REAL, tool_usage_score REAL,
    success BOOLEAN, query_type TEXT, user_id TEXT);
CREATE TABLE model_rankings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME DEFAULT CURRENT_TIMESTAMP, model_name TEXT NOT NULL,
    overall_score REAL, reliability_score REAL, speed_score REAL, quality_score REAL, rank_position INTEGER);
CREATE TABLE {table} (
    "day" TEXT NOT NULL, "model name" TEXT NOT NULL, "order" INTEGER, "p95 latency-ms" REAL, "group" TEXT,
    PRIMARY KEY ("day", "model name"));
""".replace("{table}", '"model stats ""daily"""')

CONTEXT_CACHE_DDL = """
CREATE TABLE context_summaries (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, context_type TEXT NOT NULL, context_key TEXT NOT NULL,
    summary TEXT NOT NULL, original_context TEXT NOT NULL, relevance_score REAL DEFAULT 0.0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, expires_at TIMESTAMP NOT NULL, access_count INTEGER DEFAULT 0,
    last_accessed TIMESTAMP DEFAULT CURRENT_TIMESTAMP, status TEXT DEFAULT 'valid',
    model_used TEXT DEFAULT 'zoe_summarizer', confidence_score REAL DEFAULT 0.8);
CREATE TABLE performance_metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT, context_type TEXT NOT NULL, operation TEXT NOT NULL,
    duration_ms REAL NOT NULL, success BOOLEAN NOT NULL, timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    user_id TEXT, context_size INTEGER, cache_hit BOOLEAN DEFAULT FALSE);
"""

AIDER_DDL = """
CREATE TABLE aider_sessions (
    session_id TEXT PRIMARY KEY, task_id TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_active TIMESTAMP, status TEXT DEFAULT 'active', files_context TEXT, conversation_history TEXT);
CREATE TABLE aider_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, role TEXT, content TEXT, code_changes TEXT,
    files_modified TEXT, timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (session_id) REFERENCES aider_sessions(session_id));
"""


def ts(rng, span_days=300, sep=" "):
    """A deterministic timestamp within `span_days` of the demo epoch ('T' as `sep`: isoformat, as zoe-auth)."""
    seconds = EPOCH + rng.randrange(span_days * 86400)
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d" + sep + "%H:%M:%S")


def password_hash(password, salt):
    """pbkdf2_sha256$iterations$salt$hex, the format the demo service checks (the real services use bcrypt,
    which the standard library lacks; the column and its use are the same)."""
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


def quote(name):
    return '"%s"' % name.replace('"', '""')


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

    def open(self, relpath):
        path = os.path.join(self.root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def finish(self, conn, relpath):
        conn.commit()
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        self.record["databases"][relpath] = {
            t: conn.execute("SELECT count(*) FROM %s" % quote(t)).fetchone()[0] for t in tables}
        conn.close()

    def insert(self, conn, table, rows):
        if not rows:
            return
        # A column a row leaves out is NULL, or its declared default; a CURRENT_TIMESTAMP default would
        # make the tree depend on the clock, so it takes the row's created_at (else the demo epoch).
        clock = [r[1] for r in conn.execute("PRAGMA table_info(%s)" % quote(table))
                 if (r[4] or "").upper() == "CURRENT_TIMESTAMP"]
        epoch = ts(random.Random(0), 1)[:10] + " 00:00:00"
        rows = [dict({c: r.get("created_at", epoch) for c in clock}, **r) for r in rows]
        cols = list(dict.fromkeys(c for r in rows for c in r))
        conn.executemany(
            "INSERT INTO %s (%s) VALUES (%s)" % (quote(table), ", ".join(quote(c) for c in cols),
                                                ", ".join("?" * len(cols))),
            [tuple(r.get(c) for c in cols) for r in rows])

    def build_db(self, name, ddl, tables):
        """A database of data/ from its DDL and {table: rows} (a callable of the database's rng)."""
        relpath = "data/" + name
        conn = self.open(relpath)
        conn.executescript(ddl)
        for table, rows in tables(self.rng(name)).items():
            self.insert(conn, table, rows)
        self.finish(conn, relpath)

    def build_users_db(self, name, users_ddl, ddl, users):
        """Open data/<name>, create its users table and the rest of its schema, insert `users` and record their
        usernames; returns the open connection for the database's other tables."""
        conn = self.open("data/" + name)
        conn.execute(users_ddl)
        conn.executescript(ddl)
        self.insert(conn, "users", users)
        self.record["users"][name] = [u["username"] for u in users]
        return conn

    # -- the primary ------------------------------------------------------------------------------
    def build_zoe(self):
        rng = self.rng("zoe.db")
        users_rng = random.Random("users:%s" % self.seed)
        users = []
        for name in ("testuser", "admin", "user", "system"):
            users.append({"user_id": name, "email": "%s@zoe.local" % name, "username": name,
                          "password_hash": password_hash(DEMO_PASSWORDS[name], "zoe-%s" % name),
                          "is_active": 1, "is_admin": int(name == "admin"), "created_at": ts(users_rng, 30),
                          "settings_json": "{}"})
        conn = self.build_users_db("zoe.db", ZOE_USERS, ZOE_DDL, users)
        self.zoe_users = {u["username"]: u for u in users}
        names = list(self.zoe_users)
        self.insert(conn, "user_sessions", [
            {"session_id": "zs-%04d" % i, "user_id": names[i % 4], "token": token(rng),
             "expires_at": ts(rng), "created_at": ts(rng)} for i in range(self.bulk(12))])
        self.insert(conn, "user_api_keys", [
            {"user_id": "admin", "service": s, "encrypted_key": token(rng), "created_at": ts(rng)}
            for s in ("openai", "homeassistant")])
        relations = ("partner", "child", "parent", "friend", "colleague", "neighbour", "sibling")
        self.insert(conn, "people", [
            {"user_id": names[i % 3], "name": "Person %02d" % (i + 1), "relationship": relations[i % 7],
             "birthday": "19%02d-%02d-%02d" % (60 + i, 1 + i % 12, 1 + i % 28), "phone": None,
             "email": None, "address": None, "notes": words(rng, 6), "avatar_url": None, "tags": "[]",
             "metadata": "{}", "created_at": ts(rng), "updated_at": ts(rng)} for i in range(17)])
        self.insert(conn, "events", [
            {"user_id": names[i % 4], "title": words(rng, 3), "description": words(rng, 12),
             "start_date": ts(rng)[:10], "start_time": "%02d:%02d" % (rng.randrange(24), rng.choice((0, 30))),
             "location": rng.choice(["home", "office", "school", None]), "metadata": "{}",
             "created_at": ts(rng)} for i in range(self.bulk(300))])
        self.insert(conn, "lists", [
            {"user_id": names[i % 3], "list_type": "shopping" if i == 0 else "personal_todos", "name": n,
             "items": json.dumps([{"text": words(rng, 2), "completed": j % 2 == 0} for j in range(8)]),
             "metadata": "{}", "shared_with": "[]", "created_at": ts(rng)}
            for i, n in enumerate(["Groceries", "Weekend", "Garden"])])
        self.zoe_dev_tasks = [self.dev_task(rng, "task-%04d" % i, "system") for i in range(1, 6)]
        self.insert(conn, "developer_tasks", self.zoe_dev_tasks)
        self.finish(conn, "data/zoe.db")

    def dev_task(self, rng, task_id, user_id):
        return {"id": task_id, "user_id": user_id, "title": "Task %s: %s" % (task_id, words(rng, 3)),
                "objective": words(rng, 10), "requirements": json.dumps([words(rng, 4), words(rng, 4)]),
                "priority": rng.choice(["low", "medium", "high"]), "status": rng.choice(["pending", "done"]),
                "execution_count": rng.randrange(4), "created_at": ts(rng)}

    def build_memory(self):
        """light_rag_memory.py's own tables; its people table is empty and is not zoe.db's."""
        def tables(rng):
            return {"entity_embeddings": [
                {"entity_type": "person" if i < 17 else "note", "entity_id": 1 + i,
                 "entity_name": "entity %d" % i, "embedding_vector": vector(rng), "context_summary": words(rng, 20),
                 "embedding_hash": token(rng, 16), "created_at": ts(rng)} for i in range(self.bulk(1400))],
                "memory_facts": [{"entity_type": "person", "entity_id": 1 + i % 17, "fact": words(rng, 12),
                                  "category": "general", "source": "chat", "created_at": ts(rng)}
                                 for i in range(self.bulk(200))]}
        self.build_db("memory.db", MEMORY_DDL, tables)

    # -- the 13 to fold ---------------------------------------------------------------------------
    def build_auth(self):
        rng = self.rng("auth.db")
        zoe_admin, zoe_user = self.zoe_users["admin"], self.zoe_users["user"]
        admin_id, user_id = "usr_%012x" % rng.getrandbits(48), "usr_%012x" % rng.getrandbits(48)
        common = {"is_active": 1, "is_verified": 1, "failed_login_attempts": 0, "locked_until": None,
                  "settings": "{}", "metadata": "{}"}
        admin = dict(common, user_id=admin_id, username="admin", email=zoe_admin["email"],   # zoe.db's admin
                     password_hash=zoe_admin["password_hash"], created_at=zoe_admin["created_at"],
                     passcode_hash=password_hash(DEMO_PASSCODES["admin"], "passcode-admin"), role="admin",
                     updated_at=ts(rng, 60, "T"), last_login=ts(rng, 60, "T"))
        user = dict(common, user_id=user_id, username="user", email="user.new@zoe.local",   # disagrees with zoe.db
                    password_hash=password_hash(DEMO_PASSWORDS["user"], "auth-user"), created_at=ts(rng, 30, "T"),
                    passcode_hash=None, role="user", updated_at=ts(rng, 60, "T"), last_login=None)
        conn = self.build_users_db("auth.db", AUTH_USERS, AUTH_DDL, [admin, user])
        ids = [admin_id, user_id]
        self.insert(conn, "roles", [
            {"role_id": r, "name": r, "description": "%s role" % r, "permissions": json.dumps(p),
             "inherits_from": inherit, "is_system": 1, "created_at": ts(rng, 5, "T")}
            for r, p, inherit in (("user", ["chat"], None), ("admin", ["*"], "user"))])
        self.insert(conn, "passcodes", [
            {"user_id": admin_id, "passcode_hash": admin["passcode_hash"], "algorithm": "pbkdf2_sha256",
             "salt": "passcode-admin", "created_at": ts(rng, 60, "T")}])
        self.insert(conn, "auth_sessions", [
            {"session_id": "as-%04d" % i, "user_id": ids[i % 2], "auth_method": rng.choice(["password", "passcode"]),
             "created_at": ts(rng, 60, "T"), "last_activity": ts(rng, 60, "T"), "expires_at": ts(rng, 90, "T"),
             "role_cache": "admin" if i % 2 == 0 else "user"} for i in range(self.bulk(30))])
        self.insert(conn, "sessions", [
            {"session_id": "shared-0001", "user_id": admin_id, "created_at": ts(rng), "expires_at": ts(rng),
             "session_type": "password"}] + [
            {"session_id": "auth-%04d" % i, "user_id": ids[i % 2], "created_at": ts(rng), "expires_at": ts(rng),
             "session_type": rng.choice(["password", "passcode"])} for i in range(self.bulk(24))])
        self.insert(conn, "audit_logs", [
            {"log_id": "log-%05d" % i, "user_id": ids[i % 2] if i % 5 else None,
             "action": rng.choice(["login", "logout", "passcode"]), "resource": "auth", "result": "success",
             "ip_address": "192.0.2.%d" % (1 + i % 200), "user_agent": "zoe-touch/1", "details": "{}",
             "timestamp": ts(rng, 60, "T")} for i in range(self.bulk(120))])
        self.insert(conn, "password_history", [
            {"user_id": u["user_id"], "password_hash": u["password_hash"], "created_at": u["created_at"]}
            for u in (admin, user)])
        self.record["cases"]["users_keyed"] = {"zoe.db": "user_id TEXT (the username)", "auth.db": "user_id TEXT usr_",
                                               "developer_tasks.db": "id INTEGER"}
        self.record["cases"]["auth_admin_other_key"] = {"auth.db": admin_id, "zoe.db": "admin"}
        self.record["cases"]["auth_user_conflict"] = {"auth.db": user_id, "zoe.db": "user"}
        self.finish(conn, "data/auth.db")

    def build_sessions(self):
        names = list(self.zoe_users)

        def tables(rng):
            rows = [{"session_id": "shared-0001", "user_id": "admin", "created_at": ts(rng), "last_activity": ts(rng),
                     "expires_at": ts(rng), "is_active": 1, "metadata": "{}"}]
            rows += [{"session_id": "sess-%05d" % i, "user_id": names[i % 4], "created_at": ts(rng),
                      "last_activity": ts(rng), "expires_at": ts(rng), "is_active": i % 3 != 0,
                      "metadata": json.dumps({"client": rng.choice(["touch", "web", "voice"])})}
                     for i in range(self.bulk(60))]
            return {"sessions": rows}
        self.build_db("sessions.db", SESSIONS_DDL, tables)
        self.record["cases"]["session_key_conflict"] = {"session_id": "shared-0001",
                                                        "sources": ["auth.db", "sessions.db"]}

    def build_developer_tasks(self):
        rng = self.rng("developer_tasks.db")
        conn = self.build_users_db("developer_tasks.db", DEV_USERS, DEV_DDL, [
            {"id": 1, "username": "system", "email": "system@zoe.local", "role": "developer",
             "created_at": self.zoe_users["system"]["created_at"]}])
        self.insert(conn, "developer_tasks", [self.dev_task(rng, "dev-%04d" % i, 1) for i in range(1, self.bulk(30) + 1)])
        dynamic = [dict((k, v) for k, v in self.dev_task(rng, "dyn-%04d" % i, None).items() if k != "user_id")
                   for i in range(1, self.bulk(40) + 1)]
        self.insert(conn, "dynamic_tasks", dynamic)
        self.insert(conn, "task_executions", [
            {"task_id": dynamic[i % len(dynamic)]["id"], "execution_time": ts(rng),
             "system_state_before": json.dumps({"load": rng.random()}), "plan_generated": words(rng, 20),
             "execution_result": words(rng, 30), "success": rng.random() > 0.2, "changes_made": "[]"}
            for i in range(self.bulk(150))])
        self.record["cases"]["integer_child_into_text"] = {"table": "developer_tasks", "column": "user_id",
                                                           "source_type": "INTEGER", "target_type": "TEXT"}
        self.finish(conn, "data/developer_tasks.db")

    def build_learning(self):
        def tables(rng):
            return {
                "learning_patterns": [{"pattern_type": rng.choice(["intent", "correction", "preference"]),
                                       "pattern_data": json.dumps({"text": words(rng, 8)}),
                                       "success_count": rng.randrange(20), "failure_count": rng.randrange(5),
                                       "last_updated": ts(rng), "created_at": ts(rng)} for _ in range(self.bulk(300))],
                "task_execution_history": [{"task_id": "dyn-%04d" % (1 + i % 40), "task_title": words(rng, 4),
                                            "execution_time": ts(rng), "success": rng.random() > 0.3,
                                            "execution_duration": rng.uniform(0.1, 90), "system_context": "{}"}
                                           for i in range(self.bulk(200))],
                "knowledge_base": [self.shared_knowledge] + [
                    {"id": i, "category": "learned", "title": words(rng, 4), "content": words(rng, 60),
                     "confidence_score": rng.random(), "usage_count": rng.randrange(9), "created_at": ts(rng)}
                    for i in range(2, self.bulk(80) + 2)]}
        self.build_db("learning.db", LEARNING_DDL, tables)
        rng = self.rng("learning.db-wal")
        self.append_in_wal("data/learning.db", "learning_patterns", [
            {"pattern_type": "intent", "pattern_data": json.dumps({"wal": i}), "success_count": 1,
             "failure_count": 0, "last_updated": ts(rng), "created_at": ts(rng)} for i in range(25)])

    def append_in_wal(self, relpath, table, rows):
        """Commit `rows` in WAL mode and leave them in the -wal: the writer exits without a checkpoint.

        A clean close checkpoints the -wal into the main file and deletes it, so a child process
        commits and then calls os._exit(), the way a killed service leaves its database.
        """
        path = os.path.join(self.root, relpath)
        cols = list(rows[0])
        script = (
            "import json, os, sqlite3, sys\n"
            "path, sql, rows = json.loads(sys.stdin.read())\n"
            "conn = sqlite3.connect(path)\n"
            "conn.execute('PRAGMA journal_mode=WAL')\n"
            "conn.execute('PRAGMA wal_autocheckpoint=0')\n"
            "conn.executemany(sql, rows)\n"
            "conn.commit()\n"
            "os._exit(0)\n")
        sql = "INSERT INTO %s (%s) VALUES (%s)" % (quote(table), ", ".join(quote(c) for c in cols),
                                                  ", ".join("?" * len(cols)))
        payload = json.dumps([path, sql, [[r[c] for c in cols] for r in rows]])
        subprocess.run([sys.executable, "-c", script], input=payload, text=True, check=True)
        if not os.path.exists(path + "-wal"):
            raise RuntimeError("%s: the -wal was not left behind" % path)
        self.record["databases"][relpath][table] += len(rows)
        self.record["cases"]["wal_only_rows"] = {"database": relpath, "table": table, "rows": len(rows)}

    def build_folds(self):
        b = self.bulk
        names = list(self.zoe_users)
        self.build_auth()
        self.build_sessions()
        self.build_developer_tasks()
        shared_rng = random.Random("knowledge:%s" % self.seed)
        self.shared_knowledge = {"id": 1, "category": "home", "title": "Where the fuse box is",
                                 "content": words(shared_rng, 40), "confidence_score": 0.9, "usage_count": 3,
                                 "last_used": None, "created_at": ts(shared_rng)}
        self.record["cases"]["identical_row"] = {"table": "knowledge_base", "id": 1,
                                                 "sources": ["learning.db", "knowledge.db"]}
        self.build_db("satisfaction.db", SATISFACTION_DDL, lambda r: {
            "user_feedback": [{"id": "fb-%05d" % i, "user_id": names[i % 4], "interaction_id": "int-%05d" % i,
                               "feedback_type": r.choice(["explicit", "implicit"]), "satisfaction_level": 1 + i % 5,
                               "explicit_rating": 1 + i % 5, "feedback_text": words(r, 10), "context": "{}",
                               "timestamp": ts(r)} for i in range(b(150))],
            "satisfaction_metrics": [{"user_id": n, "total_interactions": r.randrange(500),
                                      "average_satisfaction": r.uniform(1, 5), "last_updated": ts(r)} for n in names],
            "interaction_tracking": [{"interaction_id": "int-%05d" % i, "user_id": names[i % 4],
                                      "request_text": words(r, 12), "response_text": words(r, 30),
                                      "response_time": r.uniform(0.2, 8), "timestamp": ts(r)} for i in range(b(300))]})
        self.build_db("self_awareness.db", SELF_AWARENESS_DDL, lambda r: {
            "identity": [{"user_id": "system", "data": json.dumps({"name": "Zoe", "version": "3.1"}), "created_at": ts(r)}],
            "self_reflections": [{"id": "refl-%05d" % i, "user_id": "system", "timestamp": ts(r),
                                  "reflection_type": r.choice(["daily", "error", "success"]), "content": words(r, 40),
                                  "insights": "[]", "action_items": "[]"} for i in range(b(120))],
            "self_memories": [{"user_id": "system", "memory_type": "experience", "content": words(r, 25),
                               "importance": r.uniform(1, 10), "tags": "[]", "created_at": ts(r)} for _ in range(b(100))]})
        self.build_learning()
        self.build_db("agent_planning.db", AGENT_PLANNING_DDL, lambda r: {
            "agent_goals": [{"id": "goal-%04d" % i, "title": words(r, 4), "objective": words(r, 12),
                             "status": r.choice(["pending", "done"]), "created_at": ts(r)} for i in range(b(20))],
            "task_plans": [{"plan_id": "plan-%04d" % i, "goal_id": "goal-%04d" % (i % b(20)),
                            "steps": json.dumps([words(r, 5) for _ in range(4)]), "created_at": ts(r)}
                           for i in range(b(30))],
            "task_executions": [{"execution_id": "exec-%05d" % i, "plan_id": "plan-%04d" % (i % b(30)),
                                 "step_id": "step-%d" % (i % 4), "agent_id": r.choice(["planner", "coder"]),
                                 "started_at": ts(r), "status": r.choice(["running", "done", "failed"]),
                                 "result": words(r, 10)} for i in range(b(120))]})
        self.record["cases"]["same_name_different_thing"] = {
            "table": "task_executions", "sources": ["developer_tasks.db", "agent_planning.db"]}
        tool_ids = ["calendar.add", "lists.add", "memory.search", "people.find", "weather.get", "music.play",
                    "lights.set", "timer.start"]
        self.build_db("tool_registry.db", TOOL_REGISTRY_DDL, lambda r: {
            "tools": [{"tool_id": t, "name": t.replace(".", " "), "description": words(r, 8),
                       "category": t.split(".")[0], "parameters": "[]", "created_at": ts(r)} for t in tool_ids],
            "tool_executions": [{"execution_id": "tx-%05d" % i, "tool_id": r.choice(tool_ids), "parameters": "{}",
                                 "status": "done", "result": words(r, 6), "started_at": ts(r),
                                 "duration_ms": r.randrange(5, 900), "user_id": names[i % 4]} for i in range(b(400))]})
        self.build_db("snapshots.db", SNAPSHOTS_DDL, lambda r: {
            "snapshots": [{"snapshot_id": "snap-%04d" % i, "created_at": ts(r), "size_bytes": r.randrange(1 << 20, 1 << 28),
                           "encrypted": 1, "compression_ratio": r.uniform(0.2, 0.9), "checksum": token(r, 32),
                           "status": "complete", "backup_path": "/app/data/snapshots/snap-%04d.tar.gz.enc" % i,
                           "metadata": json.dumps({"files": [words(r, 1) for _ in range(40)]})} for i in range(b(60))],
            "snapshot_config": [{"key": "retention_days", "value": "30"}, {"key": "encrypt", "value": "true"}]})
        models = ["llama3.2:3b", "qwen2.5:7b", "phi3"]
        self.build_db("model_performance.db", MODEL_PERFORMANCE_DDL, lambda r: {
            "model_performance": [{"model_name": r.choice(models), "timestamp": ts(r), "response_time": r.uniform(0.1, 9),
                                   "quality_score": r.random(), "warmth_score": r.random(),
                                   "intelligence_score": r.random(), "tool_usage_score": r.random(),
                                   "success": 1, "query_type": r.choice(["chat", "tool"]), "user_id": names[i % 4]}
                                  for i in range(b(3000))],
            "model_rankings": [{"timestamp": ts(r), "model_name": m, "overall_score": r.random(), "rank_position": i + 1}
                               for i, m in enumerate(models)],
            QUOTED_TABLE: [{"day": "2025-03-%02d" % (1 + d), "model name": m, "order": i, "p95 latency-ms": r.uniform(50, 900),
                            "group": "edge"} for d in range(b(20)) for i, m in enumerate(models)]})
        self.record["cases"]["quoted_names"] = {"database": "data/model_performance.db", "table": QUOTED_TABLE}
        self.build_db("context_cache.db", CONTEXT_CACHE_DDL, lambda r: {
            "context_summaries": [{"id": "ctx-%06d" % i, "user_id": names[i % 4], "context_type": "calendar",
                                   "context_key": "k%d" % i, "summary": words(r, 60), "original_context": words(r, 120),
                                   "created_at": ts(r), "expires_at": ts(r)} for i in range(b(500))],
            "performance_metrics": [{"context_type": "calendar", "operation": r.choice(["fetch", "cache_hit"]),
                                     "duration_ms": r.uniform(1, 300), "success": 1, "timestamp": ts(r),
                                     "user_id": names[i % 4]} for i in range(b(400))]})
        self.build_db("knowledge.db", KNOWLEDGE_BASE, lambda r: {"knowledge_base": [self.shared_knowledge] + [
            {"id": i, "category": "reference", "title": words(r, 4), "content": words(r, 150),
             "confidence_score": r.random(), "usage_count": r.randrange(9), "created_at": ts(r)}
            for i in range(2, b(600) + 2)]})
        self.build_db("aider_conversations.db", AIDER_DDL, lambda r: {
            "aider_sessions": [{"session_id": "aider-%03d" % i, "task_id": "dyn-%04d" % (1 + i), "created_at": ts(r),
                                "status": "closed", "files_context": "[]"} for i in range(b(12))],
            "aider_messages": [{"session_id": "aider-%03d" % (i % b(12)), "role": r.choice(["user", "assistant"]),
                                "content": words(r, 40), "timestamp": ts(r)} for i in range(b(200))]})

    def build_unknown(self):
        """Four databases outside data/ that the audit must find and report, never touch."""
        specs = {
            UNKNOWN_DATABASES[0]: ("CREATE TABLE training_examples (id INTEGER PRIMARY KEY, prompt TEXT, answer TEXT)",
                                   "training_examples", lambda r, i: {"id": i, "prompt": words(r, 8), "answer": words(r, 8)}),
            UNKNOWN_DATABASES[1]: ("CREATE TABLE vectors (id INTEGER PRIMARY KEY, key TEXT, vector BLOB)",
                                   "vectors", lambda r, i: {"id": i, "key": "k%d" % i, "vector": vector(r, 32)}),
            UNKNOWN_DATABASES[2]: (ZOE_USERS, "users", None),
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
        self.record["passcodes"] = dict(DEMO_PASSCODES)
        self.record["secret_columns"] = SECRET_COLUMNS
        return self.record
