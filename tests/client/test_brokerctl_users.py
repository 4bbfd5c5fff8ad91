"""``brokerctl user`` through click's CliRunner: the users file edited offline."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from client.cli import main
from protocol.scram import ClientExchange, ServerExchange, parse_client_first
from protocol.users import parse


class Users:
    """Runs ``brokerctl user ...`` on one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runner = CliRunner()

    def run(self, *args: str, input: str | None = None, expect: int = 0) -> Result:
        result = self.runner.invoke(main, ["user", *args, "--file", str(self.path)], input=input)
        assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
        return result

    def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads(self.run(*args, "--json", input=input).stdout)


@pytest.fixture
def users(tmp_path: Path) -> Users:
    return Users(tmp_path / "users.toml")


def scram_ok(path: Path, name: str, password: str) -> bool:
    """Whether ``password`` passes SCRAM against the secret the file holds for ``name``."""
    held = parse(path.read_text()).get(name)
    assert held is not None and held.scram is not None
    client = ClientExchange(name, password)
    server = ServerExchange(parse_client_first(client.first()), held.scram)
    try:
        client.verify(server.final(client.final(server.server_first)))
    except ValueError:
        return False
    return True


def test_add_with_a_password_from_stdin(users: Users) -> None:
    out = users.json("add", "alice", "--password-stdin", "--publish", "orders.*", "--consume", "orders.*",
                     "--consume", "audit", input="s3cret pass\n")
    assert out == {"user": "alice", "scram": True, "iterations": 4096, "tokens": 0, "token": None,
                   "publish": ["orders.*"], "consume": ["orders.*", "audit"], "admin": []}
    text = users.path.read_text()
    assert "s3cret" not in text
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600
    assert scram_ok(users.path, "alice", "s3cret pass") and not scram_ok(users.path, "alice", "s3cret")


def test_add_asks_for_the_password_twice(users: Users) -> None:
    users.run("add", "bob", input="pw-one\npw-one\n")
    assert scram_ok(users.path, "bob", "pw-one")
    users.run("add", "carol", input="pw-one\npw-two\npw-3\npw-3\n")  # a mismatch is asked again
    assert scram_ok(users.path, "carol", "pw-3")


def test_a_token_is_shown_once_and_stored_as_a_hash(users: Users) -> None:
    out = users.run("add", "svc", "--token", "--publish", "billing").stdout
    token = out.strip().rsplit(" ", 1)[-1]
    assert token.startswith("lgt_") and len(token) > 40
    held = parse(users.path.read_text())
    assert token not in users.path.read_text() and held.user_for_token(token) is held.get("svc")
    assert held.get("svc").scram is None
    # A new token replaces the old one.
    again = users.json("passwd", "svc", "--token")["token"]
    held = parse(users.path.read_text())
    assert held.user_for_token(token) is None and held.user_for_token(again) is held.get("svc")


def test_passwd_grant_revoke_delete_and_list(users: Users) -> None:
    users.run("add", "alice", "--password-stdin", input="old\n")
    users.run("passwd", "alice", "--password-stdin", "--iterations", "8192", input="new\n")
    assert scram_ok(users.path, "alice", "new") and not scram_ok(users.path, "alice", "old")
    assert users.run("grant", "alice", "publish", "orders.*", "billing").stdout == "alice may publish: orders.* billing\n"
    users.run("grant", "alice", "admin", "*")
    assert users.json("revoke", "alice", "publish", "billing")["publish"] == ["orders.*"]
    users.run("add", "svc", "--token")
    listed = users.json("list")["users"]
    assert [(u["user"], u["scram"], u["iterations"], u["tokens"], u["publish"], u["admin"]) for u in listed] == [
        ("alice", True, 8192, 0, ["orders.*"], ["*"]), ("svc", False, None, 1, [], [])]
    lines = users.run("list").stdout.splitlines()
    assert lines[0].split() == ["USER", "AUTH", "PUBLISH", "CONSUME", "ADMIN"]
    assert lines[1].split() == ["alice", "scram", "orders.*", "-", "*"]
    assert lines[2].split() == ["svc", "1", "token(s)", "-", "-", "-"]
    users.run("delete", "svc")
    assert [u["user"] for u in users.json("list")["users"]] == ["alice"]
    before = CliRunner().invoke(main, ["--json", "user", "list", "--file", str(users.path)])  # brokerctl's --json
    assert before.exit_code == 0 and [u["user"] for u in json.loads(before.stdout)["users"]] == ["alice"]


@pytest.mark.parametrize("args, message", [
    (["passwd", "nobody", "--password-stdin"], "error: no user 'nobody'"),
    (["delete", "nobody"], "error: no user 'nobody'"),
    (["grant", "alice", "publish", "a*b"], "error: bad pattern 'a*b'"),
    (["add", "alice", "--password-stdin"], "error: user 'alice' exists"),
    (["add", "bad name", "--token"], "error: bad user name 'bad name'"),
])
def test_refused_changes(users: Users, args: list[str], message: str) -> None:
    users.run("add", "alice", "--password-stdin", input="pw\n")
    before = users.path.read_text()
    result = users.run(*args, input="pw\n", expect=1)
    assert result.stderr.startswith(message), result.stderr
    assert users.path.read_text() == before


def test_an_empty_password_and_a_broken_file_are_refused(users: Users) -> None:
    assert "unusable password" in users.run("add", "alice", "--password-stdin", input="\n", expect=1).stderr
    users.path.write_text("not toml [")
    assert "not valid TOML" in users.run("list", expect=1).stderr
    users.path.unlink()
    assert "no such users file" in users.run("list", expect=1).stderr


def test_the_file_comes_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    runner = CliRunner(env={"LOCKGATE_USERS_FILE": str(path)})
    result = runner.invoke(main, ["user", "add", "svc", "--token"])
    assert result.exit_code == 0, result.output
    assert parse(path.read_text()).get("svc") is not None
