// The playground (GET /) in a real browser: Debian's chromium driven by puppeteer-core against
// `startServer` with the bundled model. It generates two samples as a person would (keyboard and
// sliders), checks the streamed text against a direct POST with the settings the page shows, reads
// the probability table, and saves a screenshot (the README's docs/playground.png with MICROGPT_UPDATE_SCREENSHOT=1).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { after, before, describe, test } from 'node:test';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { startServer, type RunningServer } from '../lib/index.js';
import { ROOT } from './helpers.js';

/** What the functions run in the page use of it (this project compiles without the DOM library). */
interface PageNode {
  textContent: string | null;
  value: string;
  hidden: boolean;
  dataset: Record<string, string | undefined>;
  classList: { contains(name: string): boolean };
  querySelector(selector: string): PageNode | null;
  querySelectorAll(selector: string): Iterable<PageNode>;
  getBoundingClientRect(): { left: number; top: number; bottom: number };
  dispatchEvent(event: unknown): boolean;
}
declare const document: PageNode & { body: PageNode; documentElement: { scrollWidth: number; clientWidth: number }; getElementById(id: string): PageNode | null };
declare const Event: new (type: string, init?: { bubbles?: boolean }) => unknown;

const chromium = spawnSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).stdout.trim();
const skip = chromium ? false : 'chromium is not installed (apt-get install -y chromium, or scripts/install-test-deps.sh)';
// The README's screenshot is rewritten only on request (MICROGPT_UPDATE_SCREENSHOT=1), so a test
// run leaves the tree as it was.
const SCREENSHOT = process.env['MICROGPT_UPDATE_SCREENSHOT'] === '1' ? join(ROOT, 'docs', 'playground.png') : join(tmpdir(), `microgpt-playground-${process.pid}.png`);

interface Candidate { token: string; before: number; after: number }
interface Completion { choices: { text: string; distribution?: Candidate[][] }[] }

/** The settings one sample column shows: what its request must have sent. */
async function shownSettings(page: Page, column: number): Promise<{ temperature: number; top_k: number | null; top_p: number; seed: number }> {
  return page.$eval(`#columns .sample:nth-child(${column + 1})`, (el) => {
    const out = (name: string): string => el.querySelector(`output[data-out="${name}"]`)!.textContent!;
    const topK = out('top-k');
    return {
      temperature: parseFloat(out('temperature')),
      top_k: topK.startsWith('off') ? null : Number(topK),
      top_p: Number(out('top-p')),
      seed: Number(el.querySelector('input[data-name="seed"]')!.value),
    };
  });
}

/** The generated characters of one column, the prompt left out. */
function streamedText(page: Page, column: number): Promise<string> {
  return page.$$eval(`#columns .sample:nth-child(${column + 1}) .output .ch`, (spans) => spans.map((s) => s.textContent).join(''));
}

describe('playground', { skip }, () => {
  let server: RunningServer;
  let browser: Browser;
  before(async () => {
    server = await startServer({ model: 'default', host: '127.0.0.1', port: 0 });
    browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  test('generates two samples with the settings it shows, and explains each character', { timeout: 60_000 }, async () => {
    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await page.setViewport({ width: 1280, height: 1000 });
    await page.goto(new URL('/', server.url).href, { waitUntil: 'networkidle0' });
    await page.waitForFunction(() => document.getElementById('model-info')!.textContent!.startsWith('Model '));
    const modelId = await page.evaluate(() => document.getElementById('model-info')!.textContent!.match(/^Model (.+?):/)![1]!);

    // The settings, as a person sets them: the keyboard on the sliders, typed numbers.
    await page.click('#prompt', { count: 3 });
    await page.type('#prompt', 'JULIET:');
    await page.$eval('#max-tokens', (el) => { (el as unknown as PageNode).value = '160'; el.dispatchEvent(new Event('input', { bubbles: true })); });
    await page.select('#samples', '2');
    await page.focus('#s0-temperature');
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight'); // 0.5 → 0.6
    await page.click('#s1-seed', { count: 3 });
    await page.type('#s1-seed', '42');
    await page.focus('#s1-top-k');
    await page.keyboard.press('Home'); // top-k 1: greedy in effect, whatever the temperature
    for (let i = 0; i < 4; i++) await page.keyboard.press('ArrowRight'); // top-k 5
    const shown = [await shownSettings(page, 0), await shownSettings(page, 1)];
    assert.deepEqual(shown[0], { temperature: 0.6, top_k: null, top_p: 1, seed: 1337 });
    assert.deepEqual(shown[1], { temperature: 0.8, top_k: 5, top_p: 1, seed: 42 });
    const maxTokens = Number(await page.$eval('#max-tokens-value', (el) => el.textContent));
    assert.equal(maxTokens, 160);

    // Enter in the prompt generates; the page marks the end of every stream on <body>.
    await page.focus('#prompt');
    await page.keyboard.press('End');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.body.dataset['state'] === 'done', { timeout: 45_000 });
    assert.equal(await page.$eval('#prompt', (el) => (el as unknown as PageNode).value), 'JULIET:', 'Enter generated instead of adding a line');

    for (const column of [0, 1]) {
      const text = await streamedText(page, column);
      assert.ok(text.length > 0, `sample ${column + 1} streamed no text`);
      const response = await fetch(new URL('/v1/completions', server.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: modelId, prompt: 'JULIET:', max_tokens: maxTokens, ...shown[column], distribution: 20 }),
      });
      assert.equal(response.status, 200, await response.clone().text());
      const direct = (await response.json()) as Completion;
      assert.equal(text, direct.choices[0]!.text, `sample ${column + 1}: the page's text differs from a direct POST with the settings it shows`);

      // Hover a character: its table lists the top candidates, the drawn one marked, the
      // same probabilities the server gives for that position.
      const index = Math.min(9, text.length - 1);
      const span = await page.$(`#columns .sample:nth-child(${column + 1}) .output .ch:nth-of-type(${index + 2})`); // +1: the prompt's span
      assert.ok(span);
      await span.hover();
      const table = await page.$eval(`#columns .sample:nth-child(${column + 1}) .inspect`, (el) => ({
        caption: el.querySelector('.inspect-caption')!.textContent!,
        hidden: el.querySelector('table')!.hidden,
        rows: [...el.querySelectorAll('tbody tr')].map((tr) => ({
          chosen: tr.classList.contains('chosen'),
          p: [...tr.querySelectorAll('td.p')].map((td) => Number(td.dataset['p'])),
        })),
      }));
      assert.equal(table.hidden, false);
      assert.match(table.caption, new RegExp(`^Character ${index + 1} of ${text.length}`));
      assert.match(table.caption, new RegExp(`temperature ${shown[column]!.temperature}, top-k ${shown[column]!.top_k ?? 'off'}, top-p 1`));
      assert.ok(table.rows.length >= 2, `${table.rows.length} rows`);
      assert.equal(table.rows.filter((r) => r.chosen).length, 1, 'exactly one row marks the drawn character');
      for (const row of table.rows) for (const p of row.p) assert.ok(p >= 0 && p <= 1, `probability ${p}`);
      const afterSum = table.rows.reduce((s, r) => s + (r.p[1] ?? 0), 0);
      assert.ok(afterSum <= 1 + 1e-6, `after-probabilities sum to ${afterSum}`);
      const shownRows = Math.min(10, table.rows.length); // a drawn character below the top 10 gets an extra row
      const expectedRows = direct.choices[0]!.distribution![index]!.slice(0, shownRows);
      assert.deepEqual(table.rows.slice(0, shownRows).map((r) => r.p), expectedRows.map((c) => [c.before, c.after]));
    }

    // Keyboard: the arrow keys walk the characters of a focused sample and show each table.
    await page.focus('#columns .sample:nth-child(2) .output');
    await page.keyboard.press('Home');
    await page.keyboard.press('ArrowRight');
    assert.match(await page.$eval('#columns .sample:nth-child(2) .inspect-caption', (el) => el.textContent!), /^Character 2 of /);

    await page.hover('#columns .sample:nth-child(1) .output .ch:nth-of-type(12)');
    await page.screenshot({ path: SCREENSHOT });
    assert.ok(statSync(SCREENSHOT).size < 300_000, `the screenshot is ${statSync(SCREENSHOT).size} bytes`);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  test('on a 390-px phone the columns stack, nothing scrolls sideways, and a tap shows the table', { timeout: 60_000 }, async () => {
    const page = await browser.newPage();
    await page.setViewport({ width: 390, height: 844, isMobile: true, hasTouch: true });
    await page.goto(new URL('/', server.url).href, { waitUntil: 'networkidle0' });
    await page.waitForFunction(() => document.getElementById('model-info')!.textContent!.startsWith('Model '));
    await page.$eval('#max-tokens', (el) => { (el as unknown as PageNode).value = '40'; el.dispatchEvent(new Event('input', { bubbles: true })); });
    await page.tap('#generate');
    await page.waitForFunction(() => document.body.dataset['state'] === 'done', { timeout: 30_000 });

    const layout = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      clientWidth: document.documentElement.clientWidth,
      boxes: [...document.querySelectorAll('#columns .sample')].map((s) => { const r = s.getBoundingClientRect(); return { left: r.left, top: r.top, bottom: r.bottom }; }),
    }));
    assert.ok(layout.scrollWidth <= layout.clientWidth, `the page is ${layout.scrollWidth} px wide in a ${layout.clientWidth}-px viewport`);
    assert.equal(layout.boxes.length, 2);
    assert.equal(layout.boxes[0]!.left, layout.boxes[1]!.left);
    assert.ok(layout.boxes[1]!.top >= layout.boxes[0]!.bottom, 'the second sample should sit below the first');

    await page.tap('#columns .sample:nth-child(2) .output .ch:nth-of-type(4)');
    assert.match(await page.$eval('#columns .sample:nth-child(2) .inspect-caption', (el) => el.textContent!), /^Character 3 of /);
    assert.equal(await page.$eval('#columns .sample:nth-child(2) table', (el) => (el as unknown as PageNode).hidden), false);
    await page.close();
  });
});
