"""Running a playbook or module as a tree of processes, and signalling that whole tree.

Shared by the tests that stop or kill a run while it works (test_failure_paths, test_kill_points,
test_zoe_audit_signals). Ansible's workers call setsid(), so a signal to the playbook's process group misses the
module that is running; these helpers walk /proc for every descendant instead, and freeze the tree (SIGSTOP)
until no new process appears, so nothing is reparented away or starts between the walk and the signal.
"""

import contextlib
import os
import signal
import subprocess

from zoe_host import REPO, VENV_BIN


def play_env(**extra):
    """The environment of a playbook run from the repository: its ansible.cfg, no colours, the virtualenv first."""
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1", PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
                **extra)


def playbook_cmd(host, name, *args):
    """ansible-playbook of the repository's playbook `name` against a ZoeHost, its reports in the host's dir."""
    return [os.path.join(VENV_BIN, "ansible-playbook"), "-i", host.inventory, os.path.join(REPO, name),
            "-e", "report_dir=%s" % host.reports] + list(args)


@contextlib.contextmanager
def streamed_playbook(host, name, *args, timeout=900):
    """Start playbook `name` in a session of its own with its output as a line stream (proc.stdout); after the
    block, wait for it to end; whatever happens, kill what is left of its process group and close the stream."""
    proc = subprocess.Popen(playbook_cmd(host, name, *args), cwd=REPO, env=play_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    try:
        yield proc
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def descendants(pid):
    """pid and every process below it, from /proc."""
    tree = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as handle:
                    tree.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
            except OSError:
                continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def send(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def signal_tree(pid, sig):
    """Send `sig` to pid and every descendant, freezing the tree first so none escapes (SIGSTOP until stable);
    returns the pids signalled."""
    frozen = set()
    while True:
        new = set(descendants(pid)) - frozen
        if not new:
            break
        send(new, signal.SIGSTOP)
        frozen |= new
    send(frozen, sig)
    return frozen


def kill_tree(pid):
    """SIGKILL a process and every descendant at once, as a power cut would."""
    return signal_tree(pid, signal.SIGKILL)


@contextlib.contextmanager
def frozen_tree(pid):
    """The process tree of pid stopped (SIGSTOP) for the block, then continued (SIGCONT)."""
    frozen = signal_tree(pid, signal.SIGSTOP)
    try:
        yield frozen
    finally:
        send(frozen, signal.SIGCONT)
