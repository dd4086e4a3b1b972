"""The Docker SDK for Python on IPv6 networks, as docker-py's own integration tests do it
(``test_create_with_ipv6_address``, ``test_connect_with_ipv6_address``,
``test_create_network_ipv6_enabled``): a network with a v6 pool, a container created with
a fixed v6 address, and one reconnected with another."""

from __future__ import annotations

import pytest
from harness import TestHost


def _client(clienthost: TestHost):  # type: ignore[no-untyped-def]
    docker_sdk = pytest.importorskip("docker", reason="the Docker SDK comes with the test extras")
    return docker_sdk, docker_sdk.APIClient(base_url=f"unix://{clienthost.socket_path}", version="1.45")


def test_sdk_create_with_ipv6_address(clienthost: TestHost) -> None:
    docker_sdk, api = _client(clienthost)
    types = docker_sdk.types
    try:
        net = api.create_network(
            "sdk6a",
            ipam=types.IPAMConfig(driver="default", pool_configs=[types.IPAMPool(subnet="2001:389::/64")]),
            enable_ipv6=True,
        )
        assert api.inspect_network(net["Id"])["EnableIPv6"] is True
        container = api.create_container(
            "busybox",
            ["sleep", "1d"],
            name="sdk6a-c",
            host_config=api.create_host_config(network_mode="sdk6a"),
            networking_config=api.create_networking_config(
                {"sdk6a": api.create_endpoint_config(ipv6_address="2001:389::f00d")}
            ),
        )
        api.start(container)
        settings = api.inspect_container(container)["NetworkSettings"]["Networks"]["sdk6a"]
        assert settings["IPAMConfig"]["IPv6Address"] == "2001:389::f00d"
        assert settings["GlobalIPv6Address"] == "2001:389::f00d"
        assert settings["IPv6Gateway"] == "2001:389::1"
    finally:
        _cleanup(api, "sdk6a")
        api.close()


def test_sdk_connect_with_ipv6_address(clienthost: TestHost) -> None:
    docker_sdk, api = _client(clienthost)
    types = docker_sdk.types
    try:
        api.create_network(
            "sdk6b",
            ipam=types.IPAMConfig(
                driver="default",
                pool_configs=[
                    types.IPAMPool(subnet="2001:390::/64", iprange="2001:390::/96", gateway="2001:390::ffff")
                ],
            ),
            enable_ipv6=True,
        )
        container = api.create_container(
            "busybox",
            ["sleep", "1d"],
            name="sdk6b-c",
            host_config=api.create_host_config(network_mode="sdk6b"),
        )
        api.start(container)
        first = api.inspect_container(container)["NetworkSettings"]["Networks"]["sdk6b"]
        assert first["GlobalIPv6Address"] == "2001:390::1"  # the gateway is ::ffff here
        assert first["IPv6Gateway"] == "2001:390::ffff"
        api.disconnect_container_from_network(container, "sdk6b")
        api.connect_container_to_network(container, "sdk6b", ipv6_address="2001:390::f00d")
        settings = api.inspect_container(container)["NetworkSettings"]["Networks"]["sdk6b"]
        assert settings["IPAMConfig"]["IPv6Address"] == "2001:390::f00d"
        assert settings["GlobalIPv6Address"] == "2001:390::f00d"
        # outside the network's v6 subnet: Docker's 400, nothing changes
        api.disconnect_container_from_network(container, "sdk6b")
        with pytest.raises(docker_sdk.errors.APIError) as err:
            api.connect_container_to_network(container, "sdk6b", ipv6_address="2001:391::1")
        assert err.value.status_code == 400
        assert "sdk6b" not in api.inspect_container(container)["NetworkSettings"]["Networks"]
    finally:
        _cleanup(api, "sdk6b")
        api.close()


def _cleanup(api, network: str) -> None:  # type: ignore[no-untyped-def]
    """The test's container (named after its network) and the network, if they exist."""
    for c in api.containers(all=True, filters={"name": f"{network}-c"}):
        api.remove_container(c["Id"], force=True)
    for n in api.networks(names=[network]):
        api.remove_network(n["Id"])


DOCKER = "/usr/local/bin/docker"


def test_docker_cli_dual_stack_network(clienthost: TestHost, client_env: dict[str, str]) -> None:
    """docker 28's own CLI: network create --ipv6 with a subnet of each family, run --ip6,
    network ls's IPv6 column, inspect's v6 fields; a v6 subnet without --ipv6 is refused."""

    def docker(*args: str, check: bool = True):  # type: ignore[no-untyped-def]
        return clienthost.run([DOCKER, *args], env=client_env, check=check, timeout=90)

    try:
        docker(
            "network", "create", "--ipv6", "--subnet", "10.71.0.0/24", "--subnet", "2001:db8:71::/64", "cli6"
        )
        assert docker(
            "network", "ls", "--filter", "name=cli6", "--format", "{{.Name}} {{.IPv6}}"
        ).stdout.split() == [
            "cli6",
            "true",
        ]
        subnets = docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", "cli6")
        assert subnets.stdout.split() == ["10.71.0.0/24", "2001:db8:71::/64"]
        docker(
            "run",
            "-d",
            "--name",
            "cli6-c",
            "--network",
            "cli6",
            "--ip6",
            "2001:db8:71::71",
            "busybox",
            "sleep",
            "1d",
        )
        fields = docker(
            "inspect",
            "-f",
            '{{with index .NetworkSettings.Networks "cli6"}}{{.GlobalIPv6Address}}/{{.GlobalIPv6PrefixLen}} '
            "{{.IPv6Gateway}} {{.IPAMConfig.IPv6Address}}{{end}}",
            "cli6-c",
        )
        assert fields.stdout.split() == ["2001:db8:71::71/64", "2001:db8:71::1", "2001:db8:71::71"]
        refused = docker("network", "create", "--subnet", "2001:db8:72::/64", "cli6-no", check=False)
        assert refused.returncode != 0 and "IPv6 is not enabled" in refused.stderr
        assert "cli6-no" not in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    finally:
        docker("rm", "-f", "cli6-c", check=False)
        docker("network", "rm", "cli6", check=False)
