/**
 * Seeded mutations for the fuzzer: generic byte edits (as AFL's havoc stage), and edits that know
 * the formats' records, so that most cases get past the outer checks (lengths, CRCs, JSON) and
 * reach the parsing behind them.
 */

/** mulberry32: small, fast and fully determined by its seed, so a case replays from (seed, index). */
export class FuzzRng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return n <= 1 ? 0 : Math.floor((this.u32() / 2 ** 32) * n);
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)] as T;
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** The seed of case `index` of a run seeded `seed`: each case is replayable on its own. */
export function caseSeed(seed: number, index: number): number {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca77)) >>> 0;
}

/** Values that sit on the edges of size fields. */
const INTERESTING_32 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const INTERESTING_64 = [0n, 1n, 0x7fffffffn, 0xffffffffn, 0x100000000n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n];

function interesting32(rng: FuzzRng, near: number): number {
  // Values near the field's own value (off-by-one and small skews) are as useful as the edges.
  if (rng.chance(0.3)) return (near + rng.below(33) - 16) >>> 0;
  if (rng.chance(0.1)) return rng.u32();
  return rng.pick(INTERESTING_32);
}

/** One to `max` havoc edits: bit flips, interesting integers, deletions, duplications, insertions, truncation. */
export function havoc(input: Uint8Array, rng: FuzzRng, max = 4): Uint8Array {
  let b = Buffer.from(input);
  const edits = 1 + rng.below(max);
  for (let e = 0; e < edits; e++) {
    const n = b.length;
    const at = rng.below(Math.max(n, 1));
    switch (rng.below(9)) {
      case 0:
        if (n > 0) b[at] = (b[at] as number) ^ (1 << rng.below(8));
        break;
      case 1:
        if (n > 0) b[at] = rng.pick([0, 0xff, 0x7f, 0x80, 0x01, rng.u32() & 0xff]);
        break;
      case 2:
        if (at + 4 <= n) b.writeUInt32LE(interesting32(rng, b.readUInt32LE(at)), at);
        break;
      case 3:
        if (at + 8 <= n) b.writeBigUInt64LE(rng.pick(INTERESTING_64), at);
        break;
      case 4: {
        const len = 1 + rng.below(Math.min(64, Math.max(1, n - at)));
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(n, at + len))]);
        break;
      }
      case 5: {
        const len = 1 + rng.below(64);
        const from = rng.below(Math.max(1, n - len));
        b = Buffer.concat([b.subarray(0, at), b.subarray(from, from + len), b.subarray(at)]);
        break;
      }
      case 6:
        b = Buffer.concat([b.subarray(0, at), Buffer.from(rng.bytes(1 + rng.below(16))), b.subarray(at)]);
        break;
      case 7:
        b = b.subarray(0, rng.below(n + 1));
        break;
      default:
        if (at + 2 <= n) b.writeUInt16LE(interesting32(rng, b.readUInt16LE(at)) & 0xffff, at);
    }
  }
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

/**
 * Edits a field of a zip record: a local header, a central-directory header, a (zip64) end record
 * or locator, found by their signatures, so the edits land on offsets, sizes and counts.
 */
export function mutateZipRecords(input: Uint8Array, rng: FuzzRng): Uint8Array {
  const b = Buffer.from(input);
  const signatures = [0x04034b50, 0x02014b50, 0x06054b50, 0x06064b50, 0x07064b50];
  const records: number[] = [];
  for (let i = 0; i + 4 <= b.length; i++) if (signatures.includes(b.readUInt32LE(i))) records.push(i);
  if (records.length === 0) return havoc(input, rng);
  const edits = 1 + rng.below(3);
  for (let e = 0; e < edits; e++) {
    const start = rng.pick(records);
    const at = start + 4 + rng.below(42);
    const width = rng.pick([2, 4, 8]);
    if (at + width > b.length) continue;
    if (width === 2) b.writeUInt16LE(interesting32(rng, b.readUInt16LE(at)) & 0xffff, at);
    else if (width === 4) b.writeUInt32LE(interesting32(rng, b.readUInt32LE(at)), at);
    else b.writeBigUInt64LE(rng.pick(INTERESTING_64), at);
  }
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

// ---- pickle -------------------------------------------------------------------------------------

function u32le(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

/** Short, well-formed opcodes with arguments, and the names of globals a checkpoint may hold. */
function randomOpcode(rng: FuzzRng): number[] {
  const str = (s: string) => [...Buffer.from(s, 'utf8')];
  switch (rng.below(24)) {
    case 0: return [0x28]; // MARK
    case 1: return [0x5d]; // EMPTY_LIST
    case 2: return [0x7d]; // EMPTY_DICT
    case 3: return [0x29]; // EMPTY_TUPLE
    case 4: return [rng.pick([0x61, 0x65])]; // APPEND, APPENDS
    case 5: return [rng.pick([0x73, 0x75])]; // SETITEM, SETITEMS
    case 6: return [rng.pick([0x74, 0x85, 0x86, 0x87])]; // TUPLE, TUPLE1..3
    case 7: return [0x4a, ...u32le(interesting32(rng, 0))]; // BININT
    case 8: return [0x4b, rng.u32() & 0xff]; // BININT1
    case 9: { const n = rng.below(12); return [0x8a, n, ...rng.bytes(n)]; } // LONG1
    case 10: { const s = str(rng.pick(['a', 'model', 'storage', 'cpu', 'model_args', 'block_size', 'n_embd', 'transformer.wte.weight'])); return [0x8c, s.length, ...s]; }
    case 11: return [0x58, ...u32le(interesting32(rng, 4))]; // BINUNICODE with a lying length
    case 12: return [0x94]; // MEMOIZE
    case 13: return [0x68, rng.below(16)]; // BINGET
    case 14: return [0x6a, ...u32le(interesting32(rng, 1))]; // LONG_BINGET
    case 15: return [0x71, rng.below(16)]; // BINPUT
    case 16: return [rng.pick([0x32, 0x30, 0x31])]; // DUP, POP, POP_MARK
    case 17: return [rng.pick([0x52, 0x62, 0x81])]; // REDUCE, BUILD, NEWOBJ
    case 18: {
      const [m, n] = rng.pick([
        ['collections', 'OrderedDict'], ['torch._utils', '_rebuild_tensor_v2'], ['torch', 'FloatStorage'], ['torch', 'HalfStorage'],
        ['torch._utils', '_rebuild_parameter'], ['builtins', 'set'], ['os', 'system'], ['__builtin__', 'eval'], ['torch', 'Size'],
      ]) as [string, string];
      return [0x63, ...str(`${m}\n${n}\n`)]; // GLOBAL
    }
    case 19: return [0x93]; // STACK_GLOBAL
    case 20: return [0x95, ...u32le(interesting32(rng, 0)), 0, 0, 0, 0]; // FRAME
    case 21: return [0x51]; // BINPERSID
    case 22: return [rng.pick([0x4e, 0x88, 0x89])]; // NONE, NEWTRUE, NEWFALSE
    default: return [0x2e]; // STOP
  }
}

/**
 * Pickle edits: havoc, random opcodes inserted, a stretch repeated many times (the shape of
 * quadratic-work attacks: one memoized object handed to a constructor again and again).
 */
export function mutatePickle(input: Uint8Array, rng: FuzzRng): Uint8Array {
  let b = Buffer.from(input);
  const edits = 1 + rng.below(3);
  for (let e = 0; e < edits; e++) {
    const at = rng.below(b.length + 1);
    switch (rng.below(4)) {
      case 0:
        b = Buffer.from(havoc(b, rng, 2));
        break;
      case 1: {
        const ops: number[] = [];
        for (let k = 1 + rng.below(6); k > 0; k--) ops.push(...randomOpcode(rng));
        b = Buffer.concat([b.subarray(0, at), Buffer.from(ops), b.subarray(at)]);
        break;
      }
      case 2: {
        const len = 1 + rng.below(24);
        const from = rng.below(Math.max(1, b.length - len));
        const piece = b.subarray(from, from + len);
        const times = rng.pick([2, 16, 1000, 20000]);
        b = Buffer.concat([b.subarray(0, at), ...Array<Buffer>(times).fill(piece), b.subarray(at)]);
        break;
      }
      default: {
        // Deep nesting: MARK or EMPTY_LIST + APPEND chains.
        const depth = rng.pick([100, 10_000, 100_000]);
        const open = Buffer.alloc(depth, rng.chance(0.5) ? 0x28 : 0x5d);
        b = Buffer.concat([b.subarray(0, at), open, b.subarray(at)]);
      }
    }
  }
  return new Uint8Array(b.buffer, b.byteOffset, b.length);
}

// ---- safetensors --------------------------------------------------------------------------------

const INTERESTING_JSON: readonly unknown[] = [
  0, -1, 1, 2 ** 31, 2 ** 32, 2 ** 53, 1e308, -1e308, 0.5, NaN, null, true, '', 'F32', 'F16', 'BF16', 'F64', 'I64', 'U8',
  [], [0], [-1], [2 ** 53, 2 ** 53], [1, 2, 3, 4, 5, 6, 7, 8, 9], {}, 'x'.repeat(10_000), '\n', '{"vocabSize":1e9}',
];

/** Edits the safetensors header as JSON (a value, a key, an offset pair), then re-frames it. */
export function mutateSafetensors(input: Uint8Array, rng: FuzzRng): Uint8Array {
  const b = Buffer.from(input);
  if (b.length < 8 || rng.chance(0.25)) return havoc(input, rng);
  const headerLength = Number(b.readBigUInt64LE(0));
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(b.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, unknown>;
  } catch {
    return havoc(input, rng);
  }
  const data = b.subarray(8 + headerLength);
  const edits = 1 + rng.below(3);
  for (let e = 0; e < edits; e++) {
    const key = rng.pick(Object.keys(header));
    const entry = header[key];
    if (key === '__metadata__' && typeof entry === 'object' && entry !== null) {
      const meta = entry as Record<string, unknown>;
      const field = rng.pick(Object.keys(meta));
      const value = meta[field];
      if (field === 'config' && typeof value === 'string' && rng.chance(0.7)) {
        const config = JSON.parse(value) as Record<string, unknown>;
        config[rng.pick(Object.keys(config))] = rng.pick(INTERESTING_JSON);
        meta[field] = JSON.stringify(config);
      } else if (field === 'vocab' && typeof value === 'string' && rng.chance(0.5)) {
        const vocab = JSON.parse(value) as unknown[];
        vocab[rng.below(vocab.length + 1)] = rng.pick(INTERESTING_JSON);
        meta[field] = JSON.stringify(vocab);
      } else {
        meta[field] = rng.pick(INTERESTING_JSON);
      }
    } else if (typeof entry === 'object' && entry !== null && rng.chance(0.8)) {
      const tensor = entry as Record<string, unknown>;
      const field = rng.pick(['dtype', 'shape', 'data_offsets', 'data_offsets', 'shape']);
      if (field === 'data_offsets' && Array.isArray(tensor[field]) && rng.chance(0.6)) {
        const offsets = tensor[field] as number[];
        offsets[rng.below(2)] = interesting32(rng, offsets[0] ?? 0);
      } else {
        tensor[field] = rng.pick(INTERESTING_JSON);
      }
    } else if (rng.chance(0.5)) {
      delete header[key];
    } else {
      header[`${key}${rng.pick(['', '.x', '\n'])}`] = rng.pick(INTERESTING_JSON);
    }
  }
  const text = Buffer.from(JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(rng.chance(0.1) ? text.length + rng.below(9) - 4 : text.length));
  const out = Buffer.concat([length, text, data]);
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}
