"""Drives tracelake's Tempo API as Grafana's Tempo data source does, and prints what it got as
tab-separated lines for the test to compare:

    tempo_client.py HOST:PORT trace ID     v2 protobuf (v1 on 404), decoded by the Python
                                           protobuf runtime with the messages declared here
                                           from Tempo's and OTLP's field numbers (independent
                                           of tracelake's prost code): service, name, has_parent
    tempo_client.py HOST:PORT search Q     /api/search?q= over the last hour: trace id, root
                                           service, root name, the matched spans' names
    tempo_client.py HOST:PORT tags         /api/v2/search/tags (v1 on 404): scope, tag
    tempo_client.py HOST:PORT values TAG   /api/v2/search/tag/<TAG, encoded twice>/values
                                           (v1 on 404): type, value
    tempo_client.py HOST:PORT metrics Q    /api/metrics/query_range, step 60 s: the labels
                                           (key=value, sorted), the sum of the samples

Windows are unix seconds, the last hour to a minute ahead, as Grafana sends them."""
import json
import sys
import time
import urllib.error
import urllib.parse
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


def fetch(url, accept="application/protobuf"):
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def fetch_json(url):
    return json.loads(fetch(url, "application/json"))


def window():
    now = int(time.time())
    return {"start": str(now - 3600), "end": str(now + 60)}


def v2_then_v1(v2, v1):
    try:
        return "v2", fetch_json(v2)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        return "v1", fetch_json(v1)


def search(address, query):
    params = urllib.parse.urlencode({"q": query, "limit": "20", "spss": "3", **window()})
    answer = fetch_json(f"http://{address}/api/search?{params}")
    for trace in answer["traces"]:
        # 64-bit integers arrive as JSON strings (the protobuf JSON mapping).
        assert isinstance(trace["startTimeUnixNano"], str), trace
        names = []
        for span_set in trace.get("spanSets", []):
            assert isinstance(span_set["matched"], int), span_set
            for span in span_set["spans"]:
                assert isinstance(span["durationNanos"], str), span
                names.append(span["name"])
        print(f"{trace['traceID']}\t{trace['rootServiceName']}\t{trace['rootTraceName']}\t"
              f"{','.join(sorted(names))}")


def tags(address):
    params = urllib.parse.urlencode(window())
    version, answer = v2_then_v1(f"http://{address}/api/v2/search/tags?{params}",
                                 f"http://{address}/api/search/tags?{params}")
    if version == "v2":
        for scope in answer["scopes"]:
            for tag in scope["tags"]:
                print(f"{scope['name']}\t{tag}")
    else:
        for tag in answer["tagNames"]:
            print(f"\t{tag}")


def values(address, tag):
    # Grafana encodes the tag name twice.
    twice = urllib.parse.quote(urllib.parse.quote(tag, safe=""), safe="")
    params = urllib.parse.urlencode(window())
    version, answer = v2_then_v1(f"http://{address}/api/v2/search/tag/{twice}/values?{params}",
                                 f"http://{address}/api/search/tag/{twice}/values?{params}")
    if version == "v2":
        for value in answer["tagValues"]:
            print(f"{value['type']}\t{value['value']}")
    else:
        for value in answer["tagValues"]:
            print(f"string\t{value}")


def metrics(address, query):
    params = urllib.parse.urlencode({"q": query, "step": "60", **window()})
    answer = fetch_json(f"http://{address}/api/metrics/query_range?{params}")
    for series in answer["series"]:
        labels = []
        for label in series["labels"]:
            value = label["value"]
            labels.append(f"{label['key']}={next(iter(value.values()))}")
        total = 0.0
        for sample in series["samples"]:
            assert isinstance(sample["timestampMs"], str), sample
            total += sample["value"]
        print(f"{','.join(sorted(labels))}\t{total:g}")


def trace(address, trace_id):
    by_id, trace_class = build()
    params = urllib.parse.urlencode(window())
    try:
        answer = by_id.FromString(fetch(f"http://{address}/api/v2/traces/{trace_id}?{params}"))
        found = answer.trace
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        found = trace_class.FromString(fetch(f"http://{address}/api/traces/{trace_id}?{params}"))
    for rs in found.resource_spans:
        service = next((kv.value.string_value for kv in rs.resource.attributes
                        if kv.key == "service.name"), "")
        for ss in rs.scope_spans:
            for span in ss.spans:
                assert span.trace_id.hex() == trace_id, (span.trace_id.hex(), trace_id)
                assert span.end_time_unix_nano >= span.start_time_unix_nano
                print(f"{service}\t{span.name}\t{1 if span.parent_span_id else 0}")


def main():
    address, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "trace":
        trace(address, args[0])
    elif mode == "search":
        search(address, args[0])
    elif mode == "tags":
        tags(address)
    elif mode == "values":
        values(address, args[0])
    elif mode == "metrics":
        metrics(address, args[0])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
