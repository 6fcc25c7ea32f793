// The microgpt playground: no dependencies, no build step. It talks to the server's
// OpenAI-compatible /v1/completions, one streaming request per sample column, and asks for the
// `distribution` extension so every generated character comes with its top candidates.

/** Candidates the server sends per character (its maximum); the table shows TABLE_ROWS of them. */
const DISTRIBUTION = 20;
const TABLE_ROWS = 10;
/** Spread temperatures, so the side-by-side comparison shows what the dial does. */
const DEFAULT_TEMPERATURES = [0.5, 0.8, 1.2, 1.5];
const DEFAULT_SEED = 1337;
const KEY_STORAGE = 'microgpt-api-key';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const form = /** @type {HTMLFormElement} */ ($('controls'));
const promptInput = /** @type {HTMLTextAreaElement} */ ($('prompt'));
const maxTokensInput = /** @type {HTMLInputElement} */ ($('max-tokens'));
const samplesInput = /** @type {HTMLSelectElement} */ ($('samples'));
const keyInput = /** @type {HTMLInputElement} */ ($('api-key'));
const generateButton = /** @type {HTMLButtonElement} */ ($('generate'));
const stopButton = /** @type {HTMLButtonElement} */ ($('stop'));
const formError = $('form-error');
const columnsEl = $('columns');

/** The first model the server lists; vocabSize bounds the top-k slider. */
let model = { id: undefined, vocabSize: 65 };
/** @type {Sample[]} */
const samples = [];
/** @type {AbortController | null} */
let running = null;

/** A character for the table: whitespace made visible. */
function showToken(token) {
  if (token === ' ') return '␣ (space)';
  if (token === '\n') return '↵ (new line)';
  if (token === '\t') return '⇥ (tab)';
  return token;
}

function percent(p) {
  if (p > 0 && p < 0.00005) return '< 0.01 %';
  const digits = p >= 0.995 ? 0 : p >= 0.0995 ? 1 : 2;
  return `${(p * 100).toFixed(digits)} %`;
}

function headers() {
  const h = { 'content-type': 'application/json' };
  const key = keyInput.value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

/** The error message of a failed response, from the server's `{ error: { message } }` when it sent one. */
async function errorOf(response) {
  const body = await response.text();
  try {
    const message = JSON.parse(body)?.error?.message;
    if (message) return `${message} (HTTP ${response.status})`;
  } catch { /* not JSON: fall through */ }
  return `HTTP ${response.status} ${response.statusText}${body ? `: ${body.slice(0, 200)}` : ''}`;
}

/** One column: its own sliders, its own request, its own text and table. */
class Sample {
  constructor(index) {
    this.index = index;
    const fragment = /** @type {HTMLTemplateElement} */ ($('sample-template')).content.cloneNode(true);
    this.el = /** @type {HTMLElement} */ (/** @type {DocumentFragment} */ (fragment).firstElementChild);
    this.el.querySelector('.sample-title').textContent = `Sample ${index + 1}`;
    this.el.setAttribute('aria-label', `Sample ${index + 1}`);
    /** @type {Record<string, HTMLInputElement>} */
    this.inputs = {};
    for (const input of this.el.querySelectorAll('input[data-name]')) {
      const name = input.dataset.name;
      input.id = `s${index}-${name}`;
      this.inputs[name] = input;
    }
    for (const label of this.el.querySelectorAll('label[data-for]')) label.htmlFor = `s${index}-${label.dataset.for}`;
    this.outputs = Object.fromEntries([...this.el.querySelectorAll('output[data-out]')].map((o) => [o.dataset.out, o]));
    this.status = this.el.querySelector('.status');
    this.text = this.el.querySelector('.output');
    this.text.setAttribute('aria-label', `Sample ${index + 1} text`);
    this.caption = this.el.querySelector('.inspect-caption');
    this.table = this.el.querySelector('.probs');

    const { temperature, seed } = this.inputs;
    temperature.value = String(DEFAULT_TEMPERATURES[index] ?? 1);
    this.inputs['top-p'].value = '1';
    seed.value = String(DEFAULT_SEED);
    this.setVocab(model.vocabSize);
    this.el.addEventListener('input', () => this.showSettings());
    this.inputs['seed-random'].addEventListener('change', () => { seed.disabled = this.inputs['seed-random'].checked; });

    /** @type {{ token: string, distribution: {token: string, before: number, after: number}[] | undefined, span: HTMLSpanElement }[]} */
    this.chars = [];
    this.selected = -1;
    this.used = null; // the settings of the text on show, for the table's caption
    this.text.addEventListener('mouseover', (e) => this.pick(e));
    this.text.addEventListener('click', (e) => this.pick(e));
    this.text.addEventListener('keydown', (e) => this.onKey(e));
    this.text.addEventListener('focus', () => { if (this.selected < 0 && this.chars.length) this.select(0); });
  }

  setVocab(vocabSize) {
    const topK = this.inputs['top-k'];
    const wasOff = topK.value === topK.max || topK.max === '';
    topK.max = String(vocabSize);
    if (wasOff) topK.value = String(vocabSize);
    this.showSettings();
  }

  /** The settings as the request sends them. top-k at the vocabulary size keeps every token: off. */
  settings() {
    const k = Number(this.inputs['top-k'].value);
    const random = this.inputs['seed-random'].checked;
    return {
      temperature: Number(this.inputs.temperature.value),
      top_k: k >= Number(this.inputs['top-k'].max) ? null : k,
      top_p: Number(this.inputs['top-p'].value),
      seed: random ? Math.floor(Math.random() * 2 ** 32) : Math.trunc(Number(this.inputs.seed.value) || 0),
    };
  }

  showSettings() {
    const s = this.settings();
    this.outputs.temperature.textContent = s.temperature === 0 ? '0 (greedy)' : s.temperature.toFixed(2);
    this.outputs['top-k'].textContent = s.top_k === null ? `off (all ${this.inputs['top-k'].max})` : String(s.top_k);
    this.outputs['top-p'].textContent = s.top_p.toFixed(2);
  }

  describe(s) {
    return `temperature ${s.temperature}, top-k ${s.top_k ?? 'off'}, top-p ${s.top_p}, seed ${s.seed}`;
  }

  clear() {
    this.text.replaceChildren();
    this.chars = [];
    this.selected = -1;
    this.table.hidden = true;
    this.caption.textContent = 'No character selected.';
    this.status.classList.remove('error');
    this.status.removeAttribute('role');
    this.status.setAttribute('role', 'status');
  }

  fail(message) {
    this.status.textContent = message;
    this.status.classList.add('error');
    this.status.setAttribute('role', 'alert');
  }

  append(text, distribution) {
    const tokens = Array.from(text);
    // The server aligns one entry per token (character); anything else leaves the table empty for this piece.
    const aligned = Array.isArray(distribution) && distribution.length === tokens.length;
    tokens.forEach((token, i) => {
      const span = document.createElement('span');
      span.className = 'ch';
      span.textContent = token;
      const dist = aligned ? distribution[i] : undefined;
      const p = dist ? chosenProbability(token, dist) : undefined;
      if (p !== undefined) {
        span.style.setProperty('--p', String(p.value));
        span.title = `${percent(p.value)}${p.bound ? ' or less' : ''}`;
      }
      span.dataset.index = String(this.chars.length);
      this.chars.push({ token, distribution: dist, span });
      this.text.append(span);
    });
  }

  /** Generates with this column's settings; resolves when the stream ends, fails or is stopped. */
  async run(prompt, maxTokens, signal) {
    const s = this.settings();
    this.used = s;
    this.clear();
    const promptSpan = document.createElement('span');
    promptSpan.className = 'prompt-text';
    promptSpan.textContent = prompt;
    this.text.append(promptSpan);
    this.status.textContent = `Generating: ${this.describe(s)}…`;
    this.text.setAttribute('aria-busy', 'true');
    let finish = null;
    try {
      const response = await fetch('/v1/completions', {
        method: 'POST',
        headers: headers(),
        body: JSON.stringify({
          model: model.id, prompt, max_tokens: maxTokens, ...s, stream: true, distribution: DISTRIBUTION,
        }),
        signal,
      });
      if (!response.ok) throw new Error(await errorOf(response));
      for await (const event of serverEvents(response, signal)) {
        if (event.error) throw new Error(event.error.message ?? JSON.stringify(event.error));
        const choice = event.choices?.[0];
        if (!choice) continue;
        if (choice.text) this.append(choice.text, choice.distribution);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      this.status.textContent = `${this.chars.length} characters (${finish === 'stop' ? 'stop string' : finish ?? 'done'}): ${this.describe(s)}`;
    } catch (error) {
      if (signal.aborted) this.status.textContent = `Stopped after ${this.chars.length} characters: ${this.describe(s)}`;
      else this.fail(`Failed: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.text.setAttribute('aria-busy', 'false');
      if (this.chars.length && this.selected < 0) this.select(0, false);
    }
  }

  pick(event) {
    const span = /** @type {HTMLElement} */ (event.target).closest?.('.ch');
    if (span && this.text.contains(span)) this.select(Number(span.dataset.index), false);
  }

  onKey(event) {
    if (!this.chars.length) return;
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    let next;
    if (event.key in moves) next = Math.max(0, this.selected) + moves[event.key];
    else if (event.key === 'Home') next = 0;
    else if (event.key === 'End') next = this.chars.length - 1;
    else return;
    event.preventDefault();
    this.select(Math.min(this.chars.length - 1, Math.max(0, next)));
  }

  select(index, scroll = true) {
    const char = this.chars[index];
    if (!char) return;
    this.chars[this.selected]?.span.classList.remove('selected');
    this.selected = index;
    char.span.classList.add('selected');
    if (scroll) char.span.scrollIntoView({ block: 'nearest' });
    this.showTable(index);
  }

  showTable(index) {
    const { token, distribution } = /** @type {typeof this.chars[number]} */ (this.chars[index]);
    const s = this.used;
    this.caption.textContent = `Character ${index + 1} of ${this.chars.length}, “${showToken(token)}”` +
      (s ? `; after = temperature ${s.temperature === 0 ? '0 (greedy)' : s.temperature}, top-k ${s.top_k ?? 'off'}, top-p ${s.top_p}` : '');
    const body = this.table.tBodies[0];
    body.replaceChildren();
    if (!distribution) {
      this.table.hidden = true;
      this.caption.textContent += ' (the server sent no candidates for it)';
      return;
    }
    const chosenAt = distribution.findIndex((d) => d.token === token);
    const rows = distribution.slice(0, TABLE_ROWS);
    if (chosenAt >= TABLE_ROWS) rows.push(/** @type {any} */ (distribution[chosenAt]));
    for (const d of rows) {
      const tr = document.createElement('tr');
      const chosen = d.token === token;
      if (chosen) tr.className = 'chosen';
      const cell = document.createElement('th');
      cell.scope = 'row';
      cell.textContent = (chosen ? '✓ ' : '') + showToken(d.token);
      if (chosen) cell.setAttribute('aria-label', `${showToken(d.token)}, drawn`);
      tr.append(cell, probabilityCell(d.before), probabilityCell(d.after, true));
      body.append(tr);
    }
    if (chosenAt < 0) {
      const tr = document.createElement('tr');
      tr.className = 'chosen';
      const cell = document.createElement('td');
      cell.colSpan = 3;
      cell.textContent = `✓ ${showToken(token)} was drawn from below the top ${distribution.length}`;
      tr.append(cell);
      body.append(tr);
    }
    this.table.hidden = false;
  }
}

/** The drawn token's `after` probability; when it is not among the candidates, the smallest shown bounds it. */
function chosenProbability(token, distribution) {
  const hit = distribution.find((d) => d.token === token);
  if (hit) return { value: hit.after, bound: false };
  const last = distribution[distribution.length - 1];
  return last ? { value: last.after, bound: true } : undefined;
}

/** A probability cell; `after` cells of 0 say that top-k or top-p removed the candidate. */
function probabilityCell(p, after = false) {
  const td = document.createElement('td');
  td.className = 'p';
  td.dataset.p = String(p);
  td.style.setProperty('--p', String(p));
  td.textContent = percent(p);
  if (after && p === 0) {
    td.classList.add('cut');
    td.textContent = 'cut';
    td.title = 'removed by top-k or top-p';
  }
  return td;
}

/** The JSON payloads of a Server-Sent Events response, up to `data: [DONE]`. */
async function* serverEvents(response, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
        const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
        if (!data) continue;
        if (data === '[DONE]') return;
        yield JSON.parse(data);
      }
    }
    if (!signal.aborted) throw new Error('the stream ended before [DONE]');
  } finally {
    reader.cancel().catch(() => {});
  }
}

function layoutColumns() {
  const n = Number(samplesInput.value);
  while (samples.length < n) samples.push(new Sample(samples.length));
  columnsEl.replaceChildren(...samples.slice(0, n).map((s) => s.el));
  columnsEl.dataset.count = String(n);
}

async function generate() {
  if (running) return;
  formError.hidden = true;
  const prompt = promptInput.value;
  if (!prompt) {
    formError.textContent = 'Type a prompt first: the model continues it.';
    formError.hidden = false;
    promptInput.focus();
    return;
  }
  running = new AbortController();
  generateButton.disabled = true;
  stopButton.disabled = false;
  document.body.dataset.state = 'running';
  const active = samples.slice(0, Number(samplesInput.value));
  await Promise.all(active.map((s) => s.run(prompt, Number(maxTokensInput.value), running.signal)));
  running = null;
  generateButton.disabled = false;
  stopButton.disabled = true;
  document.body.dataset.state = 'done';
}

function stop() {
  running?.abort();
}

async function loadModels() {
  const info = $('model-info');
  try {
    const response = await fetch('/v1/models', { headers: headers() });
    if (!response.ok) throw new Error(await errorOf(response));
    const first = (await response.json()).data?.[0];
    if (!first) throw new Error('the server lists no model');
    model = { id: first.id, vocabSize: first.vocab_size ?? model.vocabSize };
    info.textContent = `Model ${first.id}: ${first.vocab_size} characters, a window of ${first.block_size}, ${first.backend} engine.`;
    for (const s of samples) s.setVocab(model.vocabSize);
  } catch (error) {
    info.textContent = `Could not list the models: ${error instanceof Error ? error.message : String(error)}`;
    info.classList.add('error');
  }
}

keyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? '';
keyInput.addEventListener('change', () => {
  sessionStorage.setItem(KEY_STORAGE, keyInput.value);
  loadModels();
});
maxTokensInput.addEventListener('input', () => { $('max-tokens-value').textContent = maxTokensInput.value; });
samplesInput.addEventListener('change', layoutColumns);
form.addEventListener('submit', (e) => { e.preventDefault(); generate(); });
stopButton.addEventListener('click', stop);
promptInput.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); generate(); }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  else if (e.key === 'Escape' && running) stop();
});

layoutColumns();
loadModels();
