"""The launcher's decisions that need no server: which hosts are loopback, what the command line
restricts, where the admin key lives and who gets it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from coded_serving.deployment.launcher import (
    ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_ADMIN_HEADER, AdminKey, ServerConfig, TritonServer, _check_port_free,
    _write_private, admin_key_for, is_loopback, key_path,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    assert ServerConfig(host=host).loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "2001:db8::1"])
def test_hosts_beyond_loopback(host):
    assert not is_loopback(host)


def test_an_unresolvable_host_is_named():
    with pytest.raises(ValueError, match="cannot resolve host 'no-such-host.invalid'"):
        is_loopback("no-such-host.invalid")
    with pytest.raises(ValueError, match="cannot resolve host"):
        _check_port_free("no-such-host.invalid", 8000)


def _flags(config: ServerConfig, key: str = "k3y") -> dict[str, str]:
    command = TritonServer(config).command(Path("/backends"), key)
    return dict(arg[2:].split("=", 1) for arg in command[1:])


def test_model_control_is_restricted_on_loopback_too():
    flags = _flags(ServerConfig())
    expected = f"model-repository,model-config,shared-memory,trace,logging:{ADMIN_HEADER}=k3y"
    assert flags["http-restricted-api"] == flags["grpc-restricted-protocol"] == expected


def test_beyond_loopback_statistics_need_the_key_and_metrics_stay_on_loopback():
    flags = _flags(ServerConfig(host="0.0.0.0"))
    assert flags["http-restricted-api"].split(":")[0].split(",")[-1] == "statistics"
    assert flags["http-address"] == "0.0.0.0"
    assert flags["metrics-address"] == "127.0.0.1"


def test_ipv6_addresses_as_each_frontend_takes_them():
    config = ServerConfig(host="::1", metrics_host="::1", http_port=1, grpc_port=2, metrics_port=3)
    flags = _flags(config)
    assert (flags["http-address"], flags["grpc-address"], flags["metrics-address"]) == ("ipv6:::1", "[::1]", "ipv6:::1")
    assert (config.http_url, config.grpc_url, config.metrics_url) == ("[::1]:1", "[::1]:2", "http://[::1]:3/metrics")


def test_key_file_is_private_and_replaces_a_stale_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = key_path(8123)
    path.parent.mkdir(parents=True)
    path.write_text("stale")
    path.chmod(0o644)
    _write_private(path, "fresh")
    assert path.read_text() == "fresh"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_local_key_file_goes_to_local_servers_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    _write_private(key_path(8123), "local")
    for url in ("127.0.0.1:8123", "localhost:8123", "[::1]:8123", "http://0.0.0.0:8123"):
        assert admin_key_for(url) == "local", url
    assert admin_key_for("127.0.0.1:8124") is None
    assert admin_key_for("192.0.2.1:8123") is None
    monkeypatch.setenv(ADMIN_KEY_ENV, "remote")
    assert admin_key_for("192.0.2.1:8123") == "remote"
    assert admin_key_for("127.0.0.1:8123") == "local"


class _Request:
    def __init__(self, headers):
        self.headers = headers


@pytest.mark.parametrize("grpc, header", [(False, ADMIN_HEADER), (True, "triton-grpc-protocol-coded-serving-admin-key")])
def test_the_client_plugin_sends_the_header_each_frontend_checks(grpc, header):
    caller_headers = {"other": "1"}
    request = _Request(caller_headers)
    AdminKey("k3y", grpc=grpc)(request)
    assert request.headers == {"other": "1", header: "k3y"}
    assert caller_headers == {"other": "1"}  # the caller's dict is not changed
    assert GRPC_ADMIN_HEADER == "triton-grpc-protocol-coded-serving-admin-key"
