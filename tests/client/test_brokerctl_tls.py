"""brokerctl over TLS (--tls, --tls-ca, --tls-cert/--tls-key and their LOCKGATE_*
variables), through click's CliRunner against a broker process serving TLS."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from client.cli import main

from ..broker_process import BrokerProcess
from ..tlsfiles import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker requiring TLS and a client certificate."""
    with BrokerProcess(tmp_path_factory.mktemp("ctl-tls") / "data", fsync="never",
                       args=pki.broker_args(client_ca=True)) as proc:
        yield proc


def ctl(*args: str, env: dict[str, str] | None = None) -> Result:
    clean = {name: "" for name in ("LOCKGATE_TLS", "LOCKGATE_TLS_CA", "LOCKGATE_CLIENT_CERT", "LOCKGATE_CLIENT_KEY",
                                   "LOCKGATE_USER", "LOCKGATE_PASSWORD", "LOCKGATE_TOKEN")}
    return CliRunner().invoke(main, list(args), env={**clean, **(env or {})})


def test_commands_over_tls_with_a_client_certificate(pki: Pki, tls_broker: BrokerProcess) -> None:
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    made = ctl("create-queue", "ctl-tls", "--addr", tls_broker.addr, *tls)
    assert made.exit_code == 0, made.output
    assert ctl("publish", "ctl-tls", "hello", "--addr", tls_broker.addr, *tls).exit_code == 0
    got = ctl("consume", "ctl-tls", "--ack", "--json", "--addr", tls_broker.addr, *tls)
    assert got.exit_code == 0, got.output
    assert [m["body"] for m in json.loads(got.output)["messages"]] == ["hello"]


def test_the_environment_gives_the_same_options(pki: Pki, tls_broker: BrokerProcess) -> None:
    env = {"LOCKGATE_ADDR": tls_broker.addr, "LOCKGATE_TLS": "1", "LOCKGATE_TLS_CA": str(pki.ca),
           "LOCKGATE_CLIENT_CERT": str(pki.client_cert)}
    pinged = ctl("ping", "--json", env=env)
    assert pinged.exit_code == 0, pinged.output
    # Before the command, as every global option.
    before = ctl("--addr", tls_broker.addr, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "ping")
    assert before.exit_code == 0, before.output


def test_each_failure_says_what_to_do(pki: Pki, tls_broker: BrokerProcess, tmp_path: Path) -> None:
    addr = ["--addr", tls_broker.addr]
    plain = ctl("ping", *addr)
    assert plain.exit_code == 3 and "speaks TLS: connect with --tls" in plain.output, plain.output
    untrusted = ctl("ping", *addr, "--tls")  # the system's CAs do not know this broker
    assert untrusted.exit_code == 3 and "certificate does not verify" in untrusted.output, untrusted.output
    assert "--tls-ca FILE" in untrusted.output
    no_cert = ctl("ping", *addr, "--tls-ca", str(pki.ca))  # the broker requires a client certificate
    assert no_cert.exit_code == 4 and "--tls-cert" in no_cert.output, no_cert.output  # refused: as auth
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("not a certificate\n")
    unusable = ctl("ping", *addr, "--tls-ca", str(bad))
    assert unusable.exit_code == 2 and "cannot use the TLS files" in unusable.output, unusable.output
    assert ctl("ping", *addr, "--tls-ca", str(tmp_path / "missing.pem")).exit_code == 2  # click: no such file
    key_alone = ctl("ping", *addr, "--tls-key", str(pki.key))
    assert key_alone.exit_code == 2 and "needs --tls-cert" in key_alone.output, key_alone.output


def test_help_lists_the_tls_options() -> None:
    shown = ctl("ping", "--help")
    for option in ("--tls ", "--tls-ca FILE", "--tls-cert FILE", "--tls-key FILE", "LOCKGATE_TLS_CA",
                   "LOCKGATE_CLIENT_CERT"):
        assert option in shown.output, option
