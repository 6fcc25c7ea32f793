/**
 * What microgpt's SVG charts (the bench's bars, eval's loss curve) share: the frame (size, white
 * background, title and subtitle), escaped text, and round tick values for a linear axis.
 */

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** A whole SVG document: the frame, then `body` (elements, one a line). */
export function svgDocument(width: number, height: number, title: string, subtitle: string, body: readonly string[]): string {
  return `${[
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${escapeXml(title)}</text>`,
    `<text x="10" y="38" fill="#555">${escapeXml(subtitle)}</text>`,
    ...body,
    '</svg>',
  ].join('\n')}\n`;
}

/** Multiples of 1, 2 or 5 × 10^k covering [lo, hi] in about `count` steps, the ends rounded outwards. */
export function linearTicks(lo: number, hi: number, count: number): number[] {
  const span = hi > lo ? hi - lo : Math.abs(lo) || 1;
  const raw = span / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * magnitude >= raw) ?? 10) * magnitude;
  const first = Math.floor(lo / step);
  const last = Math.max(first + 1, Math.ceil(hi / step));
  const ticks: number[] = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}
