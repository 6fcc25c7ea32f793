/**
 * A restricted unpickler: it parses Python pickles (protocols 0–5) into plain JavaScript values and
 * never runs anything from them. Python's unpickler is a small stack machine whose GLOBAL opcode
 * imports any callable and whose REDUCE opcode calls it, which is how a pickle runs code. Here a
 * global resolves only against a whitelist the caller supplies, and each whitelisted global is a
 * TypeScript function of ours; every other global is refused with ERR_UNSAFE_PICKLE.
 *
 * Python values map to JavaScript as follows:
 *   None → null, bool → boolean, float → number,
 *   int → number when it is a safe integer, else bigint,
 *   str → string, bytes → Uint8Array, bytearray → PickleByteArray,
 *   tuple → PickleTuple, list → Array, dict → Map (keys keep their types: 0 and '0' differ),
 *   set → Set, frozenset → PickleFrozenSet, a global used as a value → PickleGlobalRef.
 * Shared and recursive references are kept: the memo hands out the same JavaScript object.
 *
 * Every size read from the input is checked against the bytes that remain, and the stack, the
 * memo and integer sizes are bounded, so a hostile or truncated pickle ends in a MicroGPTError
 * instead of a hang, a huge allocation or a crash. So is the total work: a few bytes can hand a
 * memoized container of a million items to a constructor again and again, so every step that
 * touches a container's items is charged for them against a budget proportional to the input.
 * The machine is a loop, never recursion, so nesting depth costs no stack.
 */
import { describe } from '../config.js';
import { MicroGPTError } from '../errors.js';

// ---- values ----------------------------------------------------------------------------------

/** A Python tuple. Its items are frozen, as a tuple is immutable. */
export class PickleTuple {
  readonly items: readonly unknown[];

  constructor(items: unknown[]) {
    this.items = Object.freeze(items);
  }

  get length(): number {
    return this.items.length;
  }
}

/** A Python frozenset (a JavaScript Set cannot be made read-only, so it is wrapped). */
export class PickleFrozenSet {
  readonly values: ReadonlySet<unknown>;

  constructor(values: Iterable<unknown>) {
    this.values = new Set(values);
  }
}

/** A Python bytearray, kept apart from bytes (Uint8Array) so the two stay distinguishable. */
export class PickleByteArray {
  constructor(readonly bytes: Uint8Array) {}
}

/** What the unpickler reports about where a whitelisted function is being applied. */
export interface PickleContext {
  /** Names the input in messages, e.g. a file path. */
  readonly source: string;
  /** Byte offset of the opcode being executed. */
  readonly offset: number;
}

/** One whitelisted global: a Python `module.name` with our own implementation of it. */
export interface PickleGlobal {
  readonly module: string;
  readonly name: string;
  /**
   * Implements calling the global, `global(*args)` (REDUCE, INST, OBJ). Absent: the global is only
   * a value, such as a type tag passed to persistent_load, and calling it is refused.
   */
  readonly call?: (args: readonly unknown[], context: PickleContext) => unknown;
  /**
   * Implements `cls.__new__(cls, *args, **kwargs)` (NEWOBJ, NEWOBJ_EX), which Python's pickler emits
   * for objects reduced through copyreg.__newobj__. It differs from `call` (set.__new__(set, [1])
   * is empty), so it is separate. Absent: NEWOBJ on this global is refused.
   */
  readonly newObject?: (args: readonly unknown[], kwargs: ReadonlyMap<unknown, unknown>, context: PickleContext) => unknown;
  /** Implements BUILD (setting state) on an object `call` returned. Absent: BUILD is refused. */
  readonly setState?: (object: unknown, state: unknown, context: PickleContext) => void;
}

/** A resolved whitelisted global, as it sits on the stack or inside a value. */
export class PickleGlobalRef {
  constructor(readonly definition: PickleGlobal) {}

  get module(): string {
    return this.definition.module;
  }

  get name(): string {
    return this.definition.name;
  }

  get qualifiedName(): string {
    return `${this.definition.module}.${this.definition.name}`;
  }
}

export interface PickleLimits {
  /** Longest input accepted. */
  readonly maxInputBytes: number;
  /** Most objects on the stack plus open MARKs at any time. */
  readonly maxStackSize: number;
  /** Most distinct memo entries. */
  readonly maxMemoSize: number;
  /** Longest integer, in bytes of two's complement (LONG1/LONG4) or its text equivalent. */
  readonly maxIntegerBytes: number;
  /**
   * Work allowed per input byte, counted in container items built, copied or visited, plus
   * DICT_WORK per dict or set and SEQUENCE_WORK per list or tuple built. Python's pickler touches
   * each item at most twice (built, then handed to a constructor), and an item takes at least a
   * byte; nanoGPT's checkpoints need under 1 per byte, a vocabulary of every code point 0.2.
   */
  readonly workPerInputByte: number;
  /** Work allowed on top of workPerInputByte, so that small pickles are never short of it. */
  readonly baseWork: number;
  /**
   * Work allowed in all, whatever the input's size. What a pickle makes us hold is at most some
   * 40 bytes per unit of work (a dict entry), so this bounds its memory too: some 640 MB by default.
   */
  readonly maxWork: number;
}

/**
 * Far above what nanoGPT's files need (a gpt2 checkpoint's data.pkl is tens of kilobytes; Python's
 * pickler keeps the stack short by batching APPENDS and SETITEMS by 1000).
 */
export const DEFAULT_PICKLE_LIMITS: PickleLimits = {
  maxInputBytes: 256 * 1024 * 1024,
  maxStackSize: 1_000_000,
  maxMemoSize: 4_000_000,
  maxIntegerBytes: 65_536,
  workPerInputByte: 4,
  baseWork: 1_000_000,
  maxWork: 16_000_000,
};

export interface UnpickleOptions {
  /** The only globals the pickle may name. Default: none, so the pickle must be plain data. */
  readonly globals?: readonly PickleGlobal[];
  /**
   * Resolves persistent ids (PERSID, BINPERSID); PyTorch uses them for tensor storages. Without it,
   * a persistent id is an error, as in Python.
   */
  readonly persistentLoad?: (pid: unknown, context: PickleContext) => unknown;
  /** Names the input in error messages. Default "pickle". */
  readonly source?: string;
  readonly limits?: Partial<PickleLimits>;
}

/** Parses one pickle from `bytes` and returns its value. Bytes after STOP are ignored, as by Python. */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions = {}): unknown {
  return new Unpickler(bytes, options).load();
}

// ---- helpers for callers -----------------------------------------------------------------------

/** A MicroGPTError for malformed pickle data at the given place. */
export function pickleDataError(context: PickleContext, message: string): MicroGPTError {
  return new MicroGPTError('ERR_BAD_CHECKPOINT', `${context.source}: bad pickle at byte ${context.offset}: ${message}`);
}

/** Python's name for the type of an unpickled value, for error messages. */
export function describePickleValue(value: unknown): string {
  if (value === null) return 'None';
  if (typeof value === 'boolean') return 'bool';
  if (typeof value === 'bigint') return 'int';
  if (typeof value === 'number') return Number.isInteger(value) ? 'int or float' : 'float';
  if (typeof value === 'string') return 'str';
  if (value instanceof Uint8Array) return 'bytes';
  if (value instanceof PickleByteArray) return 'bytearray';
  if (value instanceof PickleTuple) return 'tuple';
  if (Array.isArray(value)) return 'list';
  if (value instanceof Map) return 'dict';
  if (value instanceof Set) return 'set';
  if (value instanceof PickleFrozenSet) return 'frozenset';
  if (value instanceof PickleGlobalRef) return `global ${value.qualifiedName}`;
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}

/** A Python int as a JavaScript integer number, or null if it is not one that fits. */
export function pickleInt(value: unknown): number | null {
  return typeof value === 'number' && Number.isSafeInteger(value) ? value : null;
}

/**
 * Python's `collections.OrderedDict` as a Map (Maps keep insertion order). BUILD state, which
 * for a module's state_dict() is only the `_metadata` version attribute, is checked and dropped.
 */
export const ORDERED_DICT_GLOBAL: PickleGlobal = {
  module: 'collections',
  name: 'OrderedDict',
  call: (args, context) => {
    if (args.length === 0) return new Map();
    const [pairs] = args;
    if (args.length === 1 && (Array.isArray(pairs) || pairs instanceof PickleTuple)) {
      const map = new Map<unknown, unknown>();
      for (const pair of Array.isArray(pairs) ? pairs : pairs.items) {
        const kv = pair instanceof PickleTuple ? pair.items : Array.isArray(pair) ? pair : null;
        if (kv === null || kv.length !== 2) {
          throw pickleDataError(context, 'collections.OrderedDict expects a sequence of key-value pairs');
        }
        map.set(kv[0], kv[1]);
      }
      return map;
    }
    throw pickleDataError(context, 'collections.OrderedDict expects no argument or a sequence of pairs');
  },
  setState: (_object, state, context) => {
    const attributes = state instanceof PickleTuple && state.length === 2 ? state.items[0] : state;
    if (attributes !== null && !(attributes instanceof Map)) {
      throw pickleDataError(context, `OrderedDict state must be a dict, got ${describePickleValue(attributes)}`);
    }
  },
};

/**
 * The builtins Python's pickler uses for plain data in the older protocols: sets and frozensets
 * before protocol 4, bytearray before 5, and bytes before 3 (as `_codecs.encode(latin1 text)`).
 * Each one builds only the data value; none can reach anything else.
 */
export const PLAIN_DATA_GLOBALS: readonly PickleGlobal[] = [
  {
    module: 'builtins',
    name: 'set',
    call: (args, context) => new Set(singleIterableArgument('set', args, context)),
  },
  {
    module: 'builtins',
    name: 'frozenset',
    call: (args, context) => new PickleFrozenSet(singleIterableArgument('frozenset', args, context)),
  },
  {
    module: 'builtins',
    name: 'bytearray',
    call: (args, context) => {
      if (args.length === 0) return new PickleByteArray(new Uint8Array(0));
      const [data] = args;
      if (args.length === 1 && data instanceof Uint8Array) return new PickleByteArray(data.slice());
      throw pickleDataError(context, 'bytearray expects no argument or one bytes argument');
    },
  },
  {
    module: 'builtins',
    name: 'bytes',
    call: (args, context) => {
      if (args.length === 0) return new Uint8Array(0);
      throw pickleDataError(context, 'bytes expects no argument here (non-empty bytes use _codecs.encode)');
    },
  },
  {
    module: '_codecs',
    name: 'encode',
    call: (args, context) => {
      const [text, encoding] = args;
      if (args.length !== 2 || typeof text !== 'string' || (encoding !== 'latin1' && encoding !== 'latin-1')) {
        throw pickleDataError(context, '_codecs.encode is supported only as encode(str, "latin1"), which pickles bytes');
      }
      const out = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) {
        const code = text.charCodeAt(i);
        if (code > 0xff) throw pickleDataError(context, `_codecs.encode: character U+${hex(code, 4)} is not latin-1`);
        out[i] = code;
      }
      return out;
    },
  },
  ORDERED_DICT_GLOBAL,
];

function singleIterableArgument(name: string, args: readonly unknown[], context: PickleContext): Iterable<unknown> {
  if (args.length === 0) return [];
  const [items] = args;
  if (args.length === 1) {
    if (Array.isArray(items)) return items;
    if (items instanceof PickleTuple) return items.items;
    if (items instanceof Set) return items;
    if (items instanceof PickleFrozenSet) return items.values;
  }
  throw pickleDataError(context, `${name} expects no argument or one list, tuple or set`);
}

// ---- the machine -------------------------------------------------------------------------------

const HIGHEST_PROTOCOL = 5;
/** Python 3.11+ refuses to convert longer decimal strings to int (sys.int_info.default_max_str_digits). */
const MAX_DECIMAL_DIGITS = 4300;
/**
 * Work charged for building a dict or set, and a list or tuple, besides their items: in memory an
 * empty Map is worth some eight list items, so a pickle of empty dicts cannot outgrow the budget.
 */
const DICT_WORK = 8;
const SEQUENCE_WORK = 2;
/** Most significant digits of a 64-bit strtol literal (22 in octal). */
const MAX_LONG_SIGNIFICANT_DIGITS = 22;

/** ignoreBOM: a leading U+FEFF is part of the text, not a marker to drop. */
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Thrown internally when the input ends early; turned into the public message by load(). */
class Truncated extends Error {}

class Unpickler {
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private readonly source: string;
  private readonly limits: PickleLimits;
  private readonly globals: ReadonlyMap<string, PickleGlobal>;
  private readonly persistentLoad: UnpickleOptions['persistentLoad'];

  private pos = 0;
  /** Offset of the opcode being executed, for messages. */
  private opStart = 0;
  private protocol = 0;
  private readonly stack: unknown[] = [];
  /** Stack heights at each open MARK; the items above the last one form the current segment. */
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, unknown>();
  /** Which global built an object, so BUILD can go only to that global's setState. */
  private readonly builtBy = new WeakMap<object, PickleGlobal>();
  private readonly maxWork: number;
  private work = 0;

  constructor(bytes: Uint8Array, options: UnpickleOptions) {
    this.source = options.source ?? 'pickle';
    this.limits = { ...DEFAULT_PICKLE_LIMITS, ...options.limits };
    if (bytes.length > this.limits.maxInputBytes) {
      throw new MicroGPTError(
        'ERR_BAD_CHECKPOINT',
        `${this.source}: pickle is ${bytes.length} bytes, more than the limit of ${this.limits.maxInputBytes}`,
      );
    }
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const globals = new Map<string, PickleGlobal>();
    for (const g of options.globals ?? []) globals.set(globalKey(g.module, g.name), g);
    this.globals = globals;
    this.persistentLoad = options.persistentLoad;
    this.maxWork = Math.min(this.limits.maxWork, this.limits.workPerInputByte * bytes.length + this.limits.baseWork);
  }

  load(): unknown {
    try {
      for (;;) {
        this.opStart = this.pos;
        if (this.remaining === 0) throw new Truncated('the input ended before the STOP opcode');
        const op = this.u8();
        if (op === 0x2e /* STOP '.' */) return this.pop('STOP');
        this.execute(op);
      }
    } catch (err) {
      if (err instanceof Truncated) {
        throw new MicroGPTError('ERR_BAD_CHECKPOINT', `${this.source}: truncated pickle at byte ${this.opStart} (${err.message})`);
      }
      if (err instanceof MicroGPTError) throw err;
      // A RangeError (a container too large for JavaScript, memory) or an error of a caller's callback.
      const message = (err instanceof Error ? err.message : String(err)).split('\n', 1)[0] as string;
      throw new MicroGPTError('ERR_BAD_CHECKPOINT', `${this.source}: cannot unpickle at byte ${this.opStart} (${message})`, { cause: err });
    }
  }

  private get context(): PickleContext {
    return { source: this.source, offset: this.opStart };
  }

  private charge(units: number): void {
    this.work += units;
    if (this.work > this.maxWork) {
      throw this.fail(
        `unpickling exceeds its work limit of ${this.maxWork} (container items built, copied or visited: ` +
          `${this.limits.workPerInputByte} per input byte + ${this.limits.baseWork}, at most ${this.limits.maxWork}); ` +
          'the pickle builds or copies far more than its size holds, which no checkpoint does',
      );
    }
  }

  /** Not private: the protocol-0 text decoders below report through it. */
  fail(message: string): MicroGPTError {
    return pickleDataError(this.context, message);
  }

  // -- opcodes --

  private execute(op: number): void {
    switch (op) {
      // framing and protocol
      case 0x80: { // PROTO
        const version = this.u8();
        if (version > HIGHEST_PROTOCOL) throw this.fail(`unsupported pickle protocol ${version}`);
        this.protocol = version;
        return;
      }
      case 0x95: { // FRAME: a length prefix that only helps buffered readers; check it and go on.
        const length = this.u64('FRAME');
        if (length > this.remaining) throw new Truncated(`FRAME of ${length} bytes, ${this.remaining} left`);
        return;
      }

      // constants and numbers
      case 0x4e: return this.push(null); // NONE
      case 0x88: return this.push(true); // NEWTRUE
      case 0x89: return this.push(false); // NEWFALSE
      case 0x49: return this.push(this.textInt()); // INT
      case 0x4c: return this.push(this.textLong()); // LONG
      case 0x4a: return this.push(this.i32()); // BININT
      case 0x4b: return this.push(this.u8()); // BININT1
      case 0x4d: return this.push(this.u16()); // BININT2
      case 0x8a: return this.push(this.binaryLong(this.u8())); // LONG1
      case 0x8b: { // LONG4
        const n = this.i32();
        if (n < 0) throw this.fail('LONG4 has a negative byte count');
        return this.push(this.binaryLong(n));
      }
      case 0x46: return this.push(parsePythonFloat(this.asciiLine('FLOAT'), this)); // FLOAT
      case 0x47: { // BINFLOAT: big-endian double
        const at = this.need(8, 'BINFLOAT');
        return this.push(this.view.getFloat64(at, false));
      }

      // strings and bytes
      case 0x53: return this.push(this.py2String(decodeEscapedString(this.line('STRING'), this))); // STRING
      case 0x54: { // BINSTRING
        const n = this.i32();
        if (n < 0) throw this.fail('BINSTRING has a negative byte count');
        return this.push(this.py2String(this.take(n, 'BINSTRING')));
      }
      case 0x55: return this.push(this.py2String(this.take(this.u8(), 'SHORT_BINSTRING'))); // SHORT_BINSTRING
      case 0x56: return this.push(decodeRawUnicodeEscape(this.line('UNICODE'), this)); // UNICODE
      case 0x58: return this.push(this.utf8(this.take(this.u32(), 'BINUNICODE'))); // BINUNICODE
      case 0x8c: return this.push(this.utf8(this.take(this.u8(), 'SHORT_BINUNICODE'))); // SHORT_BINUNICODE
      case 0x8d: return this.push(this.utf8(this.take(this.u64('BINUNICODE8'), 'BINUNICODE8'))); // BINUNICODE8
      case 0x42: return this.push(this.take(this.u32(), 'BINBYTES').slice()); // BINBYTES
      case 0x43: return this.push(this.take(this.u8(), 'SHORT_BINBYTES').slice()); // SHORT_BINBYTES
      case 0x8e: return this.push(this.take(this.u64('BINBYTES8'), 'BINBYTES8').slice()); // BINBYTES8
      case 0x96: return this.push(new PickleByteArray(this.take(this.u64('BYTEARRAY8'), 'BYTEARRAY8').slice())); // BYTEARRAY8
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        throw this.fail('out-of-band buffers (pickle protocol 5 NEXT_BUFFER/READONLY_BUFFER) are not supported');

      // containers
      case 0x29: return this.push(new PickleTuple(this.charged([], SEQUENCE_WORK))); // EMPTY_TUPLE
      case 0x74: return this.push(new PickleTuple(this.charged(this.popMark('TUPLE'), SEQUENCE_WORK))); // TUPLE
      case 0x85: return this.push(new PickleTuple(this.charged(this.popN(1, 'TUPLE1'), SEQUENCE_WORK))); // TUPLE1
      case 0x86: return this.push(new PickleTuple(this.charged(this.popN(2, 'TUPLE2'), SEQUENCE_WORK))); // TUPLE2
      case 0x87: return this.push(new PickleTuple(this.charged(this.popN(3, 'TUPLE3'), SEQUENCE_WORK))); // TUPLE3
      case 0x5d: return this.push(this.charged([], SEQUENCE_WORK)); // EMPTY_LIST
      case 0x6c: return this.push(this.charged(this.popMark('LIST'), SEQUENCE_WORK)); // LIST
      case 0x61: { // APPEND
        const item = this.pop('APPEND');
        this.listAt('APPEND').push(item);
        return;
      }
      case 0x65: { // APPENDS
        const items = this.charged(this.popMark('APPENDS'));
        const list = this.listAt('APPENDS');
        for (const item of items) list.push(item);
        return;
      }
      case 0x7d: // EMPTY_DICT
        this.charge(DICT_WORK);
        return this.push(new Map());
      case 0x64: { // DICT
        const dict = new Map<unknown, unknown>();
        this.setItems(dict, this.charged(this.popMark('DICT'), DICT_WORK), 'DICT');
        return this.push(dict);
      }
      case 0x73: { // SETITEM
        const value = this.pop('SETITEM');
        const key = this.pop('SETITEM');
        this.dictAt('SETITEM').set(key, value);
        return;
      }
      case 0x75: { // SETITEMS
        const items = this.charged(this.popMark('SETITEMS'));
        this.setItems(this.dictAt('SETITEMS'), items, 'SETITEMS');
        return;
      }
      case 0x8f: // EMPTY_SET
        this.charge(DICT_WORK);
        return this.push(new Set());
      case 0x90: { // ADDITEMS
        const items = this.charged(this.popMark('ADDITEMS'));
        const set = this.top('ADDITEMS');
        if (!(set instanceof Set)) throw this.fail(`ADDITEMS needs a set, got ${describePickleValue(set)}`);
        for (const item of items) set.add(item);
        return;
      }
      case 0x91: return this.push(new PickleFrozenSet(this.charged(this.popMark('FROZENSET'), DICT_WORK))); // FROZENSET

      // stack manipulation
      case 0x28: // MARK
        this.checkStackRoom();
        this.marks.push(this.stack.length);
        return;
      case 0x30: // POP: like Python, pops an empty segment's MARK rather than underflowing
        if (this.marks.length > 0 && this.marks[this.marks.length - 1] === this.stack.length) this.marks.pop();
        else this.pop('POP');
        return;
      case 0x31: this.popMark('POP_MARK'); return; // POP_MARK
      case 0x32: return this.push(this.top('DUP')); // DUP

      // memo
      case 0x70: return this.memoPut(this.memoIndex(this.asciiLine('PUT'))); // PUT
      case 0x71: return this.memoPut(this.u8()); // BINPUT
      case 0x72: return this.memoPut(this.u32()); // LONG_BINPUT
      case 0x94: return this.memoPut(this.memo.size); // MEMOIZE
      case 0x67: return this.memoGet(this.memoIndex(this.asciiLine('GET'))); // GET
      case 0x68: return this.memoGet(this.u8()); // BINGET
      case 0x6a: return this.memoGet(this.u32()); // LONG_BINGET

      // globals and object construction: only whitelisted globals, only our implementations
      case 0x63: { // GLOBAL
        const module = this.utf8(this.line('GLOBAL'));
        const name = this.utf8(this.line('GLOBAL'));
        return this.push(this.resolveGlobal(module, name));
      }
      case 0x93: { // STACK_GLOBAL
        const name = this.pop('STACK_GLOBAL');
        const module = this.pop('STACK_GLOBAL');
        if (typeof module !== 'string' || typeof name !== 'string') throw this.fail('STACK_GLOBAL needs two str');
        return this.push(this.resolveGlobal(module, name));
      }
      case 0x52: { // REDUCE
        const args = this.tupleItems(this.pop('REDUCE'), 'REDUCE');
        const callable = this.pop('REDUCE');
        return this.push(this.construct(callable, 'REDUCE', args, null));
      }
      case 0x81: { // NEWOBJ
        const args = this.tupleItems(this.pop('NEWOBJ'), 'NEWOBJ');
        const cls = this.pop('NEWOBJ');
        return this.push(this.construct(cls, 'NEWOBJ', args, new Map()));
      }
      case 0x92: { // NEWOBJ_EX
        const kwargs = this.pop('NEWOBJ_EX');
        const args = this.tupleItems(this.pop('NEWOBJ_EX'), 'NEWOBJ_EX');
        const cls = this.pop('NEWOBJ_EX');
        if (!(kwargs instanceof Map)) throw this.fail(`NEWOBJ_EX keyword arguments must be a dict, got ${describePickleValue(kwargs)}`);
        return this.push(this.construct(cls, 'NEWOBJ_EX', args, kwargs));
      }
      case 0x69: { // INST: the class is named inline and called on the marked items
        const module = this.utf8(this.line('INST'));
        const name = this.utf8(this.line('INST'));
        const cls = this.resolveGlobal(module, name);
        return this.push(this.construct(cls, 'INST', this.popMark('INST'), null));
      }
      case 0x6f: { // OBJ: the first marked item is the class, the rest its arguments
        const items = this.popMark('OBJ');
        if (items.length === 0) throw this.fail('OBJ needs a class after the MARK');
        return this.push(this.construct(items[0], 'OBJ', items.slice(1), null));
      }
      case 0x62: { // BUILD
        const state = this.pop('BUILD');
        const object = this.top('BUILD');
        const owner = typeof object === 'object' && object !== null ? this.builtBy.get(object) : undefined;
        if (owner?.setState === undefined) {
          const what = owner === undefined ? describePickleValue(object) : `${owner.module}.${owner.name} objects`;
          throw new MicroGPTError('ERR_UNSAFE_PICKLE', `${this.source}: refusing BUILD (setting state) on ${what} at byte ${this.opStart}`);
        }
        this.charge(1 + itemCount(state));
        owner.setState(object, state, this.context);
        return;
      }
      case 0x50: { // PERSID: Python decodes the text id as ASCII
        const line = this.line('PERSID');
        if (line.some((b) => b > 0x7f)) throw this.fail('PERSID id is not ASCII');
        return this.push(this.persistent(latin1(line)));
      }
      case 0x51: return this.push(this.persistent(this.pop('BINPERSID'))); // BINPERSID
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
        throw new MicroGPTError(
          'ERR_UNSAFE_PICKLE',
          `${this.source}: refusing pickle extension code (EXT opcode) at byte ${this.opStart}: the copyreg extension registry is not supported`,
        );
      default:
        throw this.fail(`unknown opcode 0x${hex(op, 2)}`);
    }
  }

  // -- globals --

  private resolveGlobal(module: string, name: string): PickleGlobalRef {
    // Python 3 maps Python 2 module names back when loading protocols 0–2 (fix_imports).
    const mapped = this.protocol < 3 ? (PY2_MODULES.get(module) ?? module) : module;
    const definition = this.globals.get(globalKey(mapped, name));
    if (definition === undefined) {
      const allowed = [...this.globals.values()].map((g) => `${g.module}.${g.name}`);
      const shown = allowed.length > 8 ? `${allowed.slice(0, 6).join(', ')} and ${allowed.length - 6} more` : allowed.join(', ');
      const rule = allowed.length === 0 ? 'this pickle may hold only plain data' : `only ${shown} are allowed`;
      throw new MicroGPTError('ERR_UNSAFE_PICKLE', `${this.source}: refusing pickle global ${describe(`${module}.${name}`)}: ${rule}`);
    }
    return new PickleGlobalRef(definition);
  }

  /**
   * Builds an object through a whitelisted global's own implementation: `call` for a call
   * (kwargs null: REDUCE, INST, OBJ), `newObject` for `cls.__new__` (NEWOBJ, NEWOBJ_EX). A global
   * without that implementation is refused. Remembers which global built the result, for BUILD.
   */
  private construct(target: unknown, op: string, args: readonly unknown[], kwargs: ReadonlyMap<unknown, unknown> | null): unknown {
    if (!(target instanceof PickleGlobalRef)) {
      throw new MicroGPTError(
        'ERR_UNSAFE_PICKLE',
        `${this.source}: refusing ${op} at byte ${this.opStart}: it applies to ${describePickleValue(target)}, not a whitelisted global`,
      );
    }
    const { call, newObject } = target.definition;
    const implemented = kwargs === null ? call !== undefined : newObject !== undefined;
    if (!implemented) {
      throw new MicroGPTError(
        'ERR_UNSAFE_PICKLE',
        `${this.source}: refusing ${op} on pickle global "${target.qualifiedName}" at byte ${this.opStart}: not supported for it`,
      );
    }
    // An implementation may touch each item of its arguments (OrderedDict(pairs), set(list),
    // a tensor's size tuple), so each call is charged for them all: a memoized container handed
    // to a constructor again and again costs its size every time. None goes deeper than that.
    // What it returns may be a new dict.
    let units = DICT_WORK + args.length + (kwargs === null ? 0 : kwargs.size);
    for (const arg of args) units += itemCount(arg);
    this.charge(units);
    const result = kwargs === null ? call?.(args, this.context) : newObject?.(args, kwargs, this.context);
    if (typeof result === 'object' && result !== null) this.builtBy.set(result, target.definition);
    return result;
  }

  private persistent(pid: unknown): unknown {
    if (this.persistentLoad === undefined) throw this.fail('persistent id found, but no persistent_load was given');
    this.charge(1 + itemCount(pid));
    return this.persistentLoad(pid, this.context);
  }

  // -- stack --

  private get fence(): number {
    return this.marks.length === 0 ? 0 : (this.marks[this.marks.length - 1] as number);
  }

  private checkStackRoom(): void {
    if (this.stack.length + this.marks.length >= this.limits.maxStackSize) {
      throw this.fail(`stack grew past the limit of ${this.limits.maxStackSize} entries`);
    }
  }

  private push(value: unknown): void {
    this.checkStackRoom();
    this.stack.push(value);
  }

  private pop(op: string): unknown {
    if (this.stack.length <= this.fence) throw this.fail(`stack underflow in ${op}`);
    return this.stack.pop();
  }

  private popN(n: number, op: string): unknown[] {
    if (this.stack.length - this.fence < n) throw this.fail(`stack underflow in ${op}`);
    return this.stack.splice(this.stack.length - n, n);
  }

  private top(op: string): unknown {
    if (this.stack.length <= this.fence) throw this.fail(`stack underflow in ${op}`);
    return this.stack[this.stack.length - 1];
  }

  private popMark(op: string): unknown[] {
    const mark = this.marks.pop();
    if (mark === undefined) throw this.fail(`${op} without a MARK`);
    return this.stack.splice(mark);
  }

  private listAt(op: string): unknown[] {
    const list = this.top(op);
    if (!Array.isArray(list)) throw this.fail(`${op} needs a list, got ${describePickleValue(list)}`);
    return list;
  }

  private dictAt(op: string): Map<unknown, unknown> {
    const dict = this.top(op);
    if (!(dict instanceof Map)) throw this.fail(`${op} needs a dict, got ${describePickleValue(dict)}`);
    return dict;
  }

  /** The items a container opcode takes, charged with `containerWork` for the container it builds. */
  private charged(items: unknown[], containerWork = 0): unknown[] {
    this.charge(containerWork + items.length);
    return items;
  }

  private setItems(dict: Map<unknown, unknown>, items: unknown[], op: string): void {
    if (items.length % 2 !== 0) throw this.fail(`${op} has an odd number of items (${items.length})`);
    for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
  }

  private tupleItems(value: unknown, op: string): readonly unknown[] {
    if (!(value instanceof PickleTuple)) throw this.fail(`${op} arguments must be a tuple, got ${describePickleValue(value)}`);
    return value.items;
  }

  // -- memo --

  private memoIndex(text: string): number {
    // CPython reads it as int(text, 10): spaces, a + and underscores are allowed.
    if (!/^\s*\+?\d(?:_?\d)*\s*$/.test(text)) throw this.fail(`bad memo index ${JSON.stringify(text.slice(0, 40))}`);
    const index = Number(text.trim().replace(/_/g, ''));
    if (!Number.isSafeInteger(index)) throw this.fail('memo index too large');
    return index;
  }

  private memoPut(index: number): void {
    if (!this.memo.has(index) && this.memo.size >= this.limits.maxMemoSize) {
      throw this.fail(`memo grew past the limit of ${this.limits.maxMemoSize} entries`);
    }
    this.memo.set(index, this.top('PUT'));
  }

  private memoGet(index: number): void {
    if (!this.memo.has(index)) throw this.fail(`memo has no entry ${index}`);
    this.push(this.memo.get(index));
  }

  // -- reading input --

  private get remaining(): number {
    return this.bytes.length - this.pos;
  }

  /** Reserves `n` bytes and returns their offset. */
  private need(n: number, what: string): number {
    if (n > this.remaining) throw new Truncated(`${what}: ${n} bytes needed, ${this.remaining} left`);
    const at = this.pos;
    this.pos += n;
    return at;
  }

  private take(n: number, what: string): Uint8Array {
    const at = this.need(n, what);
    return this.bytes.subarray(at, at + n);
  }

  private u8(): number {
    return this.view.getUint8(this.need(1, 'opcode argument'));
  }

  private u16(): number {
    return this.view.getUint16(this.need(2, '2-byte argument'), true);
  }

  private u32(): number {
    return this.view.getUint32(this.need(4, '4-byte argument'), true);
  }

  private i32(): number {
    return this.view.getInt32(this.need(4, '4-byte argument'), true);
  }

  /** An 8-byte length; one past the safe range can never fit the input, so it reads as truncation. */
  private u64(what: string): number {
    const value = this.view.getBigUint64(this.need(8, `${what} length`), true);
    if (value > BigInt(this.remaining)) throw new Truncated(`${what} of ${value} bytes, ${this.remaining} left`);
    return Number(value);
  }

  /** A newline-terminated argument of the text opcodes, without its newline. */
  private line(what: string): Uint8Array {
    const end = this.bytes.indexOf(0x0a, this.pos);
    if (end < 0) throw new Truncated(`${what} argument has no terminating newline`);
    const out = this.bytes.subarray(this.pos, end);
    this.pos = end + 1;
    return out;
  }

  private asciiLine(what: string): string {
    return latin1(this.line(what));
  }

  // -- value decoding --

  private utf8(bytes: Uint8Array): string {
    try {
      return utf8Decoder.decode(bytes);
    } catch {
      // Python writes str with 'surrogatepass', so lone surrogates may appear; decode those too.
      const text = decodeUtf8SurrogatePass(bytes);
      if (text === null) throw this.fail('string is not valid UTF-8');
      return text;
    }
  }

  /** Python 2 str (STRING opcodes): Python 3 decodes it as ASCII by default. */
  private py2String(bytes: Uint8Array): string {
    const bad = bytes.findIndex((b) => b > 0x7f);
    if (bad >= 0) throw this.fail(`Python 2 str holds the non-ASCII byte 0x${hex(bytes[bad] as number, 2)}`);
    return latin1(bytes);
  }

  /**
   * INT, as CPython's load_int: C strtol(text, 0) when it takes the whole line and fits a 64-bit
   * long (so "010" is octal 8, and a two-character line holding 0 or 1, like "01", is a bool),
   * else Python's int(text, 0).
   */
  private textInt(): number | bigint | boolean {
    const text = this.asciiLine('INT');
    const c = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
    if (c !== null) {
      const digits = c[2] as string;
      const literal = /^0[xX]/.test(digits) ? digits : digits.startsWith('0') ? `0o${digits.slice(1) || '0'}` : digits;
      // Only a few significant digits fit 64 bits; more would cost BigInt's superlinear parse for nothing.
      if (digits.replace(/^(?:0[xX])?0*/, '').length <= MAX_LONG_SIGNIFICANT_DIGITS) {
        const value = c[1] === '-' ? -BigInt(literal) : BigInt(literal);
        if (value >= -(2n ** 63n) && value < 2n ** 63n) {
          if (text.length === 2 && (value === 0n || value === 1n)) return value === 1n;
          return this.normalizeInt(value);
        }
      }
    }
    return this.normalizeInt(parsePythonInt(text, this.limits.maxIntegerBytes, this));
  }

  /** LONG, as CPython's load_long: int(text, 0) after dropping one trailing "L". */
  private textLong(): number | bigint {
    const text = this.asciiLine('LONG');
    return this.normalizeInt(parsePythonInt(text.endsWith('L') ? text.slice(0, -1) : text, this.limits.maxIntegerBytes, this));
  }

  /** LONG1/LONG4: little-endian two's complement. */
  private binaryLong(n: number): number | bigint {
    if (n > this.limits.maxIntegerBytes) throw this.fail(`integer of ${n} bytes is longer than the limit of ${this.limits.maxIntegerBytes}`);
    const bytes = this.take(n, 'LONG');
    if (n === 0) return 0;
    let hexDigits = '';
    for (let i = n - 1; i >= 0; i--) hexDigits += hex(bytes[i] as number, 2);
    let value = BigInt(`0x${hexDigits}`);
    if ((bytes[n - 1] as number) & 0x80) value -= 1n << BigInt(8 * n);
    return this.normalizeInt(value);
  }

  private normalizeInt(value: bigint): number | bigint {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
}

/** The Python 2 module names Python 3 maps back for old protocols, limited to ones holding builtins. */
const PY2_MODULES: ReadonlyMap<string, string> = new Map([
  ['__builtin__', 'builtins'],
  ['copy_reg', 'copyreg'],
]);

/** How many items a value holds, which is what handing it to a constructor may cost. */
function itemCount(value: unknown): number {
  if (Array.isArray(value)) return value.length;
  if (value instanceof PickleTuple) return value.length;
  if (value instanceof Map || value instanceof Set) return value.size;
  if (value instanceof PickleFrozenSet) return value.values.size;
  if (typeof value === 'string' || value instanceof Uint8Array) return value.length;
  if (value instanceof PickleByteArray) return value.bytes.length;
  return 0;
}

function globalKey(module: string, name: string): string {
  // STACK_GLOBAL names may hold newlines, but whitelisted ones do not: a key with exactly one
  // newline matches only its own module and name.
  return `${module}\n${name}`;
}

function hex(value: number, width: number): string {
  return value.toString(16).padStart(width, '0');
}

function latin1(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length; i += 8192) {
    out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return out;
}

// ---- text formats of protocol 0 ----------------------------------------------------------------

interface Failer {
  fail(message: string): MicroGPTError;
}

/** Python's int(text, 0), which is how pickle reads INT and LONG arguments. */
function parsePythonInt(text: string, maxBytes: number, at: Failer): bigint {
  const match = /^\s*([+-]?)(0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|0(?:_?0)*|[1-9](?:_?[0-9])*)\s*$/.exec(text);
  if (match === null) throw at.fail(`bad integer literal ${JSON.stringify(text.slice(0, 40))}`);
  const digits = (match[2] as string).replace(/_/g, '');
  const decimal = !/^0[xXoObB]/.test(digits);
  if (decimal ? digits.length > MAX_DECIMAL_DIGITS : digits.length > 2 + 2 * maxBytes) {
    throw at.fail(`integer literal of ${digits.length} digits is too long`);
  }
  const magnitude = BigInt(digits);
  return match[1] === '-' ? -magnitude : magnitude;
}

/**
 * FLOAT, as CPython's load_float (PyOS_string_to_double): a plain decimal literal or inf, infinity,
 * nan, with no spaces or underscores; a finite literal too large for a double is an error.
 */
function parsePythonFloat(text: string, at: Failer): number {
  const match = /^([+-]?)(?:((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(inf|infinity)|(nan))$/i.exec(text);
  if (match === null) throw at.fail(`bad float literal ${JSON.stringify(text.slice(0, 40))}`);
  const sign = match[1] === '-' ? -1 : 1;
  if (match[4] !== undefined) return NaN;
  if (match[3] !== undefined) return sign * Infinity;
  const value = Number(match[2]);
  if (!Number.isFinite(value)) throw at.fail(`float literal ${JSON.stringify(text.slice(0, 40))} is out of range`);
  return sign * value;
}

/** Python 2's single-character escapes: \\ \' \" \b \f \t \n \r \v \a. */
const STRING_ESCAPES: ReadonlyMap<number, number> = new Map([
  [0x5c, 0x5c], [0x27, 0x27], [0x22, 0x22], [0x62, 8], [0x66, 12], [0x74, 9], [0x6e, 10], [0x72, 13], [0x76, 11], [0x61, 7],
]);

/**
 * The STRING opcode's argument: a quoted Python 2 string literal, unescaped as Python's
 * codecs.escape_decode does.
 */
function decodeEscapedString(line: Uint8Array, at: Failer): Uint8Array {
  const quote = line[0];
  if (line.length < 2 || (quote !== 0x22 && quote !== 0x27) || line[line.length - 1] !== quote) {
    throw at.fail('the STRING opcode argument must be quoted');
  }
  const s = line.subarray(1, line.length - 1);
  const out: number[] = [];
  const isOctal = (b: number | undefined) => b !== undefined && b >= 0x30 && b <= 0x37;
  const hexValue = (b: number | undefined) => {
    if (b === undefined) return -1;
    const c = String.fromCharCode(b);
    return /[0-9a-fA-F]/.test(c) ? parseInt(c, 16) : -1;
  };
  for (let i = 0; i < s.length; ) {
    const b = s[i++] as number;
    if (b !== 0x5c) {
      out.push(b);
      continue;
    }
    if (i >= s.length) throw at.fail('STRING ends with a lone backslash');
    const e = s[i++] as number;
    const simple = STRING_ESCAPES.get(e);
    if (e === 0x0a) continue; // backslash-newline: a line continuation
    if (simple !== undefined) {
      out.push(simple);
    } else if (isOctal(e)) {
      let value = e - 0x30;
      for (let k = 0; k < 2 && isOctal(s[i]); k++) value = value * 8 + ((s[i++] as number) - 0x30);
      out.push(value & 0xff);
    } else if (e === 0x78) {
      const high = hexValue(s[i]);
      const low = hexValue(s[i + 1]);
      if (high < 0 || low < 0) throw at.fail('invalid \\x escape in STRING');
      out.push(high * 16 + low);
      i += 2;
    } else {
      out.push(0x5c, e); // unknown escapes stay as they are
    }
  }
  return Uint8Array.from(out);
}

/** The UNICODE opcode's argument, in Python's raw-unicode-escape codec: latin-1 plus \uXXXX and \UXXXXXXXX. */
function decodeRawUnicodeEscape(line: Uint8Array, at: Failer): string {
  const parts: string[] = [];
  let i = 0;
  while (i < line.length) {
    const b = line[i] as number;
    if (b !== 0x5c) {
      parts.push(String.fromCharCode(b));
      i++;
      continue;
    }
    // Only a backslash preceded by an even number of backslashes starts an escape.
    let run = 0;
    while (line[i] === 0x5c) {
      run++;
      i++;
    }
    const next = line[i];
    if (run % 2 === 0 || (next !== 0x75 && next !== 0x55)) {
      parts.push('\\'.repeat(run));
      continue;
    }
    parts.push('\\'.repeat(run - 1));
    const width = next === 0x75 ? 4 : 8;
    const digits = latin1(line.subarray(i + 1, i + 1 + width));
    if (digits.length !== width || !/^[0-9a-fA-F]+$/.test(digits)) throw at.fail(`truncated \\${next === 0x75 ? 'u' : 'U'} escape in UNICODE`);
    const code = parseInt(digits, 16);
    if (code > 0x10ffff) throw at.fail('\\U escape in UNICODE is beyond U+10FFFF');
    parts.push(String.fromCodePoint(code));
    i += 1 + width;
  }
  return parts.join('');
}

/** UTF-8 that also admits encoded surrogate code points (Python's 'surrogatepass'); null if invalid. */
function decodeUtf8SurrogatePass(bytes: Uint8Array): string | null {
  const parts: string[] = [];
  for (let i = 0; i < bytes.length; ) {
    const lead = bytes[i] as number;
    let need: number;
    let code: number;
    let min: number;
    if (lead < 0x80) [need, code, min] = [0, lead, 0];
    else if (lead >= 0xc2 && lead <= 0xdf) [need, code, min] = [1, lead & 0x1f, 0x80];
    else if (lead >= 0xe0 && lead <= 0xef) [need, code, min] = [2, lead & 0x0f, 0x800];
    else if (lead >= 0xf0 && lead <= 0xf4) [need, code, min] = [3, lead & 0x07, 0x10000];
    else return null;
    for (let k = 1; k <= need; k++) {
      const next = bytes[i + k];
      if (next === undefined || (next & 0xc0) !== 0x80) return null;
      code = (code << 6) | (next & 0x3f);
    }
    if (code < min || code > 0x10ffff) return null;
    parts.push(String.fromCodePoint(code));
    i += need + 1;
  }
  return parts.join('');
}
