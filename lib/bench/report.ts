import type { BackendName } from '../backends/types.js';
import type { BenchReport, Figure } from './run.js';

/** The benchmark as a Markdown table (what the README shows). */
export function formatBenchReport(report: BenchReport): string {
  const engines = [...new Set(report.shapes.flatMap((s) => Object.keys(s.engines)))] as BackendName[];
  const lines: string[] = [];
  lines.push(`${report.machine.cpu}, ${report.machine.logicalCores} logical cores, ${report.threads} threads, Node ${report.machine.node}, ${report.date.slice(0, 10)}`);
  if (report.native !== undefined) {
    lines.push(`native engine: ${report.native.isa} kernels; this CPU's FMA peak, measured in the same run: ${report.native.fmaPeak.toFixed(1)} GFLOP/s on ${report.threads} threads (the highest of ${report.native.fmaPeakGflops.runs.length} runs, at the start and at the end)`);
  }
  if (report.cuda !== undefined) {
    lines.push(`cuda engine: device ${report.cuda.device}, ${report.cuda.name} (compute capability ${report.cuda.computeCapability})`);
  }
  lines.push('');
  lines.push(`| shape | figure | ${engines.join(' | ')} |${engines.length > 1 ? ` ${engines[0]}/${engines[engines.length - 1]} |` : ''}`);
  lines.push(`| --- | --- |${engines.map(() => ' ---: |').join('')}${engines.length > 1 ? ' ---: |' : ''}`);
  const rows: [string, 'decodeBatch1' | 'decodeBatch8' | 'prefillBatch1' | 'prefillBatch8'][] = [
    ['decode, batch 1 (tokens/s)', 'decodeBatch1'],
    ['decode, batch 8 (tokens/s)', 'decodeBatch8'],
    ['prefill, batch 1 (tokens/s)', 'prefillBatch1'],
    ['prefill, batch 8 (tokens/s)', 'prefillBatch8'],
  ];
  for (const shape of report.shapes) {
    for (const [label, key] of rows) {
      const figures = engines.map((e) => shape.engines[e]?.[key]);
      lines.push(`| ${shape.shape} | ${label} | ${figures.map(cell).join(' | ')} |${ratioCell(figures)}`);
    }
  }
  const bandwidthLines = report.shapes.flatMap((s) => {
    if (s.bandwidth === undefined) return [];
    const fractions = Object.entries(s.bandwidth.decodeFraction).map(([e, f]) => `${e} ${(100 * (f as number)).toFixed(1)} %`);
    return [`${s.shape}: reading its ${(s.weightBytes / 1e6).toFixed(0)} MB of ${s.weights === 'bundled' ? 'weights (float16 matrices)' : 'fp32 weights'} runs at ${s.bandwidth.readGBs.median.toFixed(1)} GB/s; batch-1 decode (weight bytes × tokens/s) reaches ${fractions.join(', ')} of that`];
  });
  if (bandwidthLines.length > 0) lines.push('', ...bandwidthLines.map((l) => `- ${l}`));
  const longLines = report.shapes.flatMap((s) => {
    const g = s.longGeneration;
    if (g === undefined) return [];
    const slide = g.slide === undefined ? "'slide' not measured (a whole-window pass per token: many minutes)" : `'slide' ${cell(g.slide)} tokens/s; shift is ${(g.shiftOverSlide as number).toFixed(1)}× slide`;
    return [`${s.shape}: ${g.tokens.toLocaleString('en-US')} tokens: 'shift' (keep ${g.keep}) ${cell(g.shift)} tokens/s, ${(100 * g.shiftFraction).toFixed(0)} % of its within-window decode; ${slide}`];
  });
  if (longLines.length > 0) {
    lines.push('', 'native, long generation from a one-token prompt, batch 1, past the window (`context`):');
    lines.push(...longLines.map((l) => `- ${l}`));
  }
  const f16Lines = report.shapes.flatMap((s) => {
    if (s.nativeF16 === undefined) return [];
    const { decodeBatch1, weightBytes } = s.nativeF16;
    const fp32 = s.engines.native?.decodeBatch1.median;
    const vsFp32 = fp32 === undefined ? '' : `, ${(decodeBatch1.median / fp32).toFixed(2)}× the fp32 figure`;
    const fraction = s.bandwidth === undefined ? '' : `, ${((100 * weightBytes * decodeBatch1.median) / 1e9 / s.bandwidth.readGBs.median).toFixed(1)} % of the read bandwidth for its ${(weightBytes / 1e6).toFixed(0)} MB`;
    return [`${s.shape}: ${cell(decodeBatch1)} tokens/s${vsFp32}${fraction}`];
  });
  if (f16Lines.length > 0) {
    lines.push('', "native decode, batch 1, with the matrices in float16 (precision 'f16'; not exact against fp32 PyTorch):");
    lines.push(...f16Lines.map((l) => `- ${l}`));
  }
  const withPeak = report.gemm.some((g) => g.peakFraction !== undefined);
  // The GEMMs are the CPU engines' kernels alone: only engines with a figure get a column.
  const gemmEngines = engines.filter((e) => report.gemm.some((g) => g.engines[e] !== undefined));
  lines.push('');
  lines.push(`| GEMM (GFLOP/s) | ${gemmEngines.join(' | ')} |${withPeak ? ' native / FMA peak |' : ''}`);
  lines.push(`| --- |${gemmEngines.map(() => ' ---: |').join('')}${withPeak ? ' ---: |' : ''}`);
  for (const g of report.gemm) {
    const peak = withPeak ? ` ${g.peakFraction === undefined ? '–' : `${(100 * g.peakFraction).toFixed(0)} %`} |` : '';
    lines.push(`| ${g.label} (${g.M}×${g.N}×${g.K}) | ${gemmEngines.map((e) => cell(g.engines[e])).join(' | ')} |${peak}`);
  }
  const notes = report.shapes.flatMap((s) => engines.flatMap((e) => Object.values(s.engines[e] ?? {}).filter((f) => f.note !== undefined).map((f) => `${s.shape}, ${e}: ${f.note}`)));
  for (const note of [...new Set(notes)]) lines.push(`\n* ${note}`);
  return lines.join('\n');
}

function cell(f: Figure | undefined): string {
  if (f === undefined) return '–';
  return `${f.median >= 100 ? Math.round(f.median).toLocaleString('en-US') : f.median.toFixed(1)}${f.note !== undefined ? '*' : ''}`;
}

function ratioCell(figures: (Figure | undefined)[]): string {
  if (figures.length < 2) return '';
  const first = figures[0];
  const last = figures[figures.length - 1];
  return first && last ? ` ${(first.median / last.median).toFixed(1)}× |` : ' – |';
}
