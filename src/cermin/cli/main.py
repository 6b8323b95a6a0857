"""`cermin` entry point: global options, lazy subcommand loading and error-to-exit-code mapping."""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from cermin import __version__
from cermin.errors import EXIT_FATAL, EXIT_OK, EXIT_USAGE, CerminError

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

EPILOG = """\b
Exit codes:
  0   success
  1   fatal error
  2   usage error
  3   backup saved an incomplete snapshot (some files unreadable)
  10  repository does not exist
  11  repository is locked
  12  wrong password
  20  waiting for a second admin's approval (cermin serve)
  130 interrupted (SIGINT), 143 terminated (SIGTERM): locks released
Global options (-r, --json, -q, -v, --no-lock, --password-*) go before or after the command name.
Environment: CERMIN_REPOSITORY, CERMIN_PASSWORD, CERMIN_PASSWORD_FILE, CERMIN_PASSWORD_COMMAND,
CERMIN_TOKEN / CERMIN_TOKEN_FILE (and CERMIN_CACERT) for http(s) repositories;
for s3: repositories AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION."""

# name -> (module, function, short help). Modules import lazily so `--help` stays fast.
COMMANDS = {
    "init": ("cermin.cli.cmd_repo", "init", "Create a new repository."),
    "backup": ("cermin.cli.cmd_backup", "backup", "Back up files or stdin into a new snapshot."),
    "snapshots": ("cermin.cli.cmd_browse", "snapshots", "List snapshots."),
    "ls": ("cermin.cli.cmd_browse", "ls", "List files in a snapshot."),
    "diff": ("cermin.cli.cmd_browse", "diff", "Show differences between two snapshots."),
    "find": ("cermin.cli.cmd_browse", "find", "Find files in snapshots by name or path pattern."),
    "restore": ("cermin.cli.cmd_restore", "restore", "Restore a snapshot into a directory."),
    "dump": ("cermin.cli.cmd_restore", "dump", "Write a file (or a directory as tar) from a snapshot to stdout."),
    "cat": ("cermin.cli.cmd_repo", "cat", "Print repository objects (for debugging)."),
    "stats": ("cermin.cli.cmd_repo", "stats", "Show repository and snapshot statistics."),
    "check": ("cermin.cli.cmd_maint", "check", "Verify the repository and name any damage."),
    "repair": ("cermin.cli.cmd_maint", "repair", "Repair index, packs or snapshots."),
    "forget": ("cermin.cli.cmd_maint", "forget", "Remove snapshots by ID or retention policy."),
    "prune": ("cermin.cli.cmd_maint", "prune", "Remove unused data (plan, repack, delete)."),
    "protect": ("cermin.cli.cmd_maint", "protect", "Keep a snapshot from forget/prune until a date."),
    "lock": ("cermin.cli.cmd_lock", "lock", "Object Lock retention: status, extend, unhide."),
    "key": ("cermin.cli.cmd_key", "key", "Manage key slots (passwords)."),
    "unlock": ("cermin.cli.cmd_repo", "unlock", "Remove stale locks."),
    "guard": ("cermin.cli.cmd_guard", "guard", "Ransomware guard: mark, acknowledge and explain verdicts."),
    "mirror": ("cermin.cli.cmd_mirror", "mirror", "Copy snapshots of one repository into another (tenant mirror)."),
    "config": ("cermin.cli.cmd_config", "config", "The agent's configuration: validate it, print the plan."),
    "drill": ("cermin.cli.cmd_drill", "drill", "Restore drills: restore, verify, check and time; signed report."),
    "agent": ("cermin.cli.cmd_agent", "agent", "The backup agent: run, once, status, keygen."),
    "serve": ("cermin.cli.cmd_serve", "serve", "Serve repositories over HTTP with split credentials."),
    "approvals": ("cermin.cli.cmd_serve", "approvals", "Two-person rule: approve or reject deletions."),
    "web": ("cermin.cli.cmd_web", "web", "The fleet dashboard: serve it; manage its users."),
    "demo": ("cermin.cli.cmd_demo", "demo", "Set up a demo fleet and show it in the dashboard."),
    "export": ("cermin.cli.cmd_export", "export", "Evidence for auditors: CSV, HTML or PDF over a period."),
}


# Global options a user may also give after the command name (`cermin snapshots --json`):
# option -> takes a value. Hoisted in front of the command unless that command defines the same name.
GLOBAL_OPTIONS = {
    "-r": True,
    "--repo": True,
    "--password-file": True,
    "--password-command": True,
    "--json": False,
    "-q": False,
    "--quiet": False,
    "-v": False,
    "--verbose": False,
    "--no-lock": False,
}


def _option_names(cmd: click.Command) -> tuple[set[str], dict[str, int]]:
    """(every option name of cmd, option name -> how many values follow it)."""
    names: set[str] = set()
    values: dict[str, int] = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for n in (*p.opts, *p.secondary_opts):
                names.add(n)
                if not p.is_flag and not p.count:
                    values[n] = max(p.nargs, 1)
    return names, values


_SHORT_FLAGS = {"q", "v"}


def _global_at(tok: str, own: set[str]) -> tuple[str, str | None] | None:
    """If tok is a global option the command does not define itself: (option, attached value or None)."""
    if tok.startswith("--"):
        name, eq, val = tok.partition("=")
        if name in GLOBAL_OPTIONS and name not in own and (GLOBAL_OPTIONS[name] or not eq):
            return name, (val if eq else None)
        return None
    if len(tok) < 2 or tok[0] != "-":
        return None
    opt = tok[:2]
    if GLOBAL_OPTIONS.get(opt) and opt not in own:
        return opt, (tok[2:] or None)  # -r PATH or -rPATH
    if set(tok[1:]) <= _SHORT_FLAGS and not any(f"-{c}" in own for c in tok[1:]):
        return tok, None  # -q, -v, -vv, -qv
    return None


def hoist_globals(group: click.Group, ctx: click.Context | None, args: list[str]) -> list[str]:
    """Move global options given after the command name in front of it, so every command accepts them.

    Walks the arguments the way click will parse them: values of the command's own options are
    skipped (`--exclude --json` excludes a file named '--json'), nested groups (`key list`) are
    followed, and nothing after `--` moves (a file literally named --json stays an argument). An
    option the command defines itself is the command's. A group with `words_are_arguments` (mirror:
    `mirror --from A --to B SNAP --json`) takes words that name no subcommand as its arguments, and
    the walk goes on past them."""
    hoisted: list[str] = []
    rest: list[str] = []
    cmd: click.Command = group
    own: set[str] = set()  # the group's own options are the globals
    values = {n: 1 for n, v in GLOBAL_OPTIONS.items() if v}
    in_args = False  # past the first argument word of a group whose words are arguments
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            rest += args[i:]
            break
        found = _global_at(tok, own)
        if found is not None:
            opt, val = found
            n = 1 if GLOBAL_OPTIONS.get(opt) and val is None else 0
            if i + n >= len(args):
                return hoisted + [tok]  # `-r` with no value: the group reports it
            hoisted += args[i : i + 1 + n]
            i += 1 + n
            continue
        if tok.startswith("-") and tok != "-":
            n = 0 if "=" in tok else values.get(tok, 0)
            rest += args[i : i + 1 + n]
            i += 1 + n
            continue
        rest.append(tok)
        i += 1
        if isinstance(cmd, click.Group) and not in_args:  # tok names a subcommand
            sub = cmd.get_command(ctx, tok)
            if sub is None:
                if getattr(cmd, "words_are_arguments", False):
                    in_args = True  # `mirror [OPTIONS] SNAPSHOT...`: words are arguments, keep walking
                    continue
                rest += args[i:]  # unknown command: click reports it
                break
            # A group that takes its own options after the subcommand name (`mirror status --from A`)
            # keeps them known below it, so their values are skipped as values.
            inherited = _option_names(cmd) if getattr(cmd, "options_after_subcommand", False) else (set(), {})
            cmd = sub
            names, values = _option_names(sub)
            own = names | inherited[0]
            values = {**inherited[1], **values}
    return hoisted + rest


class LazyGroup(click.Group):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_globals(self, ctx, list(args)))

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        return getattr(importlib.import_module(spec[0]), spec[1])

    def format_commands(self, ctx, formatter):
        rows = [(n, spec[2]) for n, spec in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class Globals:
    def __init__(self, repo, password_file, password_command, json_out, quiet, verbose, no_lock=False):
        self.no_lock = no_lock
        self.repo = repo
        self.password_file = password_file
        self.password_command = password_command
        self.json = json_out
        self.quiet = quiet
        self.verbose = verbose


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-r", "--repo", envvar="CERMIN_REPOSITORY", help="Repository: a directory, or s3:http://host:port/bucket/prefix."
)
@click.option(
    "--password-file",
    envvar="CERMIN_PASSWORD_FILE",
    type=click.Path(dir_okay=False),
    help="Read the password from this file.",
)
@click.option(
    "--password-command",
    envvar="CERMIN_PASSWORD_COMMAND",
    help="Run this command and read the password from its output.",
)
@click.option("--json", "json_out", is_flag=True, help="Emit JSON lines instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no chatter; answers, warnings and errors only.")
@click.option("-v", "--verbose", count=True, help="Print more: -v lists every file read by a backup.")
@click.option("--no-lock", is_flag=True, help="Take no lock (for read-only media; unsafe next to prune).")
@click.version_option(__version__, prog_name="cermin")
@click.pass_context
def cli(ctx, repo, password_file, password_command, json_out, quiet, verbose, no_lock):
    """cermin: deduplicated, encrypted, verifiable backups."""
    ctx.obj = Globals(repo, password_file, password_command, json_out, quiet, verbose, no_lock)


def _raise_fd_limit() -> None:
    """Deep trees hold one fd per level and workers hold batches of open files: use the hard limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt so the same cleanup runs
    (locks released, temporary files removed) on the way out."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated()


def _stdout_broken() -> bool:
    """Whether standard output is what failed: flushing what is still buffered fails again."""
    try:
        sys.stdout.flush()
        sys.stdout.buffer.flush()
    except (OSError, ValueError, AttributeError):
        return True
    return False


def _where(e: BaseException) -> str:
    """The innermost cermin function an error came from, to name something when the system named no file."""
    tb, last = e.__traceback__, ""
    while tb is not None:
        mod = tb.tb_frame.f_globals.get("__name__", "")
        if mod.startswith("cermin."):
            last = f"{mod}.{tb.tb_frame.f_code.co_name}"
        tb = tb.tb_next
    return last or "cermin"


def _os_error_message(e: BaseException) -> str:
    if not isinstance(e, OSError) or not e.strerror:
        return str(e) or type(e).__name__
    if e.filename is not None:
        name = os.fsdecode(e.filename) if isinstance(e.filename, (bytes, str)) else str(e.filename)
        if e.filename2 is not None:
            name += f" -> {os.fsdecode(e.filename2) if isinstance(e.filename2, (bytes, str)) else e.filename2}"
        return f"{e.strerror}: {name}"
    if _stdout_broken():
        _silence_stdout()
        return f"cannot write to standard output: {e.strerror}"
    return f"{e.strerror} (in {_where(e)}; set CERMIN_DEBUG=1 for details)"


def _silence_stdout() -> None:
    """Nothing more reaches a broken stdout (and the interpreter's final flush does not complain)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _json_mode(argv) -> bool:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        head = hoist_globals(cli, None, args)
    except Exception:  # noqa: BLE001 - only deciding how to print an error
        head = args
    i = 0
    while i < len(head):
        tok = head[i]
        if tok == "--json":
            return True
        if tok == "--" or not tok.startswith("-"):
            return False  # the command name: hoisting put every global before it
        i += 2 if GLOBAL_OPTIONS.get(tok) else 1  # an option's value is no command name
    return False


def _run(argv):
    """click's Command.main without its handlers: an interrupt reaches main() as itself (not as an Abort
    after a blank line), so SIGINT and SIGTERM each end with their own one line and exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    completion = getattr(cli, "_main_shell_completion", None)
    if completion is not None:
        completion({}, "cermin", None)
    with cli.make_context("cermin", args) as ctx:
        return cli.invoke(ctx)


def main(argv=None) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 200_000))  # trees as deep as the filesystem
    _raise_fd_limit()
    signal.signal(signal.SIGTERM, _on_sigterm)
    code, msg = EXIT_OK, ""
    try:
        rv = _run(argv)
        code = rv if isinstance(rv, int) else EXIT_OK
    except click.exceptions.Abort:
        code, msg = 130, "aborted"
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        code = EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code
        if not _json_mode(argv):
            e.show()
            sys.exit(code)
        msg = e.format_message()
    except CerminError as e:
        code, msg = e.exit_code, f"error: {e}"
    except Terminated:
        code, msg = EXIT_TERMINATED, "terminated"
    except KeyboardInterrupt:
        code, msg = EXIT_INTERRUPTED, "interrupted"
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_FATAL)
    except (OSError, MemoryError, RecursionError) as e:
        if os.environ.get("CERMIN_DEBUG"):
            raise
        code, msg = EXIT_FATAL, f"error: {_os_error_message(e)}"
    except Exception as e:  # a bug: still one line, details on request
        if os.environ.get("CERMIN_DEBUG"):
            raise
        code, msg = EXIT_FATAL, f"internal error: {type(e).__name__}: {e} (set CERMIN_DEBUG=1 for details)"
    if msg:
        _report(msg, code, _json_mode(argv))
    sys.exit(code)


def _report(msg: str, code: int, json_mode: bool) -> None:
    """The one line an error ends with: text on stderr, or with --json an `error` line on stdout."""
    if not json_mode:
        click.echo(f"cermin: {msg}", err=True)
        return
    import json

    text = msg.removeprefix("error: ")
    line = json.dumps({"message_type": "error", "message": text, "exit_code": code}, separators=(",", ":"))
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()
        click.echo(f"cermin: {msg}", err=True)  # stdout is what failed: say it where it can be read
