"""docker-compose.yml's scale-out profile: Redis, two replicas sharing it, nginx in front of
them; names and settings that the balancer and nginx really use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from balancer.config import ENV_PREFIX, Settings

ROOT = Path(__file__).parents[2]


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return found


def scale_out() -> dict[str, Any]:
    return {n: s for n, s in services().items() if "scale-out" in s.get("profiles", [])}


def test_the_profile_has_redis_two_replicas_and_a_front_proxy() -> None:
    assert set(scale_out()) == {"redis", "balancer-a", "balancer-b", "front"}
    # The plain `docker compose up` is unchanged: one balancer on SQLite.
    assert "profiles" not in services()["balancer"]


def test_the_replicas_share_the_profiles_redis() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for name in ("balancer-a", "balancer-b"):
        env = scale_out()[name]["environment"]
        assert set(env) <= known
        store = urlsplit(env["BALANCER_STORE"])
        assert store.scheme == "redis" and store.hostname == "redis"
        assert "--appendonly" in scale_out()["redis"]["command"]


def test_the_front_proxy_sends_to_both_replicas_and_lets_streams_through() -> None:
    front = scale_out()["front"]
    mount = next(v for v in front["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro"))
    conf = (ROOT / mount.split(":")[0]).read_text()
    upstreams = re.findall(r"server (\S+):(\d+)", conf)
    assert sorted(upstreams) == [("balancer-a", "8007"), ("balancer-b", "8007")]
    assert "proxy_buffering off;" in conf
    assert front["ports"] == ["8008:8008"] and "listen 8008;" in conf
