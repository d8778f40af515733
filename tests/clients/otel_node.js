// Sends one nested trace with the OpenTelemetry JavaScript SDK's OTLP/HTTP exporter, which
// sends OTLP/JSON:  node otel_node.js http://127.0.0.1:4318/v1/traces
// Prints the trace id (32 hex characters). Exits non-zero if the export is not acknowledged.
const { TracerProvider, SimpleSpanProcessor, StackContextManager } = require('@opentelemetry/sdk-trace');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const api = require('@opentelemetry/api');

const endpoint = process.argv[2];
const exporter = new OTLPTraceExporter({ url: endpoint, timeoutMillis: 30000 });
const results = [];
const original = exporter.export.bind(exporter);
exporter.export = (spans, done) => original(spans, (result) => { results.push(result.code); done(result); });

const provider = new TracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'node-json', 'service.version': '4.5.6' }),
  spanProcessors: [new SimpleSpanProcessor({ exporter })],
});
api.context.setGlobalContextManager(new StackContextManager().enable());
const tracer = provider.getTracer('tracelake.tests.node', '0.0.1');

async function main() {
  let traceId;
  await tracer.startActiveSpan('GET /cart', { kind: api.SpanKind.SERVER }, async (root) => {
    root.setAttribute('http.route', '/cart');
    root.setAttribute('http.response.status_code', 201);
    root.setAttribute('ratio', 0.5);
    root.setAttribute('retry', false);
    root.setAttribute('ids', [1, 2, 3]);
    traceId = root.spanContext().traceId;
    await tracer.startActiveSpan('load cart', { kind: api.SpanKind.CLIENT }, async (child) => {
      child.addEvent('cache.miss', { key: 'cart:42' });
      child.setStatus({ code: api.SpanStatusCode.ERROR, message: 'timeout' });
      child.end();
    });
    root.end();
  });
  await provider.forceFlush();
  await provider.shutdown();
  if (results.length !== 2 || results.some((code) => code !== 0)) {
    console.error(`export failed: ${JSON.stringify(results)}`);
    process.exit(1);
  }
  console.log(traceId);
}

main().catch((e) => { console.error(e); process.exit(1); });
