"""The demo Zoe service: a tiny HTTP app that behaves like the real services towards their database.

Endpoints:
  GET  /health          200 when the database named by the environment opens and answers, else 503
  POST /login           {"username": ..., "password": ...} or {"username": ..., "passcode": ...}, checked the
                        way zoe-auth does (services/zoe-auth/core/auth.py, core/passcode.py): the users row
                        by username (password_hash, passcode_hash, role, is_active, failed_login_attempts,
                        locked_until, updated_at), a passcode against the passcodes row of that user_id;
                        the answer names the user_id and role.
                        Those columns are read by name, so a users table without them (zoe.db before the
                        merge) answers 500, as the real service fails on it.
  GET  /count/<table>   {"table": ..., "rows": N}

Environment:
  DATABASE_PATH   the SQLite file this service reads (as the real services' DATABASE_PATH does)
  SERVICE_NAME    shown in /health
  PORT            listening port (8000)
  ZOE_NO_DATABASE set to 1 for a service without a database (the UI): /health answers without one

The database is opened read-only with mode=ro, so a missing file is an error and never re-created:
a service pointed at a retired database fails its health check instead of silently starting empty.
Standard library only.
"""

import hashlib
import hmac
import json
import os
import re
import signal
import sqlite3
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def database_path():
    return os.environ.get("DATABASE_PATH", "/app/data/zoe.db")


def connect():
    path = database_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    conn = sqlite3.connect("file:%s?mode=ro" % quote(path), uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def verify_password(password, stored):
    """Check a 'pbkdf2_sha256$iterations$salt$hexdigest' hash in constant time."""
    try:
        scheme, iterations, salt, expected = stored.split("$", 3)
    except (AttributeError, ValueError):
        return False
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations)).hex()
    return hmac.compare_digest(digest, expected)


class Handler(BaseHTTPRequestHandler):
    server_version = "zoe-demo/1"

    def log_message(self, fmt, *args):  # one line per request on stderr, no bodies
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.health()
        if self.path.startswith("/count/"):
            return self.count(self.path[len("/count/"):])
        return self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path == "/login":
            return self.login()
        return self.reply(404, {"error": "not found"})

    def health(self):
        if os.environ.get("ZOE_NO_DATABASE") == "1":
            return self.reply(200, {"status": "ok", "service": os.environ.get("SERVICE_NAME", ""),
                                    "database": None})
        try:
            with connect() as conn:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except (OSError, sqlite3.Error) as exc:
            return self.reply(503, {"status": "unhealthy", "database": database_path(),
                                    "error": type(exc).__name__})
        return self.reply(200, {"status": "ok", "service": os.environ.get("SERVICE_NAME", ""),
                                "database": database_path()})

    def count(self, table):
        if not TABLE_RE.match(table):
            return self.reply(400, {"error": "bad table name"})
        try:
            with connect() as conn:
                rows = conn.execute('SELECT count(*) FROM "%s"' % table).fetchone()[0]
        except FileNotFoundError:
            return self.reply(503, {"error": "database missing"})
        except sqlite3.Error as exc:
            return self.reply(404, {"error": str(exc)})
        return self.reply(200, {"table": table, "rows": rows})

    def login(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            username = str(body["username"])
            column = "passcode_hash" if "passcode" in body else "password_hash"
            secret = str(body["passcode"] if "passcode" in body else body["password"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return self.reply(400, {"error": "expected JSON with username and password (or passcode)"})
        try:
            with connect() as conn:
                row = conn.execute("SELECT user_id, password_hash, passcode_hash, role, is_active, "
                                   "failed_login_attempts, locked_until, updated_at FROM users WHERE username = ?",
                                   (username,)).fetchone()
                stored = row and row["password_hash"]
                if row is not None and column == "passcode_hash":   # core/passcode.py: the passcodes table
                    code = conn.execute("SELECT passcode_hash FROM passcodes WHERE user_id = ? AND is_active = 1",
                                        (row["user_id"],)).fetchone()
                    stored = code and code["passcode_hash"]
        except FileNotFoundError:
            return self.reply(503, {"error": "database missing"})
        except sqlite3.Error as exc:
            return self.reply(500, {"error": type(exc).__name__})
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        if (row is None or row["is_active"] in (0, "0") or (row["locked_until"] or "") > now
                or not verify_password(secret, stored)):
            return self.reply(401, {"ok": False, "username": username})
        return self.reply(200, {"ok": True, "username": username, "user_id": row["user_id"],
                                "role": row["role"] or "user"})


def main():
    # As PID 1 in a container, SIGTERM is ignored unless handled: exit at once so `compose stop`
    # does not wait out its 10 s grace period (that wait would be downtime).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
