"""The committed gRPC stubs are what schemas/convert.proto compiles to today."""

from __future__ import annotations

from pathlib import Path

from serving.proto import GENERATED, ROOT, SERVICE, generate
from serving.proto import convert_pb2 as pb


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    for fresh in generate(tmp_path):
        committed = ROOT / "serving" / "proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"serving/proto/{fresh.name} is stale: run python -m serving.proto"
        )
    assert sorted(p.name for p in (tmp_path / "serving" / "proto").iterdir()) == sorted(GENERATED)


def test_service_is_the_one_health_and_reflection_name() -> None:
    assert pb.DESCRIPTOR.package == "s2a.convert.v1"
    assert pb.DESCRIPTOR.services_by_name["Converter"].full_name == SERVICE
    methods = set(pb.DESCRIPTOR.services_by_name["Converter"].methods_by_name)
    assert methods == {"Convert", "ConvertStream", "ModelInfo", "Reload"}
