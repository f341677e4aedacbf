"""write_metadata replaces the keys ModelMetadata owns and keeps every other key (temperature, selective, ...)."""

from __future__ import annotations

import json


def test_write_metadata_keeps_keys_it_does_not_own():
    from onnx import ModelProto

    from deploykit.core.contract import SELECTIVE_KEY, TEMPERATURE_KEY
    from deploykit.export.metadata import ModelMetadata, read_metadata, write_metadata

    proto = ModelProto()
    write_metadata(proto, ModelMetadata(steps=["fold_batchnorm"]))
    for key, value in (
        (TEMPERATURE_KEY, '{"temperature": 1.5}'),
        (SELECTIVE_KEY, '{"threshold": 0.3}'),
        ("author", "me"),
    ):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_metadata(proto, ModelMetadata(kind="mc_dropout", steps=["prune(0.80)"]))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props[TEMPERATURE_KEY]) == {"temperature": 1.5} and props["author"] == "me"
    assert json.loads(props[SELECTIVE_KEY]) == {"threshold": 0.3}
    assert read_metadata(proto).steps == ["prune(0.80)"] and read_metadata(proto).kind == "mc_dropout"
    assert len(proto.metadata_props) == len(props)  # each key once: the owned ones were replaced, not duplicated
