# Benchmark tiers (see docs/benchmarks.md).
#
#   make bench.core           Tier 0: the pull-request smoke suite, then bench_compare against
#                             the committed baselines in bench_metrics/ (fails on more
#                             object-store requests or different rows; reports timings)
#   make bench.baseline       Tier 0, then copy the artifacts into bench_metrics/
#   make bench.extended       Tier 1: 1M and 10M-span tables, trace_tree vs WITH RECURSIVE at 1M,
#                             1M spans in 24, 2,000 and 10,000 files, INSERT ... SELECT vs COPY,
#                             open/refresh at 10 and 1,000 commits, ingest of 1M spans, OTLP/HTTP
#                             ingest with 8 concurrent exporters, one process vs a Ballista cluster,
#                             search by attributes on the demo generator's spans (group `search`),
#                             the Tempo HTTP API over loopback (group `tempo_api`), compaction of
#                             a 5.16M-span day in 150 files (group `compaction`)
#   make bench.certification  Tier 2: against a latency-injected object store and an S3-protocol
#                             server on loopback (moto from PyPI, installed and started here;
#                             needs python3 and curl), built with the `s3` feature
#
# PROFILE selects the cargo profile (default `bench`, i.e. release). CI runs Tier 0 with
# PROFILE=dev to reuse the test build: counts and rows are the same, timings are not
# meaningful there and are only reported.

PROFILE ?= bench
CURRENT ?= target/bench-current
# bench_compare is the crate's binary that cargo builds with every bench (as for integration
# tests): with the dev-dependencies' features, so it reuses the dependencies the benches were
# built with instead of compiling them again.
PROFILE_DIR = $(if $(filter dev test,$(PROFILE)),debug,release)
BENCH_COMPARE = target/$(PROFILE_DIR)/bench_compare
CRITERION_ARGS ?= --warm-up-time 1 --measurement-time 3
CARGO ?= cargo

.PHONY: bench.core bench.baseline bench.extended bench.certification

bench.core:
	rm -rf $(CURRENT) && mkdir -p $(CURRENT)
	TRACELAKE_BENCH_TIER=0 TRACELAKE_BENCH_METRICS=$(CURRENT) \
		$(CARGO) bench --profile $(PROFILE) --bench core -- $(CRITERION_ARGS)
	$(CARGO) bench --profile $(PROFILE) --no-run --bench core
	$(BENCH_COMPARE) bench_metrics $(CURRENT)

bench.baseline: bench.core
	cp $(CURRENT)/*.json bench_metrics/

bench.extended:
	mkdir -p target/bench-extended
	TRACELAKE_BENCH_TIER=1 TRACELAKE_BENCH_METRICS=target/bench-extended \
		$(CARGO) bench --profile $(PROFILE) --bench lookup --bench search --bench files --bench insert --bench lifecycle --bench compaction --bench otlp --bench distributed -- $(CRITERION_ARGS)

S3_PORT ?= 5077
S3_BUCKET ?= tracelake-bench

bench.certification:
	mkdir -p target/bench-certification
	benches/s3-server.sh start $(S3_PORT) $(S3_BUCKET)
	TRACELAKE_BENCH_TIER=2 TRACELAKE_BENCH_METRICS=target/bench-certification \
		TRACELAKE_S3_ENDPOINT=http://127.0.0.1:$(S3_PORT) TRACELAKE_S3_BUCKET=$(S3_BUCKET) \
		$(CARGO) bench --profile $(PROFILE) --features s3 --bench certification -- $(CRITERION_ARGS); \
		status=$$?; benches/s3-server.sh stop; exit $$status
