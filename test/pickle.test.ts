/**
 * The restricted unpickler against pickles Python wrote (scripts/make_pickle_fixtures.py): values
 * must equal what Python's pickle.loads gave, malicious pickles must be refused naming what they
 * reach for, and damaged input must end in a MicroGPTError.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { test } from 'node:test';
import { MicroGPTError } from '../lib/errors.js';
import {
  ORDERED_DICT_GLOBAL,
  PLAIN_DATA_GLOBALS,
  PickleByteArray,
  PickleFrozenSet,
  PickleTuple,
  unpickle,
  type PickleContext,
  type PickleGlobal,
  type UnpickleOptions,
} from '../lib/formats/pickle.js';
import { fixture } from './helpers.js';

interface Manifest {
  plain: { files: string[]; value: unknown };
  values: Record<string, unknown>;
  persistent: string[];
  malicious: Record<string, string>;
  marker: string;
}

const manifest = JSON.parse(readFileSync(fixture('pickle', 'manifest.json'), 'utf8')) as Manifest;

function read(name: string): Uint8Array {
  return readFileSync(fixture('pickle', name));
}

/** Python's persistent_load in the fixture script returned ('persistent', pid); so does this one. */
const persistentLoad = (pid: unknown) => new PickleTuple(['persistent', pid]);

function load(name: string, options: UnpickleOptions = {}): unknown {
  return unpickle(read(name), { globals: PLAIN_DATA_GLOBALS, persistentLoad, source: name, ...options });
}

// ---- comparing with the tagged JSON the fixture script wrote -------------------------------------

type Tagged = null | boolean | number | string | Tagged[] | { [tag: string]: unknown };

function hexOf(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

function pythonFloat(repr: string): number {
  if (repr === 'nan') return NaN;
  if (repr === 'inf') return Infinity;
  if (repr === '-inf') return -Infinity;
  return Number(repr);
}

/** Where `actual` differs from Python's tagged `expected`, or null if it matches. */
function mismatch(actual: unknown, expected: Tagged, path: string): string | null {
  const fail = (what: string) => `${path}: ${what}`;
  if (expected === null || typeof expected === 'boolean' || typeof expected === 'string') {
    return actual === expected ? null : fail(`expected ${JSON.stringify(expected)}, got ${String(actual)}`);
  }
  if (typeof expected === 'number') {
    return typeof actual === 'number' && actual === expected ? null : fail(`expected int ${expected}, got ${String(actual)}`);
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual)) return fail('expected a list');
    if (actual.length !== expected.length) return fail(`expected ${expected.length} items, got ${actual.length}`);
    for (let i = 0; i < expected.length; i++) {
      const m = mismatch(actual[i], expected[i] as Tagged, `${path}[${i}]`);
      if (m !== null) return m;
    }
    return null;
  }
  const [tag, body] = Object.entries(expected)[0] as [string, unknown];
  switch (tag) {
    case 'int':
      return typeof actual === 'bigint' && actual === BigInt(body as string) ? null : fail(`expected big int ${String(body)}, got ${String(actual)}`);
    case 'float':
      return typeof actual === 'number' && Object.is(actual, pythonFloat(body as string))
        ? null
        : fail(`expected float ${String(body)}, got ${String(actual)}`);
    case 'bytes':
      return actual instanceof Uint8Array && hexOf(actual) === body ? null : fail(`expected bytes ${String(body)}`);
    case 'bytearray':
      return actual instanceof PickleByteArray && hexOf(actual.bytes) === body ? null : fail(`expected bytearray ${String(body)}`);
    case 'tuple':
      return actual instanceof PickleTuple ? mismatch([...actual.items], body as Tagged[], path) : fail('expected a tuple');
    case 'dict': {
      if (!(actual instanceof Map)) return fail('expected a dict');
      const pairs = body as [Tagged, Tagged][];
      if (actual.size !== pairs.length) return fail(`expected ${pairs.length} entries, got ${actual.size}`);
      let i = 0;
      for (const [key, value] of actual) {
        const [k, v] = pairs[i++] as [Tagged, Tagged];
        const m = mismatch(key, k, `${path} key #${i}`) ?? mismatch(value, v, `${path}[${JSON.stringify(k)}]`);
        if (m !== null) return m;
      }
      return null;
    }
    case 'set':
    case 'frozenset': {
      const values = tag === 'set' ? (actual instanceof Set ? actual : null) : actual instanceof PickleFrozenSet ? actual.values : null;
      if (values === null) return fail(`expected a ${tag}`);
      const items = body as Tagged[];
      if (values.size !== items.length) return fail(`expected ${items.length} members, got ${values.size}`);
      // Set order is Python's hash order: match members, not positions.
      for (const item of items) {
        if (![...values].some((v) => mismatch(v, item, path) === null)) return fail(`missing member ${JSON.stringify(item)}`);
      }
      return null;
    }
    default:
      throw new Error(`unknown tag ${tag} in manifest`);
  }
}

function assertMatches(actual: unknown, expected: unknown, name: string): void {
  const m = mismatch(actual, expected as Tagged, name);
  assert.equal(m, null, m ?? '');
}

function assertPickleError(fn: () => unknown, code: string, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof MicroGPTError, `expected a MicroGPTError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(!/[\n\r]/.test(err.message), `should be one line: ${JSON.stringify(err.message)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

// ---- values Python wrote ----------------------------------------------------------------------------

test('plain data in every protocol 0–5 loads to exactly what Python loaded', () => {
  assert.equal(manifest.plain.files.length, 6);
  for (const name of manifest.plain.files) assertMatches(load(name), manifest.plain.value, name);
});

test('opcodes Python 3 never writes (text protocol 0, BINSTRING, LONG4, FRAME, BINUNICODE8, PERSID…) match pickle.loads', () => {
  const names = Object.keys(manifest.values);
  assert.ok(names.includes('handmade_text.pkl') && names.includes('handmade_p4.pkl') && names.includes('handmade_persid.pkl'));
  for (const name of names) assertMatches(load(name), manifest.values[name], name);
});

test('dict keys keep their Python types: int 0 and str "0" stay apart', () => {
  const value = load('plain_p4.pkl') as Map<string, unknown>;
  const intKeys = value.get('int_keys') as Map<unknown, unknown>;
  assert.equal(intKeys.get(0), '\n');
  assert.equal(intKeys.get('0'), undefined);
  assert.equal(intKeys.get(2n ** 70n), 'big');
  const mixed = value.get('mixed_keys') as Map<unknown, unknown>;
  assert.equal(mixed.get(1), 'int');
  assert.equal(mixed.get('1'), 'str');
});

test('shared references stay shared and recursive structures are rebuilt, not expanded', () => {
  for (const protocol of [2, 4]) {
    const shared = load(`shared_p${protocol}.pkl`) as unknown[];
    assertMatches(shared, manifest.values[`shared_p${protocol}.pkl`], 'shared');
    assert.equal(shared[0], shared[1]);
    assert.equal((shared[2] as Map<string, unknown>).get('x'), shared[0]);

    const [list, dict] = load(`recursive_p${protocol}.pkl`) as [unknown[], Map<string, unknown>];
    assert.equal(list[0], 1);
    assert.equal(list[1], list);
    assert.equal(dict.get('self'), dict);
  }
});

test('persistent ids reach persistent_load, and without one they are an error', () => {
  const seen: unknown[] = [];
  unpickle(read('handmade_persid.pkl'), {
    persistentLoad: (pid: unknown, context: PickleContext) => {
      assert.equal(context.source, 'pickle');
      seen.push(pid);
      return null;
    },
  });
  assert.equal(seen.length, 3);
  assert.equal(seen[0], 'text-id');
  assert.equal(seen[1], 5);
  assert.ok(seen[2] instanceof PickleTuple);
  assertPickleError(() => unpickle(read('handmade_persid.pkl')), 'ERR_BAD_CHECKPOINT', /persistent id/);
});

// ---- the whitelist ---------------------------------------------------------------------------------

test('malicious pickles are refused, naming the global or operation, and their payload never runs', () => {
  rmSync(manifest.marker, { force: true });
  const names = Object.keys(manifest.malicious);
  assert.ok(names.length >= 10);
  for (const name of names) {
    const what = manifest.malicious[name] as string;
    const quoted = what.includes('.') ? `"${what}"` : what;
    assertPickleError(() => load(name), 'ERR_UNSAFE_PICKLE', new RegExp(quoted.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  }
  assert.equal(existsSync(manifest.marker), false, `${manifest.marker} exists: a payload ran`);
});

test('the refusal lists what is allowed', () => {
  assertPickleError(() => load('evil_os_system.pkl'), 'ERR_UNSAFE_PICKLE', /refusing pickle global "posix\.system": only builtins\.set, .*collections\.OrderedDict are allowed/);
  assertPickleError(() => load('evil_os_system.pkl', { globals: [] }), 'ERR_UNSAFE_PICKLE', /"posix\.system": this pickle may hold only plain data/);
});

test('globals are resolved only against the caller\'s whitelist', () => {
  // Protocol 5 writes OrderedDict as a global; without it in the whitelist the pickle is refused.
  assertPickleError(() => load('plain_p5.pkl', { globals: [] }), 'ERR_UNSAFE_PICKLE', /"collections\.OrderedDict"/);
  // Protocols 0–2 write bytes as __builtin__.bytes() (empty) or _codecs.encode(text, 'latin1');
  // the error names the global as the file spells it.
  assertPickleError(() => load('plain_p2.pkl', { globals: [] }), 'ERR_UNSAFE_PICKLE', /"__builtin__\.bytes"/);
  // A whitelisted global with no implementation is a value only: calling it is refused.
  const valueOnly = [{ module: 'builtins', name: 'set' }];
  assertPickleError(() => load('plain_p3.pkl', { globals: [...PLAIN_DATA_GLOBALS.filter((g) => g.name !== 'set'), ...valueOnly] }), 'ERR_UNSAFE_PICKLE', /refusing REDUCE on pickle global "builtins\.set"/);
});

// ---- damaged input -----------------------------------------------------------------------------------

test('every truncation of a pickle is reported as truncated, never a crash or a hang', () => {
  const names = ['plain_p0.pkl', 'plain_p2.pkl', 'plain_p4.pkl', 'plain_p5.pkl', ...Object.keys(manifest.values)];
  for (const name of names) {
    const bytes = read(name);
    // All short prefixes; for the long files every 13th prefix past the first 512 bytes.
    for (let n = 0; n < bytes.length; n += n < 512 ? 1 : 13) {
      assertPickleError(
        () => unpickle(bytes.subarray(0, n), { globals: PLAIN_DATA_GLOBALS, persistentLoad }),
        'ERR_BAD_CHECKPOINT',
        /truncated pickle at byte \d+/,
      );
    }
  }
});

test('randomly corrupted pickles either load or fail with a MicroGPTError', () => {
  let seed = 12345;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const sources = ['plain_p0.pkl', 'plain_p2.pkl', 'plain_p4.pkl', 'handmade_text.pkl', 'handmade_bin.pkl', 'handmade_p4.pkl'].map(read);
  let failures = 0;
  for (let trial = 0; trial < 3000; trial++) {
    const bytes = Uint8Array.from(sources[trial % sources.length] as Uint8Array);
    const flips = 1 + Math.floor(random() * 4);
    for (let k = 0; k < flips; k++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
    try {
      unpickle(bytes, { globals: PLAIN_DATA_GLOBALS, persistentLoad });
    } catch (err) {
      assert.ok(err instanceof MicroGPTError, `trial ${trial}: ${String(err)}`);
      failures++;
    }
  }
  assert.ok(failures > 100, 'the corruption should break most inputs');
});

test('malformed opcode streams give precise errors', () => {
  const bad = (bytes: number[] | string, pattern: RegExp, code = 'ERR_BAD_CHECKPOINT', options: UnpickleOptions = {}) =>
    assertPickleError(
      () => unpickle(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : Uint8Array.from(bytes), options),
      code,
      pattern,
    );
  bad([0x80, 0x02, 0xff, 0x2e], /bad pickle at byte 2: unknown opcode 0xff/);
  bad([0x80, 0x06, 0x4e, 0x2e], /unsupported pickle protocol 6/);
  bad('a.', /stack underflow in APPEND/);
  bad('0.', /stack underflow in POP/);
  bad('t.', /TUPLE without a MARK/);
  bad('}(K\x01u.', /SETITEMS has an odd number of items/);
  bad(']K\x01K\x02s.', /SETITEM needs a dict, got list/);
  bad('h\x05.', /memo has no entry 5/);
  bad('g7\n.', /memo has no entry 7/);
  bad('p-1\nN.', /bad memo index/);
  bad('F1e400\n.', /out of range/);
  bad('Fabc\n.', /bad float literal/);
  bad('I12x\n.', /bad integer literal/);
  bad('S\'abc\n.', /must be quoted/);
  bad('X\x02\x00\x00\x00\xc3\x28.', /not valid UTF-8/);
  bad('\x80\x05\x97.', /out-of-band buffers/);
  bad('Vbad \\U00110000\n.', /beyond U\+10FFFF/);
  bad('\x8b\xff\xff\xff\xff.', /negative byte count/);
  bad('N', /truncated pickle at byte 1 \(the input ended before the STOP opcode\)/);
  // A length far beyond the input is truncation, and nothing of that size is allocated.
  bad('\x8d\xff\xff\xff\xff\xff\xff\xff\x7f.', /truncated pickle at byte 0 \(BINUNICODE8 of \d+ bytes, \d+ left\)/);
  bad('\x95\x00\x00\x00\x00\x00\x01\x00\x00N.', /truncated pickle at byte 0 \(FRAME of/);
});

test('limits bound the stack, the memo, integers and the input', () => {
  const many = (op: string, n: number) => Buffer.from(op.repeat(n) + '.', 'latin1');
  assertPickleError(() => unpickle(many('N', 100), { limits: { maxStackSize: 50 } }), 'ERR_BAD_CHECKPOINT', /stack grew past the limit of 50/);
  assertPickleError(() => unpickle(many('(', 100), { limits: { maxStackSize: 50 } }), 'ERR_BAD_CHECKPOINT', /stack grew past the limit/);
  const memo = Buffer.from('N' + Array.from({ length: 20 }, (_, i) => `p${i}\n`).join('') + '.', 'latin1');
  assertPickleError(() => unpickle(memo, { limits: { maxMemoSize: 10 } }), 'ERR_BAD_CHECKPOINT', /memo grew past the limit of 10/);
  assert.equal(unpickle(memo), null);
  const long4 = Buffer.concat([Buffer.from([0x8b, 0x00, 0x01, 0x00, 0x00]), Buffer.alloc(256), Buffer.from('.')]);
  assertPickleError(() => unpickle(long4, { limits: { maxIntegerBytes: 128 } }), 'ERR_BAD_CHECKPOINT', /integer of 256 bytes/);
  assert.equal(unpickle(long4), 0);
  assertPickleError(() => unpickle(Buffer.from(`L${'9'.repeat(5000)}\n.`)), 'ERR_BAD_CHECKPOINT', /5000 digits is too long/);
  assertPickleError(() => unpickle(many('N', 100), { limits: { maxInputBytes: 64 } }), 'ERR_BAD_CHECKPOINT', /101 bytes, more than the limit of 64/);
});

test('ints become numbers inside the safe range and bigints outside it', () => {
  const ints = (load('plain_p2.pkl') as Map<string, unknown>).get('ints') as unknown[];
  for (const value of ints) {
    const safe = typeof value === 'number';
    assert.ok(safe ? Number.isSafeInteger(value) : typeof value === 'bigint' && (value > 2n ** 53n - 1n || value < -(2n ** 53n - 1n)), String(value));
  }
});

// ---- hostile work, depth and names -------------------------------------------------------------------

/** Protocol 2: a memoized list of `pairs` (i, None) pairs handed to OrderedDict `calls` times, each result popped. */
function repeatedOrderedDict(pairs: number, calls: number): Buffer {
  const parts = [Buffer.from('\x80\x02ccollections\nOrderedDict\nq\x00]q\x01(', 'latin1')];
  const pair = Buffer.from('J\x00\x00\x00\x00N\x86', 'latin1');
  for (let i = 0; i < pairs; i++) {
    pair.writeInt32LE(i, 1);
    parts.push(Buffer.from(pair));
  }
  parts.push(Buffer.from('e', 'latin1'));
  const call = Buffer.from('h\x00h\x01\x85R0', 'latin1'); // OrderedDict((list,)), then POP
  for (let i = 0; i < calls; i++) parts.push(call);
  parts.push(Buffer.from('N.', 'latin1'));
  return Buffer.concat(parts);
}

test('the total work is bounded by the input: a memoized list handed to OrderedDict over and over is refused', () => {
  // 2.8 MB that would make 200,000 dicts of 200,000 entries: 4e10 steps, hours of work, before the limit.
  const bytes = repeatedOrderedDict(200_000, 200_000);
  assert.ok(bytes.length < 3_000_000);
  assertPickleError(
    () => unpickle(bytes, { globals: [ORDERED_DICT_GLOBAL], source: 'quadratic.pkl' }),
    'ERR_BAD_CHECKPOINT',
    /^quadratic\.pkl: bad pickle at byte \d+: unpickling exceeds its work limit of \d+ \(container items built, copied or visited: 4 per input byte \+ 1000000, at most 16000000\)/,
  );
  // The same pickle with a few calls is fine: the limit is on repetition, not on the list.
  assert.equal(unpickle(repeatedOrderedDict(200_000, 3), { globals: [ORDERED_DICT_GLOBAL] }), null);
});

test('every whitelisted global is charged for the items of its arguments', () => {
  let calls = 0;
  const count: PickleGlobal = { module: 'm', name: 'count', call: (args) => (calls++, (args[0] as unknown[]).length) };
  // A 10,000-item list, then count(list) 2,000 times: 20 million items for 30 KB.
  const list = Buffer.concat([Buffer.from('\x80\x02cm\ncount\nq\x00]q\x01(', 'latin1'), Buffer.from('N'.repeat(10_000), 'latin1'), Buffer.from('e', 'latin1')]);
  const bytes = Buffer.concat([list, Buffer.from('h\x00h\x01\x85R0'.repeat(2000), 'latin1'), Buffer.from('N.', 'latin1')]);
  assertPickleError(() => unpickle(bytes, { globals: [count] }), 'ERR_BAD_CHECKPOINT', /work limit of \d+/);
  assert.ok(calls < 200, `${calls} calls ran`);
  // The limit is a setting; small pickles get the base allowance.
  const items = Buffer.from('](' + 'N'.repeat(100) + 'e.', 'latin1');
  assertPickleError(() => unpickle(items, { limits: { workPerInputByte: 0, baseWork: 50 } }), 'ERR_BAD_CHECKPOINT', /work limit of 50 \(container items built, copied or visited: 0 per input byte \+ 50, at most 16000000\)/);
  assert.equal((unpickle(items) as unknown[]).length, 100);
});

test('containers built are charged too, and the work has a ceiling, so memory is bounded whatever the input size', () => {
  // 10,000 empty dicts, about 2 MB of Maps from 10 kB: each is charged as 8 items.
  const dicts = Buffer.from('](' + '}'.repeat(10_000) + 'e.', 'latin1');
  assertPickleError(() => unpickle(dicts, { limits: { maxWork: 50_000 } }), 'ERR_BAD_CHECKPOINT', /work limit of 50000 \(container items built, copied or visited: 4 per input byte \+ 1000000, at most 50000\)/);
  assertPickleError(() => unpickle(dicts, { limits: { baseWork: 0, workPerInputByte: 8 } }), 'ERR_BAD_CHECKPOINT', /work limit of 80032 \(/);
  assert.equal((unpickle(dicts) as unknown[]).length, 10_000);
});

test('a str starting with U+FEFF keeps it', () => {
  // TextDecoder drops a leading byte-order mark unless told not to.
  assert.equal(unpickle(Buffer.from('X\x04\x00\x00\x00\xef\xbb\xbfa.', 'latin1')), '\ufeffa');
  assert.equal(unpickle(Buffer.from('\x8c\x03\xef\xbb\xbf.', 'latin1')), '\ufeff');
});

test('nesting depth costs no stack: 500,000 nested lists load', () => {
  const depth = 500_000;
  let value = unpickle(Buffer.from('('.repeat(depth) + 'l'.repeat(depth) + '.', 'latin1'));
  for (let d = 0; d < depth; d++) {
    assert.ok(Array.isArray(value));
    value = value.length === 0 ? null : value[0];
  }
  assert.equal(value, null);
});

test('an error of any kind inside unpickling is a one-line MicroGPTError', () => {
  const persistentLoad = () => {
    throw new TypeError('the callback failed\non two lines');
  };
  assert.throws(
    () => unpickle(Buffer.from('K\x01Q.', 'latin1'), { persistentLoad, source: 'p.pkl' }),
    (err: unknown) => {
      assert.ok(err instanceof MicroGPTError);
      assert.equal(err.message, 'p.pkl: cannot unpickle at byte 2 (the callback failed)');
      assert.ok(err.cause instanceof TypeError);
      return true;
    },
  );
});

test('a global named in the file is quoted, so the refusal stays one line', () => {
  // STACK_GLOBAL takes its names from strings, which may hold newlines.
  const bytes = Buffer.from('\x80\x04\x8c\x0bposix\nshell\x8c\x06system\x93.', 'latin1');
  assertPickleError(() => unpickle(bytes), 'ERR_UNSAFE_PICKLE', /refusing pickle global "posix\\nshell\.system": this pickle may hold only plain data/);
});
