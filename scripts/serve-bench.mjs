#!/usr/bin/env node
// Serving benchmark: starts `microgpt serve` (built: npm run build) on a free loopback port in its
// own process, then runs C concurrent streaming clients of N tokens, R rounds each, for every C
// in --concurrency. Per level: aggregate tokens/s (all tokens over the round's wall time, median
// of rounds), and p50/p99 of time to first token (request sent -> first text chunk) and of
// inter-token latency (between consecutive chunks of one stream), over every stream of every round.
//
//   node scripts/serve-bench.mjs [--concurrency 1,8,32] [--tokens 200] [--rounds 5] [--model PATH] [--threads N] [--json]
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { availableParallelism, cpus } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,8,32' },
    tokens: { type: 'string', default: '200' },
    rounds: { type: 'string', default: '5' },
    model: { type: 'string' },
    threads: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const levels = values.concurrency.split(',').map(Number);
const tokens = Number(values.tokens);
const rounds = Number(values.rounds);

const server = spawn(process.execPath, ['dist/lib/cli.js', 'serve', '--port', '0', ...(values.model ? ['--model', values.model] : []), ...(values.threads ? ['--threads', values.threads] : [])], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
const url = await new Promise((resolve, reject) => {
  let out = '';
  server.stdout.on('data', (d) => {
    out += d;
    const m = /^(http:\S+)\n/.exec(out);
    if (m) resolve(m[1]);
  });
  server.on('exit', () => reject(new Error('the server exited')));
});
const modelId = (await (await fetch(new URL('/v1/models', url))).json()).data[0].id;

/** One streaming client: ms to its first text chunk, and the gaps between its chunks. */
function client(seed) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ model: modelId, prompt: '\n', max_tokens: tokens, temperature: 0.8, top_k: 200, seed, stream: true });
    const sent = performance.now();
    const times = [];
    let pending = '';
    const req = request(new URL('/v1/completions', url), { method: 'POST', agent: false }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (d) => {
        pending += d;
        let cut;
        while ((cut = pending.indexOf('\n\n')) >= 0) {
          const event = pending.slice(0, cut);
          pending = pending.slice(cut + 2);
          if (event.startsWith('data: {') && event.includes('"finish_reason":null')) times.push(performance.now());
        }
      });
      res.on('end', () => {
        if (times.length !== tokens) return reject(new Error(`a stream sent ${times.length} chunks, not ${tokens}`));
        resolve({ ttft: (times[0] ?? 0) - sent, gaps: times.slice(1).map((t, i) => t - (times[i] ?? 0)) });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

await Promise.all(Array.from({ length: Math.max(...levels) }, (_, i) => client(900 + i))); // warm-up
const results = [];
for (const c of levels) {
  const rates = [];
  const ttfts = [];
  const gaps = [];
  for (let r = 0; r < rounds; r++) {
    const started = performance.now();
    const streams = await Promise.all(Array.from({ length: c }, (_, i) => client(r * 1000 + i)));
    rates.push((c * tokens) / ((performance.now() - started) / 1000));
    for (const s of streams) {
      ttfts.push(s.ttft);
      gaps.push(...s.gaps);
    }
  }
  ttfts.sort((a, b) => a - b);
  gaps.sort((a, b) => a - b);
  results.push({
    concurrency: c,
    tokensPerSecond: Math.round(median(rates)),
    ttftMs: { p50: +pct(ttfts, 50).toFixed(2), p99: +pct(ttfts, 99).toFixed(2) },
    interTokenMs: { p50: +pct(gaps, 50).toFixed(3), p99: +pct(gaps, 99).toFixed(3) },
  });
}
server.kill('SIGTERM');

const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${availableParallelism()} CPUs`;
if (values.json) {
  process.stdout.write(`${JSON.stringify({ machine, model: modelId, tokens, rounds, results }, null, 2)}\n`);
} else {
  process.stdout.write(`${machine}; ${tokens}-token streams, ${rounds} rounds per level\n\n`);
  process.stdout.write('| concurrent streams | aggregate tokens/s | TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 |\n');
  process.stdout.write('| ---: | ---: | ---: | ---: | ---: | ---: |\n');
  for (const r of results) {
    process.stdout.write(`| ${r.concurrency} | ${r.tokensPerSecond.toLocaleString('en-US')} | ${r.ttftMs.p50} ms | ${r.ttftMs.p99} ms | ${r.interTokenMs.p50} ms | ${r.interTokenMs.p99} ms |\n`);
  }
}
