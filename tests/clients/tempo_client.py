"""Reads a trace from tracelake's Tempo API as Grafana does (v2 protobuf, v1 on 404) and
decodes it with the Python protobuf runtime, the messages declared here from Tempo's and
OTLP's field numbers (an implementation independent of tracelake's prost code).

Usage: tempo_client.py HOST:PORT TRACE_ID  -> prints "service<TAB>name<TAB>has_parent" lines."""
import sys
import urllib.error
import urllib.request

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto


def build():
    file = descriptor_pb2.FileDescriptorProto(name="tempo_test.proto", package="t", syntax="proto3")

    def message(name, fields):
        m = file.message_type.add(name=name)
        for number, fname, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = ".t." + type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("AnyValue", [(1, "string_value", F.TYPE_STRING, opt, None),
                         (2, "bool_value", F.TYPE_BOOL, opt, None),
                         (3, "int_value", F.TYPE_INT64, opt, None),
                         (4, "double_value", F.TYPE_DOUBLE, opt, None)])
    message("KeyValue", [(1, "key", F.TYPE_STRING, opt, None),
                         (2, "value", F.TYPE_MESSAGE, opt, "AnyValue")])
    message("Resource", [(1, "attributes", F.TYPE_MESSAGE, rep, "KeyValue")])
    message("Span", [(1, "trace_id", F.TYPE_BYTES, opt, None),
                     (2, "span_id", F.TYPE_BYTES, opt, None),
                     (4, "parent_span_id", F.TYPE_BYTES, opt, None),
                     (5, "name", F.TYPE_STRING, opt, None),
                     (6, "kind", F.TYPE_INT32, opt, None),
                     (7, "start_time_unix_nano", F.TYPE_FIXED64, opt, None),
                     (8, "end_time_unix_nano", F.TYPE_FIXED64, opt, None),
                     (9, "attributes", F.TYPE_MESSAGE, rep, "KeyValue")])
    message("ScopeSpans", [(2, "spans", F.TYPE_MESSAGE, rep, "Span")])
    message("ResourceSpans", [(1, "resource", F.TYPE_MESSAGE, opt, "Resource"),
                              (2, "scope_spans", F.TYPE_MESSAGE, rep, "ScopeSpans")])
    message("Trace", [(1, "resource_spans", F.TYPE_MESSAGE, rep, "ResourceSpans")])
    message("TraceByIDResponse", [(1, "trace", F.TYPE_MESSAGE, opt, "Trace"),
                                  (3, "status", F.TYPE_INT32, opt, None),
                                  (4, "message", F.TYPE_STRING, opt, None)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    get = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName("t." + n))
    return get("TraceByIDResponse"), get("Trace")


def fetch(url):
    request = urllib.request.Request(url, headers={"Accept": "application/protobuf"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def main():
    address, trace_id = sys.argv[1], sys.argv[2]
    by_id, trace_class = build()
    try:
        answer = by_id.FromString(fetch(f"http://{address}/api/v2/traces/{trace_id}"))
        trace = answer.trace
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        trace = trace_class.FromString(fetch(f"http://{address}/api/traces/{trace_id}"))
    for rs in trace.resource_spans:
        service = next((kv.value.string_value for kv in rs.resource.attributes
                        if kv.key == "service.name"), "")
        for ss in rs.scope_spans:
            for span in ss.spans:
                assert span.trace_id.hex() == trace_id, (span.trace_id.hex(), trace_id)
                assert span.end_time_unix_nano >= span.start_time_unix_nano
                print(f"{service}\t{span.name}\t{1 if span.parent_span_id else 0}")


if __name__ == "__main__":
    main()
