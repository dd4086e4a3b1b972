"""cnm.store.codec: model records -> JSON documents -> the same records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnm.errors import SystemFailure
from cnm.ipam.api import Pool
from cnm.model.container import Container, ContainerConfig, Image, PortBindingRequest
from cnm.model.endpoint import EndpointRecord, EndpointRequest, SandboxRecord
from cnm.model.network import IpamConfig, NetworkRecord
from cnm.model.network_mode import NetworkMode
from cnm.store import codec
from cnm.store.memory import MemoryStore

# a NetworkMode checks its own fields: generate only valid ones (any text parses to one)
st.register_type_strategy(NetworkMode, st.text().filter(lambda s: s != "container:").map(NetworkMode.parse))


def through_json(obj):
    """encode -> JSON text -> decode, as a store does."""
    cls = type(obj)
    return codec.decode(cls, json.loads(json.dumps(codec.encode(obj))))


@settings(max_examples=120, deadline=None)
@given(st.from_type(NetworkRecord))
def test_network_roundtrip(net):
    assert through_json(net) == net


@settings(max_examples=120, deadline=None)
@given(st.from_type(EndpointRecord))
def test_endpoint_roundtrip(ep):
    assert through_json(ep) == ep


@settings(max_examples=60, deadline=None)
@given(st.from_type(Container))
def test_container_roundtrip(container):
    assert through_json(container) == container


@settings(max_examples=50, deadline=None)
@given(st.from_type(SandboxRecord), st.from_type(Image), st.from_type(Pool))
def test_other_records_roundtrip(sandbox, image, pool):
    assert through_json(sandbox) == sandbox
    assert through_json(image) == image
    assert through_json(pool) == pool


def sample_network() -> NetworkRecord:
    return NetworkRecord(
        id="a" * 64,
        name="backend",
        driver="bridge",
        created="2024-01-01T00:00:00.000000000Z",
        ipam=(
            IpamConfig(
                subnet=IPv4Network("10.10.0.0/24"),
                ip_range=IPv4Network("10.10.0.128/25"),
                gateway=IPv4Address("10.10.0.1"),
                aux_addresses={"router": IPv4Address("10.10.0.2")},
            ),
        ),
        subnet=IPv4Network("10.10.0.0/24"),
        gateway=IPv4Address("10.10.0.1"),
        options={"com.docker.network.bridge.enable_icc": "false"},
        labels={"team": "a"},
    )


def test_document_shape_is_plain_json():
    doc = codec.encode(sample_network())
    assert doc["subnet"] == "10.10.0.0/24"
    assert doc["ipam"] == [
        {
            "subnet": "10.10.0.0/24",
            "ip_range": "10.10.0.128/25",
            "gateway": "10.10.0.1",
            "aux_addresses": {"router": "10.10.0.2"},
        }
    ]
    assert doc["ipam_options"] is None and doc["labels"] == {"team": "a"}
    json.dumps(doc)  # nothing exotic left


def test_decoded_types_are_the_declared_ones():
    net = through_json(sample_network())
    assert isinstance(net.ipam, tuple) and isinstance(net.ipam[0], IpamConfig)
    assert isinstance(net.subnet, IPv4Network) and isinstance(net.gateway, IPv4Address)
    assert isinstance(net.options, MappingProxyType)
    with pytest.raises(TypeError):
        net.options["x"] = "y"  # read-only, like the frozen record
    assert net.icc is False
    ep = EndpointRecord(
        id="e",
        network_id="n",
        container_id="c",
        sandbox_id="s",
        name="web",
        address=IPv4Interface("10.10.0.5/24"),
        request=EndpointRequest(ipv4_address=IPv4Address("10.10.0.5"), driver_opts={"k": "v"}),
    )
    back = through_json(ep)
    assert back == ep and isinstance(back.address, IPv4Interface)


def test_nested_mapping_of_tuples_of_dataclasses():
    cfg = ContainerConfig(
        image="busybox",
        port_bindings={"80/tcp": (PortBindingRequest("0.0.0.0", "8080"), PortBindingRequest("", "8081"))},
        networks={"backend": EndpointRequest(aliases=("api",), aliases_given=True)},
        entrypoint=None,
    )
    back = through_json(Container(id="c", name="web", created="t", config=cfg))
    assert back.config.port_bindings["80/tcp"][1] == PortBindingRequest("", "8081")
    assert back.config.networks["backend"].aliases == ("api",)
    assert back.config.entrypoint is None


def test_unknown_keys_ignored_missing_keys_defaulted():
    doc = codec.encode(sample_network())
    doc["added_in_a_later_version"] = {"whatever": 1}
    del doc["labels"], doc["internal"], doc["ipam"][0]["aux_addresses"]
    doc["ipam"][0]["future"] = 3
    net = codec.decode(NetworkRecord, doc)
    assert net.labels == {} and net.internal is False
    assert net.ipam[0].aux_addresses == {}


def test_null_for_non_optional_field_takes_default():
    doc = codec.encode(sample_network())
    doc["options"] = None
    doc["scope"] = None
    net = codec.decode(NetworkRecord, doc)
    assert net.options == {} and net.scope == "local"


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"subnet": "10.0.0.1/24"}, "NetworkRecord.subnet"),
        ({"subnet": 5}, "NetworkRecord.subnet"),
        ({"internal": "yes"}, "NetworkRecord.internal: expected bool"),
        ({"ipam": "x"}, "NetworkRecord.ipam: expected a list"),
        ({"ipam": [{"gateway": "300.1.1.1"}]}, "IpamConfig.gateway"),
        ({"options": {"k": 1}}, "NetworkRecord.options: expected str"),
        ({"id": None}, "NetworkRecord.id"),
    ],
)
def test_bad_documents_raise_system_failure(change, needle):
    doc = codec.encode(sample_network())
    doc.update(change)
    with pytest.raises(SystemFailure, match="cannot decode stored Network") as info:
        codec.decode(NetworkRecord, doc)
    assert needle in str(info.value)


def test_missing_required_field_is_named():
    doc = codec.encode(sample_network())
    del doc["name"]
    with pytest.raises(SystemFailure, match="NetworkRecord.name is missing"):
        codec.decode(NetworkRecord, doc)


def test_int_field_refuses_bool_and_encode_refuses_non_dataclass():
    doc = codec.encode(Container(id="c", name="n", created="t", config=ContainerConfig(image="i")))
    doc["config"]["stop_timeout"] = True
    with pytest.raises(SystemFailure, match="stop_timeout"):
        codec.decode(Container, doc)
    with pytest.raises(TypeError):
        codec.encode({"not": "a dataclass"})


@dataclass(frozen=True)
class _Plain:
    counts: dict[str, int] = field(default_factory=dict)
    ratio: float = 0.5


def test_dict_field_stays_a_dict_and_float_accepts_int():
    back = codec.decode(_Plain, {"counts": {"a": 1}, "ratio": 2})
    assert type(back.counts) is dict and back.ratio == 2.0


async def test_through_a_store():
    store = MemoryStore()
    net = sample_network()
    await store.put(f"network/{net.id}", codec.encode(net))
    entry = await store.get(f"network/{net.id}")
    assert entry is not None and codec.decode(NetworkRecord, entry.doc) == net


# -- documents v0.1.0 wrote ----------------------------------------------------------------

V010_DOCUMENTS = Path(__file__).parent / "data" / "codec_v010_documents.json"
V010_KINDS = {
    "network": NetworkRecord,
    "endpoint": EndpointRecord,
    "sandbox": SandboxRecord,
    "container": Container,
    "container-joined": Container,
    "image": Image,
}


@pytest.mark.parametrize("kind", sorted(V010_KINDS))
def test_v010_documents_decode_to_the_records_they_stood_for(kind):
    """Each document is what v0.1.0's codec wrote for a record of that kind (its models,
    its codec); ``now`` is what this version's decode of it encodes to, as the store
    keeps it (network_mode parsed from its text, later fields at their defaults)."""
    case = json.loads(V010_DOCUMENTS.read_text())[kind]
    cls = V010_KINDS[kind]
    record = codec.decode(cls, case["v0.1.0"])
    assert codec.encode(record) == case["now"]
    assert codec.decode(cls, case["now"]) == record


@dataclass(frozen=True)
class _Node:
    name: str
    children: tuple[_Node, ...] = ()
    weight: complex | None = None  # a type the codec has no rule for


def test_decoders_of_self_referring_classes_and_unsupported_types():
    """Decoders are built once per type: a class naming itself decodes to any depth, and
    a type without a rule fails only when a document has a value for it."""
    tree = _Node("a", (_Node("b", (_Node("c"),)), _Node("d")))
    assert through_json(tree) == tree
    with pytest.raises(SystemFailure, match=r"_Node.children: _Node.weight: unsupported type"):
        codec.decode(_Node, {"name": "a", "children": [{"name": "b", "weight": 1}]})


@dataclass(frozen=True)
class _Empty:
    pass


@dataclass(frozen=True)
class _One:
    only: tuple[IPv4Address, ...] = ()


@dataclass(frozen=True)
class _Mixed:
    name: str
    empty: _Empty
    one: _One
    labels: dict[str, str] = field(default_factory=dict)
    nested: tuple[_One, ...] = ()


def test_encode_of_dataclasses_with_no_one_and_many_fields():
    """The encoder reads a dataclass's fields in one call (none, one or many): the document
    is the same as field by field, in declaration order."""
    value = _Mixed("x", _Empty(), _One((IPv4Address("10.0.0.1"),)), {"a": "b"}, (_One(), _One()))
    doc = codec.encode(value)
    assert doc == {
        "name": "x",
        "empty": {},
        "one": {"only": ["10.0.0.1"]},
        "labels": {"a": "b"},
        "nested": [{"only": []}, {"only": []}],
    }
    assert list(doc) == ["name", "empty", "one", "labels", "nested"]
    assert codec.decode(_Mixed, json.loads(json.dumps(doc))) == value


# -- the unrolled decoders and the packed IP path agree with the general rules --------------


def _general_outcome(cls, doc):
    """``_outcome`` with the unrolled decoders switched off (built anew without them)."""
    real = codec._unrolled
    codec._decoder.cache_clear()
    codec._unrolled = lambda _cls, _plan, general: general
    try:
        return _outcome(cls, doc)
    finally:
        codec._unrolled = real
        codec._decoder.cache_clear()


def _outcome(cls, doc):
    try:
        return codec.decode(cls, doc)
    except SystemFailure as exc:
        return f"error: {exc}"


_ODD_VALUES = [None, True, 0, 7, "", "x", "10.0.0.1", "10.0.0.0/24", "10.0.0.1/24", [], {}, ["a"], {"k": "v"}]


@settings(max_examples=150, deadline=None)
@given(st.from_type(Container), st.data())
def test_unrolled_decoder_matches_the_general_path_records_and_errors(container, data):
    """Whatever a stored document holds (fields missing, null, of another type, at any
    depth), the unrolled decoder gives the general path's record or its error, word for
    word."""
    doc = json.loads(json.dumps(codec.encode(container)))
    target = doc
    for _ in range(data.draw(st.integers(0, 2))):  # a document inside, sometimes
        inner = [k for k, v in target.items() if isinstance(v, dict)]
        if not inner:
            break
        target = target[data.draw(st.sampled_from(sorted(inner)))]
    if target:
        key = data.draw(st.sampled_from(sorted(target)))
        if data.draw(st.booleans()):
            del target[key]
        else:
            target[key] = data.draw(st.sampled_from(_ODD_VALUES))
    assert _outcome(Container, doc) == _general_outcome(Container, doc)


@pytest.mark.parametrize(
    "text",
    ["10.1.2.3", "0.0.0.0", "255.255.255.255", "10.1.2.3/16", "10.1.0.0/16", "10.1.2.3/0", "10.1.2.3/32",
     "10.1.2.3/016", "10.1.2.3/33", "10.1.2.3/255.255.0.0", "10.1.2.3/", "010.1.2.3", "10.1.2", "1.2.3.4.5",
     "10.1.2.256", " 10.1.2.3", "10.1.2.3 ", "10.1.2.3\x00", "１0.1.2.3", "10.1.2.3/１6", "::1", "0x0a.1.2.3"],
)  # fmt: skip
@pytest.mark.parametrize("tp", [IPv4Address, IPv4Interface, IPv4Network])
def test_ip_values_decode_as_ipaddress_reads_them(tp, text):
    """The packed fast path reads what ``ipaddress`` reads, refuses what it refuses."""

    @dataclass(frozen=True)
    class Holder:
        value: tp  # type: ignore[valid-type]

    Holder.__annotations__["value"] = tp  # (a local class: its hint as an object)
    try:
        expected = tp(text)
    except ValueError:
        with pytest.raises(SystemFailure, match=f"invalid {tp.__name__}"):
            codec.decode(Holder, {"value": text})
        return
    got = codec.decode(Holder, {"value": text}).value
    assert type(got) is tp and got == expected and str(got) == str(expected)


def test_ipv6_fields_roundtrip_with_their_family():
    """A dual-stack network and endpoint: the v6 values come back as v6 types, the v4 ones
    as v4, and a v4 text in a v6 field is refused."""
    from ipaddress import IPv6Address, IPv6Interface, IPv6Network

    net = NetworkRecord(
        id="n" * 64,
        name="dual",
        driver="bridge",
        created="2026-12-02T00:00:00.000000000Z",
        enable_ipv6=True,
        subnet=IPv4Network("172.20.0.0/16"),
        gateway=IPv4Address("172.20.0.1"),
        subnet6=IPv6Network("fd00:1::/64"),
        gateway6=IPv6Address("fd00:1::1"),
    )
    assert codec.decode(NetworkRecord, json.loads(json.dumps(codec.encode(net)))) == net
    ep = EndpointRecord(
        id="e" * 64,
        network_id="n" * 64,
        container_id="c" * 64,
        sandbox_id="s" * 64,
        name="web",
        address=IPv4Interface("172.20.0.2/16"),
        address6=IPv6Interface("fd00:1::2/64"),
        gateway6=IPv6Address("fd00:1::1"),
        request=EndpointRequest(ipv6_address=IPv6Address("fd00:1::2")),
    )
    back = codec.decode(EndpointRecord, codec.encode(ep))
    assert back == ep and type(back.address6) is IPv6Interface and type(back.address) is IPv4Interface
    doc = codec.encode(ep)
    doc["address6"] = "172.20.0.2/16"
    with pytest.raises(SystemFailure, match="address6"):
        codec.decode(EndpointRecord, doc)
