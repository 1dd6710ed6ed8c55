"""The pieces of app/hostguard.py: Host parsing, the policy, same-origin, the setting."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.hostguard import HostPolicy, merged_setting, same_origin, split_host
from app.settings import Settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8000", ("localhost", 8000)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::1]", ("::1", None)),
        ("gan.example.com.", ("gan.example.com", None)),
        ("::1", ("::1", None)),
        ("host:port", ("", None)),
        ("[::1]x", ("", None)),
        ("[::1", ("", None)),
        ("", ("", None)),
    ],
)
def test_split_host(value: str, expected: tuple[str, int | None]) -> None:
    assert split_host(value) == expected


def test_the_policy_serves_loopback_names_and_the_settings_entries() -> None:
    policy = HostPolicy.parse("gan.example.com, *.lab.example,10.0.0.5:8000")
    for name in (
        "localhost",
        "127.0.0.1",
        "::1",
        "gan.example.com",
        "a.lab.example",
        "b.a.lab.example",
        "10.0.0.5",
    ):
        assert policy.listed(name), name
    for name in (
        "",
        "evil.example",
        "lab.example",
        "gan.example.com.evil",
        "127.0.0.2",
        "localhost.evil.example",
        "xlab.example",
    ):
        assert not policy.listed(name), name
    assert not policy.any_host and HostPolicy.parse("*").any_host
    assert policy.describe() == (
        "localhost, 127.0.0.1, [::1], 10.0.0.5, gan.example.com, *.lab.example"
    )


def test_a_malformed_entry_stops_the_settings_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"(?s)allowed_hosts.*'gan:example:x' is not a host"):
        Settings(allowed_hosts="ok.example,gan:example:x")


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://localhost:8000", "LOCALHOST:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("https://gan.example.com", "gan.example.com", True),  # TLS ends at a proxy
        ("https://gan.example.com", "gan.example.com:443", True),
        ("http://gan.example.com", "gan.example.com:80", True),
        ("http://127.0.0.1:8000/jobs/new?x=1", "127.0.0.1:8000", True),  # a Referer
        ("http://127.0.0.1:8001", "127.0.0.1:8000", False),
        ("http://localhost:8000", "127.0.0.1:8000", False),
        ("http://evil.example", "127.0.0.1:8000", False),
        ("https://gan.example.com", "gan.example.com:8000", False),
        ("null", "127.0.0.1:8000", False),
        ("file:///tmp/x.html", "127.0.0.1:8000", False),
        ("http://127.0.0.1:99999", "127.0.0.1:8000", False),
        ("", "127.0.0.1:8000", False),
    ],
)
def test_same_origin(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same


def test_merged_setting_adds_each_name_once() -> None:
    assert merged_setting("a.example, b.example", ["b.example", "c"]) == "a.example,b.example,c"
    assert merged_setting("", ["vm"]) == "vm"


def test_a_request_without_a_host_is_refused(client: TestClient) -> None:
    answer = client.get("/api/jobs", headers={"host": ""})
    assert answer.status_code == 400
    assert "Host (none) is not served" in answer.json()["detail"]
