import type { BackendName } from '../backends/types.js';
import { escapeXml as escape, svgDocument } from '../svg.js';
import type { BenchReport, EngineFigures } from './run.js';

const COLORS: Record<BackendName, string> = { native: '#2b6cb0', js: '#d69e2e', cuda: '#38a169' };
const FIGURES: [keyof EngineFigures, string][] = [
  ['decodeBatch1', 'decode, batch 1'],
  ['decodeBatch8', 'decode, batch 8'],
  ['prefillBatch1', 'prefill, batch 1'],
  ['prefillBatch8', 'prefill, batch 8'],
];

/**
 * The benchmark as an SVG bar chart: one group of bars per shape and figure, one bar per engine,
 * tokens/s on a logarithmic axis (the engines differ by orders of magnitude).
 */
export function benchChartSvg(report: BenchReport): string {
  const engines = [...new Set(report.shapes.flatMap((s) => Object.keys(s.engines)))] as BackendName[];
  const rows: { label: string; bars: { engine: BackendName; value: number; note: boolean }[] }[] = [];
  for (const shape of report.shapes) {
    for (const [key, label] of FIGURES) {
      const bars = engines.flatMap((engine) => {
        const f = shape.engines[engine]?.[key];
        return f === undefined ? [] : [{ engine, value: f.median, note: f.note !== undefined }];
      });
      rows.push({ label: `${shape.shape}: ${label}`, bars });
    }
    const long = shape.longGeneration;
    if (long !== undefined) {
      const tokens = long.tokens.toLocaleString('en-US');
      rows.push({ label: `${shape.shape}: ${tokens} tokens, shift`, bars: [{ engine: 'native', value: long.shift.median, note: false }] });
      if (long.slide !== undefined) {
        rows.push({ label: `${shape.shape}: ${tokens} tokens, slide`, bars: [{ engine: 'native', value: long.slide.median, note: false }] });
      }
    }
  }
  const values = rows.flatMap((r) => r.bars.map((b) => b.value)).filter((v) => v > 0);
  const lo = 10 ** Math.floor(Math.log10(Math.min(...values, 10)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...values, 100)));
  const left = 210;
  const width = 560;
  const barHeight = 14;
  const groupHeight = engines.length * barHeight + 10;
  const top = 54;
  const height = top + rows.length * groupHeight + 40;
  const x = (v: number) => left + ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * width;
  const out: string[] = [];
  for (let p = lo; p <= hi; p *= 10) {
    out.push(`<line x1="${x(p)}" y1="${top - 6}" x2="${x(p)}" y2="${height - 34}" stroke="#ddd"/>`);
    out.push(`<text x="${x(p)}" y="${height - 20}" text-anchor="middle" fill="#555">${p.toLocaleString('en-US')}</text>`);
  }
  rows.forEach((row, i) => {
    const y0 = top + i * groupHeight;
    out.push(`<text x="${left - 8}" y="${y0 + (engines.length * barHeight) / 2 + 4}" text-anchor="end">${escape(row.label)}</text>`);
    row.bars.forEach((bar) => {
      const y = y0 + engines.indexOf(bar.engine) * barHeight;
      const w = Math.max(1, x(bar.value) - left);
      out.push(`<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barHeight - 2}" fill="${COLORS[bar.engine]}"/>`);
      const text = `${bar.value >= 100 ? Math.round(bar.value).toLocaleString('en-US') : bar.value.toFixed(1)}${bar.note ? '*' : ''}`;
      out.push(`<text x="${left + w + 4}" y="${y + barHeight - 4}" fill="#333">${text}</text>`);
    });
  });
  engines.forEach((engine, i) => {
    const lx = left + width - 160 + i * 70;
    out.push(`<rect x="${lx}" y="${height - 14}" width="10" height="10" fill="${COLORS[engine]}"/><text x="${lx + 14}" y="${height - 5}">${engine}</text>`);
  });
  return svgDocument(
    left + width + 90,
    height,
    'microgpt throughput, tokens/s (log scale, higher is better)',
    `${report.machine.cpu}, ${report.threads} threads, ${report.date.slice(0, 10)}; random fp32 weights`,
    out,
  );
}
