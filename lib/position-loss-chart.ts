/**
 * `microgpt eval --chart`: the mean loss against the context length (1..blockSize) as an SVG line
 * chart, with what each context policy sees past the window marked on it.
 */
import { contextPolicyLosses } from './evaluate.js';
import { escapeXml, linearTicks, svgDocument } from './svg.js';

export interface PositionLossChart {
  /** Entry n - 1: the mean loss from a context of n tokens (Evaluation.lossByPosition). */
  readonly lossByPosition: readonly number[];
  /** The shift policy's keep to mark. */
  readonly keep: number;
  /** Under the title: the model, the text, the machine. */
  readonly subtitle: string;
}

export function positionLossChartSvg(chart: PositionLossChart): string {
  const curve = chart.lossByPosition;
  const B = curve.length;
  const policies = contextPolicyLosses(curve, chart.keep);
  const left = 70;
  const top = 60;
  const width = 600;
  const height = 300;
  const xTicks = linearTicks(0, B, 8).filter((t) => t <= B);
  const yTicks = linearTicks(Math.min(...curve), Math.max(...curve), 6);
  const [x0, x1] = [0, B];
  const [y0, y1] = [yTicks[0] as number, yTicks[yTicks.length - 1] as number];
  const x = (n: number) => left + ((n - x0) / (x1 - x0)) * width;
  const y = (loss: number) => top + height - ((loss - y0) / (y1 - y0)) * height;
  const f = (v: number) => v.toFixed(1);
  const out: string[] = [];
  for (const t of xTicks) {
    out.push(`<line x1="${f(x(t))}" y1="${top}" x2="${f(x(t))}" y2="${top + height}" stroke="#ddd"/>`);
    out.push(`<text x="${f(x(t))}" y="${top + height + 16}" text-anchor="middle" fill="#555">${t}</text>`);
  }
  for (const t of yTicks) {
    out.push(`<line x1="${left}" y1="${f(y(t))}" x2="${left + width}" y2="${f(y(t))}" stroke="#ddd"/>`);
    out.push(`<text x="${left - 6}" y="${f(y(t) + 4)}" text-anchor="end" fill="#555">${t}</text>`);
  }
  out.push(`<text x="${left + width / 2}" y="${top + height + 34}" text-anchor="middle">context length n (tokens before the predicted one)</text>`);
  out.push(`<text x="16" y="${top + height / 2}" text-anchor="middle" transform="rotate(-90 16 ${top + height / 2})">mean loss (nats per token)</text>`);
  // The contexts 'shift' predicts from, and their mean; 'slide' always has the full window.
  const shiftColor = '#dd6b20';
  out.push(`<rect x="${f(x(chart.keep))}" y="${top}" width="${f(x(B) - x(chart.keep))}" height="${height}" fill="${shiftColor}" fill-opacity="0.08"/>`);
  out.push(`<line x1="${f(x(chart.keep))}" y1="${f(y(policies.shift.loss))}" x2="${f(x(B))}" y2="${f(y(policies.shift.loss))}" stroke="${shiftColor}" stroke-width="2" stroke-dasharray="6 4"/>`);
  const points = curve.map((loss, i) => `${f(x(i + 1))},${f(y(loss))}`).join(' ');
  out.push(`<polyline points="${points}" fill="none" stroke="#2b6cb0" stroke-width="1.5"/>`);
  out.push(`<circle cx="${f(x(B))}" cy="${f(y(policies.slide))}" r="4" fill="#2f855a"/>`);
  const legend = [
    ['#2b6cb0', `mean loss from a context of n tokens (mean over all n: ${(curve.reduce((a, b) => a + b, 0) / B).toFixed(4)})`],
    ['#2f855a', `context 'slide' (exact) past the window: n = ${B} every token, ${policies.slide.toFixed(4)}`],
    [shiftColor, `context 'shift', keep ${chart.keep}: n = ${chart.keep}..${B} equally often, mean ${policies.shift.loss.toFixed(4)}`],
  ];
  legend.forEach(([color, text], i) => {
    const ly = top + height + 56 + i * 18;
    out.push(`<rect x="${left}" y="${ly - 9}" width="10" height="10" fill="${color}"/><text x="${left + 16}" y="${ly}">${escapeXml(text as string)}</text>`);
  });
  return svgDocument(left + width + 30, top + height + 56 + legend.length * 18, 'Loss by position in the window (lower is better)', chart.subtitle, out);
}
