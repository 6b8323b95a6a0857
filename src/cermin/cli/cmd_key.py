"""`cermin key add|list|remove|passwd`."""

from __future__ import annotations

import os

import click

from cermin.cli.common import Output, _checked, _strip_newline, open_repo, prompt_password
from cermin.errors import CerminError


def _new_password(new_password_file) -> bytes:
    if new_password_file:
        try:
            with open(new_password_file, "rb") as f:
                return _checked(_strip_newline(f.read()), f"new password file {new_password_file}")
        except OSError as e:
            raise CerminError(f"cannot read new password file: {e.strerror}") from None
    env = os.environ.get("CERMIN_NEW_PASSWORD")
    if env is not None:
        return _checked(env.encode(), "CERMIN_NEW_PASSWORD")
    return prompt_password("new password: ", confirm=True)


_new_pw_option = click.option(
    "--new-password-file",
    type=click.Path(dir_okay=False),
    help="Read the new password from this file (or set CERMIN_NEW_PASSWORD).",
)


@click.group()
def key():
    """Manage the key slots (passwords) of a repository."""


@key.command("list")
@click.pass_obj
def key_list(g):
    """List key slots; * marks the one in use."""
    from cermin.ops import commands

    return Output(g).render(commands.key_list(open_repo(g, load_index=False)))


@key.command("add")
@_new_pw_option
@click.pass_obj
def key_add(g, new_password_file):
    """Add a key slot for a new password."""
    from cermin.ops import commands

    repo = open_repo(g, load_index=False)
    return Output(g).render(commands.key_add(repo, _new_password(new_password_file)))


@key.command("remove")
@click.argument("key_id")
@click.pass_obj
def key_remove(g, key_id):
    """Remove a key slot (never the one in use)."""
    from cermin.ops import commands

    return Output(g).render(commands.key_remove(open_repo(g, load_index=False), key_id))


@key.command("passwd")
@_new_pw_option
@click.pass_obj
def key_passwd(g, new_password_file):
    """Change the password of the key slot in use."""
    from cermin.ops import commands

    repo = open_repo(g, load_index=False)
    return Output(g).render(commands.key_passwd(repo, _new_password(new_password_file)))
