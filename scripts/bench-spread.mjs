#!/usr/bin/env node
// The spread of several `microgpt bench --json` reports: for each native figure, the lowest,
// median and highest of the reports' medians, as a Markdown table. On a shared VM one run's
// medians move by tens of percent with the neighbours' load; this shows how far.
//
//   node scripts/bench-spread.mjs docs/bench-runs/*.json
import { readFileSync } from 'node:fs';

const files = process.argv.slice(2);
if (files.length === 0) {
  process.stderr.write('usage: node scripts/bench-spread.mjs REPORT.json...\n');
  process.exit(1);
}
const reports = files.map((f) => JSON.parse(readFileSync(f, 'utf8')));

const FIGURES = [
  ['decodeBatch1', 'decode, batch 1 (tokens/s)'],
  ['decodeBatch8', 'decode, batch 8 (tokens/s)'],
  ['prefillBatch1', 'prefill, batch 1 (tokens/s)'],
  ['prefillBatch8', 'prefill, batch 8 (tokens/s)'],
];

const rows = [];
for (const { shape } of reports[0].shapes) {
  const of = (r) => r.shapes.find((s) => s.shape === shape);
  for (const [key, label] of FIGURES) rows.push([shape, label, reports.map((r) => of(r)?.engines.native?.[key]?.median)]);
  rows.push([shape, 'decode, batch 1, f16 weights (tokens/s)', reports.map((r) => of(r)?.nativeF16?.decodeBatch1.median)]);
  rows.push([shape, 'read bandwidth, weight-sized buffer (GB/s)', reports.map((r) => of(r)?.bandwidth?.readGBs.median)]);
}
for (const { label } of reports[0].gemm) {
  rows.push(['GEMM', `${label} (GFLOP/s)`, reports.map((r) => r.gemm.find((g) => g.label === label)?.engines.native?.median)]);
}

const fmt = (v) => (v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1));
const dates = reports.map((r) => r.date).sort();
const lines = [
  `${reports.length} runs, ${dates[0]} to ${dates[dates.length - 1]}, ${reports[0].machine.cpu}, ${reports[0].threads} threads`,
  '',
  '| shape | figure (native) | lowest | median | highest |',
  '| --- | --- | ---: | ---: | ---: |',
];
for (const [shape, label, values] of rows) {
  const v = values.filter((x) => typeof x === 'number').sort((a, b) => a - b);
  if (v.length === 0) continue;
  const mid = v.length >> 1;
  const median = v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
  lines.push(`| ${shape} | ${label} | ${fmt(v[0])} | ${fmt(median)} | ${fmt(v[v.length - 1])} |`);
}
process.stdout.write(`${lines.join('\n')}\n`);
