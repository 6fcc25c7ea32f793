import { describe } from './config.js';
import { MicroGPTError, invalidArgument, optionsObject, quote } from './errors.js';

export interface EncodeOptions {
  /** What to do with a character the vocabulary lacks: 'error' (default) or 'drop' it silently. */
  readonly unknown?: 'error' | 'drop';
}

/**
 * Character-level tokenizer, as nanoGPT's shakespeare_char: the vocabulary is the sorted list of
 * unique characters of the corpus and a token id is a character's index in it. A "character" is a
 * Unicode code point, as in Python, so text outside the Basic Multilingual Plane round-trips.
 */
export class CharTokenizer {
  /** The characters in id order (nanoGPT's itos). */
  readonly vocab: readonly string[];
  private readonly stoi: Map<string, number>;

  constructor(vocab: readonly string[]) {
    if (!Array.isArray(vocab)) throw invalidArgument(`vocabulary must be an array of characters, got ${vocab === null ? 'null' : typeof vocab}`);
    if (vocab.length === 0) throw invalidArgument('vocabulary is empty');
    const stoi = new Map<string, number>();
    vocab.forEach((ch, id) => {
      if (typeof ch !== 'string' || [...ch].length !== 1) {
        throw invalidArgument(`vocabulary entry ${id} must be a single character, got ${typeof ch === 'string' ? quote(ch) : typeof ch}`);
      }
      if (stoi.has(ch)) throw invalidArgument(`vocabulary holds ${JSON.stringify(ch)} twice (ids ${stoi.get(ch)} and ${id})`);
      stoi.set(ch, id);
    });
    this.vocab = Object.freeze([...vocab]);
    this.stoi = stoi;
  }

  /** nanoGPT's prepare.py: sorted unique characters of `text`, sorted by code point like Python's sorted(). */
  static fromText(text: string): CharTokenizer {
    const unique = [...new Set(text)];
    unique.sort((a, b) => (a.codePointAt(0) as number) - (b.codePointAt(0) as number));
    return new CharTokenizer(unique);
  }

  get size(): number {
    return this.vocab.length;
  }

  encode(text: string, options?: EncodeOptions): number[] {
    if (typeof text !== 'string') throw invalidArgument(`text must be a string, got ${text === null ? 'null' : typeof text}`);
    const unknown = optionsObject(options, 'encode options').unknown ?? 'error';
    if (unknown !== 'error' && unknown !== 'drop') throw invalidArgument(`unknown must be 'error' or 'drop', got ${describe(unknown)}`);
    const drop = unknown === 'drop';
    const ids: number[] = [];
    let position = 0; // in characters (code points), which is what a user counts
    for (const ch of text) {
      const id = this.stoi.get(ch);
      if (id !== undefined) ids.push(id);
      else if (!drop) {
        throw new MicroGPTError(
          'ERR_UNKNOWN_TOKEN',
          `character ${describeChar(ch)} at position ${position} is not in the model's vocabulary of ${this.size} characters` +
            ` (pass unknown: 'drop' to skip such characters)`,
        );
      }
      position++;
    }
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    checkIdList(ids);
    let out = '';
    for (let i = 0; i < ids.length; i++) out += this.token(ids[i] as number);
    return out;
  }

  /** The text of one token id. */
  token(id: number): string {
    const ch = Number.isInteger(id) ? this.vocab[id] : undefined;
    if (ch === undefined) throw invalidArgument(`token id ${typeof id === 'number' ? id : typeof id} is outside the vocabulary (0..${this.size - 1})`);
    return ch;
  }
}

/** An array (or typed array) of ids: something with a length that is a count. */
export function checkIdList(ids: unknown, name = 'ids'): asserts ids is ArrayLike<number> {
  if (typeof ids !== 'object' || ids === null) throw invalidArgument(`${name} must be an array of token ids, got ${ids === null ? 'null' : typeof ids}`);
  const { length } = ids as { length?: unknown };
  if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
    throw invalidArgument(`${name} must be an array of token ids (its length is ${describe(length)})`);
  }
}

function describeChar(ch: string): string {
  const cp = ch.codePointAt(0) as number;
  const hex = `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
  return cp < 0x20 || cp === 0x7f ? `${JSON.stringify(ch)} (${hex})` : `'${ch}' (${hex})`;
}
