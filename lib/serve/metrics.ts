/**
 * The server's Prometheus metrics, in a registry of its own (so two handlers in one process do not
 * collide, and the host application's default registry is left alone).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Model } from '../model.js';

/** Seconds; a token of the bundled model takes about a millisecond, a prefill tens. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10];

export class ServeMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'microgpt_http_requests_total',
    help: 'HTTP requests answered, by route and status',
    labelNames: ['route', 'status'] as const,
    registers: [this.registry],
  });
  readonly tokens = new Counter({ name: 'microgpt_generated_tokens_total', help: 'Tokens generated', registers: [this.registry] });
  readonly timeToFirstToken = new Histogram({
    name: 'microgpt_time_to_first_token_seconds',
    help: 'From the start of a generation (after queueing) to its first token',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly interTokenLatency = new Histogram({
    name: 'microgpt_inter_token_latency_seconds',
    help: 'Between consecutive tokens of one generation',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly queueLength = new Gauge({ name: 'microgpt_queue_length', help: 'Requests waiting for a generation slot', registers: [this.registry] });
  readonly inFlight = new Gauge({ name: 'microgpt_generations_in_flight', help: 'Requests generating now', registers: [this.registry] });
  private readonly modelInfo = new Gauge({
    name: 'microgpt_model_info',
    help: 'The loaded model and engine (value 1)',
    labelNames: ['model', 'backend', 'precision', 'block_size', 'vocab_size', 'parameters'] as const,
    registers: [this.registry],
  });

  /** Registers the model's facts and the engine's own counters, read at each scrape. */
  setModel(model: Model, modelId: string): void {
    this.modelInfo.set(
      {
        model: modelId,
        backend: model.backend,
        precision: model.precision,
        block_size: String(model.config.blockSize),
        vocab_size: String(model.config.vocabSize),
        parameters: String(model.parameterCount),
      },
      1,
    );
    const runtime = model.runtimeForDiagnostics as unknown as {
      liveSessions?: number;
      batchStats?: { passes: number; requests: number; largestBatch: number; busySeconds: number };
    };
    if (typeof runtime.liveSessions === 'number') {
      new Gauge({
        name: 'microgpt_engine_sessions_live',
        help: 'Sessions (KV caches in use) open in the engine',
        registers: [this.registry],
        collect() {
          this.set(runtime.liveSessions ?? 0);
        },
      });
    }
    if (runtime.batchStats !== undefined) {
      const stat = (name: string, help: string, read: (s: NonNullable<typeof runtime.batchStats>) => number): void => {
        new Gauge({
          name,
          help,
          registers: [this.registry],
          collect() {
            try {
              const s = runtime.batchStats;
              if (s !== undefined) this.set(read(s));
            } catch {
              // a disposed engine has no stats
            }
          },
        });
      };
      stat('microgpt_engine_passes', 'Forward passes the engine ran', (s) => s.passes);
      stat('microgpt_engine_requests', 'Prefills and decode steps those passes served', (s) => s.requests);
      stat('microgpt_engine_largest_batch', 'Most requests served by one pass', (s) => s.largestBatch);
      stat('microgpt_engine_busy_seconds', 'Seconds the engine spent in passes', (s) => s.busySeconds);
    }
  }
}
