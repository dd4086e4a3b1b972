"""What cnm deliberately lacks, through Docker's own clients: each is refused with a message
that says what to do instead, and changes nothing.

- swarm: every swarm-only request gets Docker's 503 "This node is not a swarm manager ..."
  (``docker service ls``, ``docker node ls``, ``docker network create --scope swarm``, the
  SDK's services, nodes, secrets, configs); ``docker swarm leave`` gets Docker's "This node is
  not part of a swarm", which the SDK's ``swarm.leave(force=True)`` accepts, so teardowns work;
- overlay networks without a cluster store: a 400 naming ``cnmd --cluster-store``;
- pulling: ``docker pull`` and the SDK's ``images.pull`` are told how to bring an image
  (``docker save`` + ``cnm load``, or ``docker export`` + ``cnm image import``).
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import TestHost

DOCKER = "/usr/local/bin/docker"
NOT_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
    "connect this node to swarm and try again."
)
NOT_IN_SWARM = "This node is not part of a swarm"
NO_CLUSTER = (
    "overlay networks span hosts and need a cluster store: start cnmd with --cluster-store etcd://HOST:PORT"
)
PULL_WORDS = ("cnm does not pull images", "docker save", "cnm load", "cnm image import")


def docker(host: TestHost, env: dict[str, str], *args: str) -> Any:
    return host.run([DOCKER, *args], env=env, check=False, timeout=60)


def networks(host: TestHost) -> list[str]:
    return sorted(host.cnm("network", "ls", "--format", "{{.Name}}").stdout.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["service", "ls"], NOT_MANAGER),
        (["service", "create", "--name", "web", "busybox", "sleep", "1d"], NOT_MANAGER),
        (["node", "ls"], NOT_MANAGER),
        (["secret", "ls"], NOT_MANAGER),
        (["config", "ls"], NOT_MANAGER),
        (["network", "create", "-d", "overlay", "ov"], NO_CLUSTER),
        (["network", "create", "--scope", "swarm", "ov"], NOT_MANAGER),
        (["network", "create", "--ingress", "-d", "overlay", "ov"], NOT_MANAGER),
        (["swarm", "leave"], NOT_IN_SWARM),
        (["swarm", "leave", "--force"], NOT_IN_SWARM),
    ],
)
def test_docker_cli_swarm_verbs_get_dockers_message(
    clienthost: TestHost, client_env: dict[str, str], argv: list[str], message: str
) -> None:
    before = networks(clienthost)
    out = docker(clienthost, client_env, *argv)
    assert out.returncode != 0
    assert f"Error response from daemon: {message}" in out.stderr, (argv, out.stderr)
    assert networks(clienthost) == before


def test_docker_pull_says_how_to_bring_an_image(clienthost: TestHost, client_env: dict[str, str]) -> None:
    out = docker(clienthost, client_env, "pull", "alpine:3.20")
    assert out.returncode != 0
    assert all(w in out.stderr for w in PULL_WORDS), out.stderr
    assert "alpine" in out.stderr
    images = clienthost.cnm("images", "--format", "{{.Repository}}").stdout.split()
    assert "alpine" not in images


def test_docker_sdk_swarm_calls(clienthost: TestHost) -> None:
    docker_sdk = pytest.importorskip("docker", reason="the Docker SDK comes with the test extras")
    client = docker_sdk.DockerClient(base_url=f"unix://{clienthost.socket_path}", version="1.45")
    try:
        assert client.ping()
        for call in (
            client.services.list,
            client.nodes.list,
            client.secrets.list,
            client.configs.list,
            lambda: client.networks.create("ov", scope="swarm"),
            lambda: client.networks.create("ov", ingress=True),
        ):
            with pytest.raises(docker_sdk.errors.APIError) as err:
                call()
            assert err.value.status_code == 503
            assert err.value.explanation == NOT_MANAGER
        with pytest.raises(docker_sdk.errors.APIError) as err:
            client.networks.create("ov", driver="overlay")
        assert err.value.status_code == 400 and err.value.explanation == NO_CLUSTER
        # the SDK's teardown: leave(force=True) takes Docker's "not part of a swarm" as done
        assert client.swarm.leave(force=True) is True
        with pytest.raises(docker_sdk.errors.APIError) as err:
            client.swarm.leave()
        assert err.value.status_code == 503 and err.value.explanation == NOT_IN_SWARM
        assert "ov" not in [n.name for n in client.networks.list()]
        with pytest.raises(docker_sdk.errors.APIError) as err:
            client.images.pull("alpine", tag="3.20")
        assert all(w in str(err.value.explanation) for w in PULL_WORDS), err.value.explanation
    finally:
        client.close()
