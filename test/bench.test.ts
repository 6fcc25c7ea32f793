// The benchmark's pieces: random models of the bench shapes, statistics, the table and the chart.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { benchChartSvg } from '../lib/bench/chart.js';
import { formatBenchReport } from '../lib/bench/report.js';
import { longGenerationTokens, median, runBench, type BenchReport, type Figure } from '../lib/bench/run.js';
import { BENCH_SHAPE_NAMES, BENCH_SHAPES, randomWeights, syntheticVocab } from '../lib/bench/shapes.js';
import { createModel, parameterCount } from '../lib/index.js';

test('the bench shapes are the ones the issue names', () => {
  assert.equal(Math.round(parameterCount(BENCH_SHAPES['char-10M']!) / 1e5), 107);
  assert.equal(Math.round(parameterCount(BENCH_SHAPES['gpt2-124M']!) / 1e6), 124);
});

test('random weights and a synthetic vocabulary make a model that generates', async () => {
  const config = { vocabSize: 300, blockSize: 8, nLayer: 2, nHead: 2, nEmbd: 16, bias: true };
  const vocab = syntheticVocab(300);
  assert.equal(new Set(vocab).size, 300);
  assert.ok(vocab.every((c) => [...c].length === 1 && c.trim() === c));
  const weights = randomWeights(config, 4);
  const std = Math.sqrt(weights.wte.reduce((s, v) => s + v * v, 0) / weights.wte.length);
  assert.ok(Math.abs(std - 0.02) < 0.002, `std ${std}`);
  const model = await createModel(config, weights, vocab, { backend: 'js' });
  const text = await model.generate(vocab[0]!, { maxNewTokens: 20, seed: 1 });
  assert.equal([...text].length, 20);
  model.dispose();
  await assert.rejects(createModel({ ...config, nHead: 3 }, weights, vocab), /nEmbd \(16\) must be a multiple of nHead \(3\)/);
});

test('the bundled model is a bench shape, and an unknown shape is refused by name', async () => {
  assert.deepEqual(BENCH_SHAPE_NAMES, ['default', 'char-10M', 'gpt2-124M']);
  await assert.rejects(runBench({ shapes: ['gpt3'] }), /unknown shape "gpt3" \(shapes: default, char-10M, gpt2-124M\)/);
  assert.equal(longGenerationTokens(BENCH_SHAPES['char-10M']!), 3000);
  assert.equal(longGenerationTokens(BENCH_SHAPES['gpt2-124M']!), 2048);
});

test('median of odd and even counts', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
});

test('the table and the chart show every figure of every engine', () => {
  const f = (median: number, note?: string): Figure => ({ median, runs: [median], unit: 'tokens/s', ...(note ? { note } : {}) });
  const report: BenchReport = {
    date: '2026-11-25T12:00:00.000Z',
    machine: { cpu: 'Test CPU', logicalCores: 2, node: 'v20', platform: 'linux-x64' },
    threads: 2,
    // A busy moment halved two of the peak's runs: the table gives the highest, and the GEMM
    // fraction is against it.
    native: { isa: 'avx512', fmaPeakGflops: { median: 117, runs: [116, 233, 117], unit: 'GFLOP/s' }, fmaPeak: 233 },
    shapes: [
      {
        shape: 'char-10M',
        config: BENCH_SHAPES['char-10M']!,
        parameters: 1,
        weightBytes: 4,
        weights: 'random',
        engines: {
          native: { decodeBatch1: f(1500), decodeBatch8: f(4200), prefillBatch1: f(7100), prefillBatch8: f(8600) },
          js: { decodeBatch1: f(50), decodeBatch8: f(51), prefillBatch1: f(49, '32-token window'), prefillBatch8: f(45) },
        },
        bandwidth: { readGBs: f(60), decodeFraction: { native: 0.1 } },
        nativeF16: { decodeBatch1: f(3000), weightBytes: 20e6 },
      },
      {
        shape: 'default',
        config: { vocabSize: 65, blockSize: 256, nLayer: 6, nHead: 4, nEmbd: 256, bias: true },
        parameters: 1,
        weightBytes: 9.6e6,
        weights: 'bundled',
        engines: { native: { decodeBatch1: f(3300), decodeBatch8: f(9000), prefillBatch1: f(20000), prefillBatch8: f(21000) } },
        bandwidth: { readGBs: f(96), decodeFraction: { native: 0.33 } },
        longGeneration: { tokens: 3000, keep: 128, shift: f(2640), slide: f(120), shiftFraction: 0.8, shiftOverSlide: 22 },
      },
    ],
    gemm: [{ label: '1024³', M: 1024, N: 1024, K: 1024, engines: { native: f(221), js: f(1.1) }, peakFraction: 221 / 233 }],
  };
  const table = formatBenchReport(report);
  assert.match(table, /\| char-10M \| decode, batch 1 \(tokens\/s\) \| 1,500 \| 50\.0 \| 30\.0× \|/);
  assert.match(table, /\| char-10M \| prefill, batch 1 \(tokens\/s\) \| 7,100 \| 49\.0\* \| 144\.9× \|/);
  assert.match(table, /\* char-10M, js: 32-token window/);
  assert.match(table, /Test CPU, 2 logical cores, 2 threads, Node v20, 2026-11-25/);
  assert.match(table, /FMA peak, measured in the same run: 233\.0 GFLOP\/s on 2 threads \(the highest of 3 runs, at the start and at the end\)/);
  assert.match(table, /\| 1024³ \(1024×1024×1024\) \| 221 \| 1\.1 \| 95 % \|/);
  // float16: 3000 tokens/s is 2x the fp32 1500, and 20 MB x 3000/s = 60 GB/s, all of the 60 read.
  assert.match(table, /- char-10M: 3,000 tokens\/s, 2\.00× the fp32 figure, 100\.0 % of the read bandwidth for its 20 MB/);
  // The bundled model: its float16 bytes, and the long generation under both policies.
  assert.match(table, /- default: reading its 10 MB of weights \(float16 matrices\) runs at 96\.0 GB\/s; batch-1 decode \(weight bytes × tokens\/s\) reaches native 33\.0 %/);
  assert.match(table, /- default: 3,000 tokens: 'shift' \(keep 128\) 2,640 tokens\/s, 80 % of its within-window decode; 'slide' 120 tokens\/s; shift is 22\.0× slide/);
  const svg = benchChartSvg(report);
  assert.ok(svg.startsWith('<svg') && svg.trimEnd().endsWith('</svg>'));
  // 8 bars of char-10M, 4 of the bundled model, and its long generation's shift and slide.
  assert.equal((svg.match(/<rect x="210"/g) ?? []).length, 14);
  assert.match(svg, />2,640</);
  assert.match(svg, />4,200</);
});

test('the cuda engine gets a column, a line naming its device, and neither a GEMM column nor a CPU bandwidth fraction', () => {
  const f = (median: number): Figure => ({ median, runs: [median], unit: 'tokens/s' });
  const figures = (k: number) => ({ decodeBatch1: f(100 * k), decodeBatch8: f(400 * k), prefillBatch1: f(1000 * k), prefillBatch8: f(2000 * k) });
  const report: BenchReport = {
    date: '2026-12-01T12:00:00.000Z',
    machine: { cpu: 'Test CPU', logicalCores: 16, node: 'v20', platform: 'linux-x64' },
    threads: 16,
    native: { isa: 'avx512', fmaPeakGflops: { median: 1000, runs: [1000], unit: 'GFLOP/s' }, fmaPeak: 1000 },
    cuda: { device: 0, name: 'Test GPU', computeCapability: '9.0' },
    shapes: [
      {
        shape: 'char-10M',
        config: BENCH_SHAPES['char-10M']!,
        parameters: 1,
        weightBytes: 4,
        weights: 'random',
        engines: { cuda: figures(30), native: figures(3) },
        bandwidth: { readGBs: f(60), decodeFraction: { native: 0.5 } },
      },
    ],
    gemm: [{ label: '1024³', M: 1024, N: 1024, K: 1024, engines: { native: f(500) }, peakFraction: 0.5 }],
  };
  const table = formatBenchReport(report);
  assert.match(table, /^cuda engine: device 0, Test GPU \(compute capability 9\.0\)$/m);
  assert.match(table, /\| shape \| figure \| cuda \| native \| cuda\/native \|/);
  assert.match(table, /\| char-10M \| decode, batch 1 \(tokens\/s\) \| 3,000 \| 300 \| 10\.0× \|/);
  assert.match(table, /\| GEMM \(GFLOP\/s\) \| native \| native \/ FMA peak \|/);
  assert.match(table, /reaches native 50\.0 % of that/);
  const svg = benchChartSvg(report);
  assert.equal((svg.match(/<rect x="210"/g) ?? []).length, 8);
  assert.match(svg, />cuda</);
  assert.match(svg, />3,000</);
});
