"""Sends one nested trace with the OpenTelemetry Python SDK's own OTLP exporter.

    python otel_python.py http  http://127.0.0.1:4318/v1/traces
    python otel_python.py grpc  127.0.0.1:4317

Prints the trace id (32 hex characters) and the linked trace id on one line. The HTTP
exporter sends protobuf with gzip; the gRPC exporter sends gzip too. Exits non-zero if the
export is not acknowledged.
"""
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

protocol, endpoint = sys.argv[1], sys.argv[2]
if protocol == "http":
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint, compression=Compression.Gzip, timeout=30)
else:
    from grpc import Compression
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=endpoint, insecure=True, compression=Compression.Gzip, timeout=30
    )

results = []


class Recording(SimpleSpanProcessor):
    """A simple processor that remembers whether each export was acknowledged."""

    def on_end(self, span):
        results.append(self.span_exporter.export((span,)))


provider = TracerProvider(
    resource=Resource.create({"service.name": f"py-{protocol}", "deployment.environment": "test"})
)
provider.add_span_processor(Recording(exporter))
tracer = provider.get_tracer("tracelake.tests", "1.2.3")

with tracer.start_as_current_span("linked-root") as other:
    linked = other.get_span_context()

with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as root:
    root.set_attribute("http.route", "/checkout")
    root.set_attribute("http.response.status_code", 200)
    root.set_attribute("sampling.ratio", 0.25)
    root.set_attribute("cache.hit", True)
    root.set_attribute("tags", ["a", "b"])
    with tracer.start_as_current_span(
        "charge", kind=SpanKind.CLIENT, links=[Link(linked, {"link.kind": "retry-of"})]
    ) as child:
        child.add_event("retry", {"attempt": 2})
        with tracer.start_as_current_span("db.query", kind=SpanKind.INTERNAL) as grandchild:
            grandchild.set_attribute("db.rows", 3)
        child.set_status(Status(StatusCode.ERROR, "card declined"))
    trace_id = root.get_span_context().trace_id

provider.shutdown()
if any(r != SpanExportResult.SUCCESS for r in results) or len(results) != 4:
    print(f"export failed: {results}", file=sys.stderr)
    sys.exit(1)
print(f"{trace_id:032x} {linked.trace_id:032x}")
