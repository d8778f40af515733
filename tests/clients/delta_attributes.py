"""Reads the attributes of one span back with Python `deltalake` (delta-rs's reader, not
tracelake), decoding the storage layout as docs/architecture.md describes it:
`python delta_attributes.py TABLE_PATH SPAN_ID` prints one line per attribute of the span,
`key=type:value`, arrays as `[type:value,...]`, doubles as Python's repr, bytes as hex."""
import base64
import json
import os
import sys

from deltalake import DeltaTable

table = DeltaTable(sys.argv[1]).to_pyarrow_table()
rows = [r for r in table.to_pylist() if r["span_id"] == sys.argv[2]]
assert len(rows) == 1, f"{len(rows)} spans with id {sys.argv[2]}"


def scalar(value):
    kind = value["type"]
    if kind == "string":
        return f"string:{value['string_value']}"
    if kind == "int":
        return f"int:{value['int_value']}"
    if kind == "double":
        return f"double:{value['double_value']!r}"
    if kind == "bool":
        return f"bool:{str(value['bool_value']).lower()}"
    if kind == "bytes":
        return f"bytes:{value['bytes_value'].hex()}"
    raise ValueError(f"unknown type {kind!r}")


def element(element):
    """An array element of the lean layout's JSON."""
    value = dict(element)
    if "double_value" in value:
        value["double_value"] = float(value["double_value"])
    if "bytes_value" in value:
        value["bytes_value"] = base64.b64decode(value["bytes_value"])
    return scalar(value)


def attribute(value):
    if value["type"] != "array":
        return scalar(value)
    if "array_value" in value and value["array_value"] is not None:
        # The nested layout (tables created before the lean one).
        return "[" + ",".join(scalar(e) for e in value["array_value"]) + "]"
    return "[" + ",".join(element(e) for e in json.loads(value["bytes_value"])) + "]"


for key, value in rows[0]["attributes"]:
    print(f"{key}={attribute(value)}")

# deltalake's native threads can abort the interpreter at shutdown ("terminate called without
# an active exception", seen about one run in six): flush and leave without the teardown.
sys.stdout.flush()
os._exit(0)
