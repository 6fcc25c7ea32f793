/**
 * nanoGPT's own files, read without Python: the `ckpt.pt` that train.py writes with torch.save,
 * and the `meta.pkl` vocabulary that the char-level prepare.py writes with pickle.
 *
 * A torch.save file (PyTorch ≥ 1.6) is a zip archive: `<archive>/data.pkl` pickles the saved
 * object, and each tensor storage is the raw little-endian entry `<archive>/data/<key>`, named from
 * the pickle by a persistent id ('storage', torch.FloatStorage, key, location, numel). Tensors are
 * strided views of storages, described by torch._utils._rebuild_tensor_v2. The pickle is parsed by
 * our restricted unpickler with a whitelist of exactly the globals such a file needs, so nothing in
 * the file is ever executed; only the storages of the model's parameters are read (the optimizer
 * state, usually twice the model's size, is never touched).
 */
import { open, readFile, stat } from 'node:fs/promises';
import { CONFIG_LIMITS, configFromModelArgs, describe, type ModelConfig } from '../config.js';
import { MicroGPTError, badCheckpoint, shownPath } from '../errors.js';
import { expectedTensors, type Tensor } from '../weights.js';
import { decodeToFloat32, type StoredDType } from './dtype.js';
import {
  ORDERED_DICT_GLOBAL,
  PickleGlobalRef,
  PickleTuple,
  describePickleValue,
  pickleDataError,
  pickleInt,
  unpickle,
  type PickleContext,
  type PickleGlobal,
} from './pickle.js';
import { ZipReader, type ZipEntryInfo } from './zip.js';

export interface TorchCheckpoint {
  /** From ckpt['model_args']. */
  readonly config: ModelConfig;
  /** nanoGPT parameter names → float32 tensors, in state_dict order, ready for assembleWeights(). */
  readonly tensors: Map<string, Tensor>;
  /** ckpt['iter_num'] if present. */
  readonly iterNum: number | null;
  /** ckpt['best_val_loss'] (a 0-dim tensor or a float) if present. */
  readonly bestValLoss: number | null;
  /** The element type most of the parameters were stored in (counted by elements). */
  readonly storedDType: StoredDType;
  /** ckpt['config']['dataset'] if it is a plain name: sample.py reads data/<dataset>/meta.pkl. */
  readonly dataset: string | null;
}

// ---- what data.pkl may contain ----------------------------------------------------------------

/** A torch.*Storage class, which torch.save writes as the type tag of a storage. */
interface StorageType {
  readonly name: string;
  /** torch's name of the element type, for messages. */
  readonly dtype: string;
  readonly itemSize: number;
  /** How we decode it, or null for element types that cannot hold weights. */
  readonly stored: StoredDType | null;
}

const STORAGE_TYPES: readonly StorageType[] = [
  { name: 'FloatStorage', dtype: 'float32', itemSize: 4, stored: 'F32' },
  { name: 'HalfStorage', dtype: 'float16', itemSize: 2, stored: 'F16' },
  { name: 'BFloat16Storage', dtype: 'bfloat16', itemSize: 2, stored: 'BF16' },
  { name: 'DoubleStorage', dtype: 'float64', itemSize: 8, stored: 'F64' },
  // Tags that other parts of a checkpoint (optimizer state, counters) may use; never weights.
  { name: 'LongStorage', dtype: 'int64', itemSize: 8, stored: null },
  { name: 'IntStorage', dtype: 'int32', itemSize: 4, stored: null },
  { name: 'ShortStorage', dtype: 'int16', itemSize: 2, stored: null },
  { name: 'CharStorage', dtype: 'int8', itemSize: 1, stored: null },
  { name: 'ByteStorage', dtype: 'uint8', itemSize: 1, stored: null },
  { name: 'BoolStorage', dtype: 'bool', itemSize: 1, stored: null },
  { name: 'ComplexFloatStorage', dtype: 'complex64', itemSize: 8, stored: null },
  { name: 'ComplexDoubleStorage', dtype: 'complex128', itemSize: 16, stored: null },
  { name: 'QInt8Storage', dtype: 'qint8', itemSize: 1, stored: null },
  { name: 'QUInt8Storage', dtype: 'quint8', itemSize: 1, stored: null },
  { name: 'QInt32Storage', dtype: 'qint32', itemSize: 4, stored: null },
  { name: 'QUInt4x2Storage', dtype: 'quint4x2', itemSize: 1, stored: null },
  { name: 'QUInt2x4Storage', dtype: 'quint2x4', itemSize: 1, stored: null },
];

const STORAGE_BY_NAME: ReadonlyMap<string, StorageType> = new Map(STORAGE_TYPES.map((t) => [t.name, t]));

/** One storage named by a persistent id; its bytes are the zip entry data/<key>. */
class StorageRef {
  constructor(
    readonly key: string,
    readonly type: StorageType,
    readonly numel: number,
  ) {}
}

/** A tensor as _rebuild_tensor_v2 describes it: a strided view into a storage (in elements). */
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
    readonly numel: number,
    /** Storage index of the view's last element (offset when the tensor is empty). */
    readonly maxIndex: number,
  ) {}
}

const REBUILD_TENSOR_V2: PickleGlobal = {
  module: 'torch._utils',
  name: '_rebuild_tensor_v2',
  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  call: (args, context) => {
    if (args.length < 6 || args.length > 7) {
      throw pickleDataError(context, `_rebuild_tensor_v2 expects 6 or 7 positional arguments, got ${args.length}`);
    }
    const [storage, offset, size, stride] = args;
    if (!(storage instanceof StorageRef)) {
      throw pickleDataError(context, `_rebuild_tensor_v2 expects a storage, got ${describePickleValue(storage)}`);
    }
    const start = pickleInt(offset);
    if (start === null || start < 0) throw pickleDataError(context, `bad tensor storage offset ${describePickleValue(offset)}`);
    const shape = intTuple(size, 'size', context);
    const strides = intTuple(stride, 'stride', context);
    if (strides.length !== shape.length) {
      throw pickleDataError(context, `tensor has ${shape.length} sizes but ${strides.length} strides`);
    }
    if (shape.length > MAX_TENSOR_RANK) throw pickleDataError(context, `tensor has ${shape.length} dimensions, more than ${MAX_TENSOR_RANK}`);
    // An empty tensor reads nothing, whatever its other sizes and strides say.
    if (shape.includes(0)) return new TensorRef(storage, start, shape, strides, 0, start);
    let numel = 1;
    let maxIndex = start;
    for (let d = 0; d < shape.length; d++) {
      numel *= shape[d] as number;
      maxIndex += ((shape[d] as number) - 1) * (strides[d] as number);
      // Every factor and term is non-negative, so once past the safe range the result stays past it.
      if (!Number.isSafeInteger(numel) || !Number.isSafeInteger(maxIndex)) {
        throw pickleDataError(context, `tensor view of size [${shape.join(', ')}], stride [${strides.join(', ')}] is too large`);
      }
    }
    if (maxIndex >= storage.numel) {
      throw pickleDataError(
        context,
        `tensor view (offset ${start}, size [${shape.join(', ')}], stride [${strides.join(', ')}]) ` +
          `reaches element ${maxIndex} of a storage of ${storage.numel} elements`,
      );
    }
    return new TensorRef(storage, start, shape, strides, numel, maxIndex);
  },
};

const REBUILD_PARAMETER: PickleGlobal = {
  module: 'torch._utils',
  name: '_rebuild_parameter',
  // (data, requires_grad, backward_hooks): an nn.Parameter is its tensor for our purposes.
  call: (args, context) => {
    const [data] = args;
    if (args.length !== 3 || !(data instanceof TensorRef)) {
      throw pickleDataError(context, '_rebuild_parameter expects (tensor, requires_grad, backward_hooks)');
    }
    return data;
  },
};

/**
 * Exactly what torch.save of nanoGPT's checkpoint dict needs. The storage classes are only type
 * tags handed to persistent_load; calling one is refused.
 */
const TORCH_GLOBALS: readonly PickleGlobal[] = [
  ORDERED_DICT_GLOBAL,
  REBUILD_TENSOR_V2,
  REBUILD_PARAMETER,
  ...STORAGE_TYPES.map((t): PickleGlobal => ({ module: 'torch', name: t.name })),
];

function intTuple(value: unknown, what: string, context: PickleContext): number[] {
  if (!(value instanceof PickleTuple)) throw pickleDataError(context, `tensor ${what} must be a tuple, got ${describePickleValue(value)}`);
  return value.items.map((item) => {
    const n = pickleInt(item);
    // torch allows neither negative sizes nor negative strides.
    if (n === null || n < 0) throw pickleDataError(context, `tensor ${what} holds ${describePickleValue(item)}, not a non-negative int`);
    return n;
  });
}

/** persistent_load for torch's ('storage', type, key, location, numel) ids; one StorageRef per key. */
function storageLoader(): (pid: unknown, context: PickleContext) => StorageRef {
  const storages = new Map<string, StorageRef>();
  return (pid, context) => {
    if (!(pid instanceof PickleTuple) || pid.length !== 5 || pid.items[0] !== 'storage') {
      throw pickleDataError(context, `unknown persistent id (${describePickleValue(pid)}); expected ('storage', type, key, location, numel)`);
    }
    const [, tag, key, location, size] = pid.items;
    const type = tag instanceof PickleGlobalRef && tag.module === 'torch' ? STORAGE_BY_NAME.get(tag.name) : undefined;
    if (type === undefined) throw pickleDataError(context, `storage type must be a torch.*Storage class, got ${describePickleValue(tag)}`);
    if (typeof key !== 'string' || key.length === 0 || key.length > 64) throw pickleDataError(context, 'storage key must be a short str');
    if (typeof location !== 'string') throw pickleDataError(context, 'storage location must be a str');
    const numel = pickleInt(size);
    if (numel === null || numel < 0 || !Number.isSafeInteger(numel * type.itemSize)) {
      throw pickleDataError(context, `bad storage size ${typeof size === 'number' || typeof size === 'bigint' ? String(size) : describePickleValue(size)}`);
    }
    const known = storages.get(key);
    if (known === undefined) {
      const storage = new StorageRef(key, type, numel);
      storages.set(key, storage);
      return storage;
    }
    if (known.type !== type || known.numel !== numel) {
      throw pickleDataError(context, `storage ${describe(key)} is described twice, differently`);
    }
    return known;
  };
}

// ---- reading a checkpoint ----------------------------------------------------------------------

/** data.pkl of even a gpt2-xl checkpoint with optimizer state is well under a megabyte. */
const MAX_DATA_PKL_BYTES = 64 * 1024 * 1024;
const MAX_META_PKL_BYTES = 64 * 1024 * 1024;
const COMPILED_PREFIX = '_orig_mod.';
/** nanoGPT's causal-mask buffer, saved by PyTorch versions without scaled_dot_product_attention. */
const MASK_BUFFER = /^transformer\.h\.\d+\.attn\.bias$/;
const LM_HEAD = 'lm_head.weight';
const WTE = 'transformer.wte.weight';
/** torch supports up to 64 dimensions; more is not a tensor torch could have saved. */
const MAX_TENSOR_RANK = 64;

/** Reads a nanoGPT `ckpt.pt`. Never executes anything from the file. */
export async function readTorchCheckpoint(path: string): Promise<TorchCheckpoint> {
  return oneLineErrors(path, readCheckpoint(path));
}

async function readCheckpoint(path: string): Promise<TorchCheckpoint> {
  await refuseNonZip(path);
  const zip = await ZipReader.open(path);
  try {
    const root = archiveRoot(zip, path);
    await checkByteOrder(zip, root, path);
    const ckpt = unpickle(await zip.read(`${root}data.pkl`, MAX_DATA_PKL_BYTES), {
      globals: TORCH_GLOBALS,
      persistentLoad: storageLoader(),
      source: `${shownPath(path)}: data.pkl`,
    });
    if (!(ckpt instanceof Map)) {
      throw badCheckpoint(path, `holds a ${describePickleValue(ckpt)}, not nanoGPT's checkpoint dict`);
    }
    const modelArgs = ckpt.get('model_args');
    if (!(modelArgs instanceof Map)) {
      throw badCheckpoint(path, "has no 'model_args' dict; expected a checkpoint written by nanoGPT's train.py");
    }
    const config = configFromModelArgs(stringKeyed(modelArgs), `${shownPath(path)}: model_args`);
    const model = ckpt.get('model');
    if (!(model instanceof Map)) throw badCheckpoint(path, "has no 'model' state dict");
    const iterNum = readIterNum(ckpt.get('iter_num'), path);

    // Everything above is checked before any storage is read.
    const { params, lmHead } = selectParameters(model, config, path);
    const reader = new StorageReader(zip, root, path);
    const tensors = await reader.decodeAll(params);
    if (lmHead !== null) {
      const wte = params.get(WTE) as TensorRef; // selectParameters guarantees it
      if (!sameView(lmHead, wte)) {
        const values = await reader.decodeAll(new Map([[LM_HEAD, lmHead]]));
        checkTied(values.get(LM_HEAD) as Tensor, tensors.get(WTE) as Tensor, path);
      }
    }
    return {
      config,
      tensors,
      iterNum,
      bestValLoss: await readBestValLoss(ckpt.get('best_val_loss'), reader, path),
      storedDType: mostCommonDType(params),
      dataset: readDataset(ckpt.get('config')),
    };
  } finally {
    // Closing a file opened for reading cannot lose data; its failure must not hide the real outcome.
    await zip.close().catch(() => undefined);
  }
}

/** Legacy torch.save files begin with the pickled magic number 0x1950a86a20f9469cfc6c. */
const LEGACY_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

async function refuseNonZip(path: string): Promise<void> {
  const head = Buffer.alloc(LEGACY_MAGIC.length);
  let length: number;
  try {
    const handle = await open(path, 'r');
    try {
      length = (await handle.read(head, 0, head.length, 0)).bytesRead;
    } finally {
      await handle.close();
    }
  } catch (err) {
    throw badCheckpoint(path, `cannot read the file (${err instanceof Error ? err.message : String(err)})`);
  }
  if (length >= 2 && head[0] === 0x50 && head[1] === 0x4b) return; // "PK": a zip archive
  if (length === LEGACY_MAGIC.length && LEGACY_MAGIC.every((b, i) => head[i] === b)) {
    throw badCheckpoint(
      path,
      'is in the legacy (pre-1.6) PyTorch format, which is not supported; re-save it with a newer torch: torch.save(torch.load(path), path)',
    );
  }
  if (length >= 1 && head[0] === 0x80) throw badCheckpoint(path, 'is a plain pickle, not a torch.save checkpoint (a zip archive)');
  throw badCheckpoint(path, 'is not a PyTorch checkpoint (torch.save writes a zip archive)');
}

/** The archive's top folder ("ckpt/" for ckpt.pt, "archive/" by default), which holds data.pkl. */
function archiveRoot(zip: ZipReader, path: string): string {
  const names = zip.names;
  const pickles = names.filter((name) => /^[^/]+\/data\.pkl$/.test(name));
  if (pickles.length !== 1) {
    throw badCheckpoint(path, pickles.length === 0 ? 'zip archive has no <archive>/data.pkl, so it is not a torch.save checkpoint' : 'zip archive holds several data.pkl');
  }
  const root = (pickles[0] as string).slice(0, -'data.pkl'.length);
  if (names.some((name) => name === `${root}constants.pkl` || name.startsWith(`${root}code/`))) {
    throw badCheckpoint(path, 'is a TorchScript archive (torch.jit.save), not a torch.save checkpoint');
  }
  return root;
}

/** Newer torch records the byte order the storages were written in (that of the saving machine). */
async function checkByteOrder(zip: ZipReader, root: string, path: string): Promise<void> {
  if (zip.entry(`${root}byteorder`) === undefined) return; // older torch wrote no record, and little-endian
  const order = (await zip.read(`${root}byteorder`, 16)).toString('latin1');
  if (order === 'little') return;
  if (order === 'big') throw badCheckpoint(path, 'stores big-endian tensors, which are not supported; re-save it on a little-endian machine');
  throw badCheckpoint(path, `has an unknown byteorder record ${JSON.stringify(order)}`);
}

/** model_args as the plain object configFromModelArgs takes (fromEntries: a "__proto__" key stays a key). */
function stringKeyed(map: Map<unknown, unknown>): Record<string, unknown> {
  return Object.fromEntries([...map].filter((entry): entry is [string, unknown] => typeof entry[0] === 'string'));
}

/**
 * The model's parameters under their nanoGPT names: the torch.compile prefix removed, the stale
 * causal-mask buffers dropped and lm_head.weight set apart (it is tied to the token embedding).
 * Names and shapes are checked against the config before any storage is read, which also bounds
 * the memory decoding takes: views can repeat a small storage into a huge tensor.
 */
function selectParameters(model: Map<unknown, unknown>, config: ModelConfig, path: string): { params: Map<string, TensorRef>; lmHead: TensorRef | null } {
  const expected = expectedTensors(config);
  const params = new Map<string, TensorRef>();
  let lmHead: TensorRef | null = null;
  for (const [rawName, value] of model) {
    if (typeof rawName !== 'string') throw badCheckpoint(path, `model state dict has a ${describePickleValue(rawName)} key`);
    const name = rawName.startsWith(COMPILED_PREFIX) ? rawName.slice(COMPILED_PREFIX.length) : rawName;
    if (!(value instanceof TensorRef)) throw badCheckpoint(path, `model entry ${describe(rawName)} is a ${describePickleValue(value)}, not a tensor`);
    if (params.has(name) || (name === LM_HEAD && lmHead !== null)) throw badCheckpoint(path, `model state dict holds ${describe(name)} twice`);
    if (MASK_BUFFER.test(name)) {
      const mask = [1, 1, config.blockSize, config.blockSize];
      if (!sameShape(value.shape, mask)) {
        throw badCheckpoint(path, `buffer ${describe(name)} has shape ${shapeText(value.shape)}, expected the causal mask's [${mask.join(', ')}]`);
      }
      continue;
    }
    if (name === LM_HEAD) {
      lmHead = value;
      continue;
    }
    const shape = expected.get(name);
    if (shape === undefined) throw badCheckpoint(path, `unexpected tensor ${describe(name)} for a model with these model_args`);
    if (!sameShape(value.shape, shape)) {
      throw badCheckpoint(path, `tensor ${describe(name)} has shape ${shapeText(value.shape)}, expected [${shape.join(', ')}]`);
    }
    params.set(name, value);
  }
  if (lmHead !== null) {
    const wte = params.get(WTE);
    if (wte === undefined) throw badCheckpoint(path, `has ${LM_HEAD} but no ${WTE}`);
    if (!sameShape(lmHead.shape, wte.shape)) throw badCheckpoint(path, `${LM_HEAD} is not tied to ${WTE} (shapes differ)`);
  }
  for (const [name, ref] of lmHead === null ? params : new Map([...params, [LM_HEAD, lmHead]])) {
    if (ref.storage.type.stored === null) {
      throw badCheckpoint(
        path,
        `tensor ${describe(name)} is stored as ${ref.storage.type.dtype} (torch.${ref.storage.type.name}); weights must be float32, float16, bfloat16 or float64`,
      );
    }
  }
  return { params, lmHead };
}

/**
 * Decoded float32 tensors may take at most this many times the bytes their storages occupy in the
 * file (float16 doubles; deflate, which torch never uses, shrinks the file a little), plus some
 * slack. Without it, zero-stride views or a deflated storage could make a small file allocate
 * gigabytes.
 */
const MAX_DECODE_GROWTH = 4;
const DECODE_SLACK_BYTES = 1024 * 1024;
/**
 * Only the start of a storage that its views reach is read, so a storage declaring far more than
 * its views use costs nothing (a stored one is bounded by the file anyway; a deflated one may claim
 * 1032 times its compressed size). The views of a deflated storage may reach at most this many
 * times the bytes they hold, plus the slack: torch's views are at worst transposes and slices.
 */
const MAX_DEFLATED_SPAN_GROWTH = 4;
/**
 * A storage whose views leave at most this many bytes of it unread is read whole, which lets its
 * CRC-32 be checked; the CRC of a storage read in part (a prefix) cannot be, and is not.
 */
const WHOLE_READ_SLACK_BYTES = 64 * 1024;

/** Reads storages from the archive and gathers tensors out of them as float32. */
class StorageReader {
  constructor(
    private readonly zip: ZipReader,
    private readonly root: string,
    private readonly path: string,
  ) {}

  /** Each storage is read once, however many tensors view it, and released after use. */
  async decodeAll(refs: ReadonlyMap<string, TensorRef>): Promise<Map<string, Tensor>> {
    const byStorage = new Map<StorageRef, string[]>();
    for (const [name, ref] of refs) {
      const names = byStorage.get(ref.storage) ?? [];
      names.push(name);
      byStorage.set(ref.storage, names);
    }
    let fileBytes = 0;
    for (const [storage, names] of byStorage) fileBytes += this.storageEntry(storage, names[0] as string).compressedSize;
    let decodedBytes = 0;
    for (const ref of refs.values()) decodedBytes += ref.numel * 4;
    if (decodedBytes > MAX_DECODE_GROWTH * fileBytes + DECODE_SLACK_BYTES) {
      throw badCheckpoint(
        this.path,
        `its tensors would decode to ${decodedBytes} bytes from ${fileBytes} bytes of storage; views that repeat storage elements this much are not supported`,
      );
    }
    const decoded = new Map<string, Tensor>();
    for (const [storage, names] of byStorage) {
      const entry = this.storageEntry(storage, names[0] as string);
      const views = names.map((name) => refs.get(name) as TensorRef);
      const bytes = await this.zip.readPrefix(entry.name, this.bytesToRead(entry, storage, views));
      for (const name of names) decoded.set(name, gather(refs.get(name) as TensorRef, bytes));
    }
    // Back in the state dict's order.
    return new Map([...refs.keys()].map((name) => [name, decoded.get(name) as Tensor]));
  }

  /** How much of a storage's entry to read: the prefix its views reach, or all of it when that is little more. */
  private bytesToRead(entry: ZipEntryInfo, storage: StorageRef, views: readonly TensorRef[]): number {
    let needed = 0;
    let held = 0;
    for (const view of views) {
      if (view.numel > 0) needed = Math.max(needed, (view.maxIndex + 1) * storage.type.itemSize);
      held += view.numel * storage.type.itemSize;
    }
    const deflated = entry.compressionMethod === 8;
    if (deflated && needed > MAX_DEFLATED_SPAN_GROWTH * held + DECODE_SLACK_BYTES) {
      throw badCheckpoint(
        this.path,
        `the views of the deflated storage ${describe(entry.name)} reach ${needed} bytes of it to use ${held}; views that skip this much are not supported`,
      );
    }
    return entry.size - needed <= WHOLE_READ_SLACK_BYTES ? entry.size : needed;
  }

  /** The zip entry of a storage, checked to hold exactly the storage's bytes. */
  private storageEntry(storage: StorageRef, user: string): ZipEntryInfo {
    const entryName = `${this.root}data/${storage.key}`;
    const entry = this.zip.entry(entryName);
    if (entry === undefined) throw badCheckpoint(this.path, `storage of tensor ${describe(user)} is missing (no zip entry ${describe(entryName)})`);
    const expected = storage.numel * storage.type.itemSize; // a safe integer: storageLoader checks it
    if (entry.size !== expected) {
      throw badCheckpoint(
        this.path,
        `storage ${describe(entryName)} of tensor ${describe(user)} holds ${entry.size} bytes, expected ${expected} for ${storage.numel} ${storage.type.dtype} elements`,
      );
    }
    return entry;
  }
}

/** The tensor's elements in row-major order; strided and offset views are gathered element by element. */
function gather(ref: TensorRef, bytes: Uint8Array): Tensor {
  const dtype = ref.storage.type.stored as StoredDType; // checked by selectParameters and readBestValLoss
  const itemSize = ref.storage.type.itemSize;
  const shape = [...ref.shape];
  if (ref.numel === 0) return { shape, data: new Float32Array(0) };
  if (isContiguous(ref)) return { shape, data: decodeToFloat32(bytes, ref.offset * itemSize, ref.numel, dtype) };
  const span = decodeToFloat32(bytes, ref.offset * itemSize, ref.maxIndex - ref.offset + 1, dtype);
  const out = new Float32Array(ref.numel);
  const rank = shape.length;
  const index = new Array<number>(rank).fill(0);
  let at = 0;
  for (let i = 0; i < out.length; i++) {
    out[i] = span[at] as number;
    // Advance the multi-index like an odometer, last dimension fastest.
    for (let d = rank - 1; d >= 0; d--) {
      const size = shape[d] as number;
      const stride = ref.stride[d] as number;
      index[d] = (index[d] as number) + 1;
      at += stride;
      if ((index[d] as number) < size) break;
      at -= size * stride;
      index[d] = 0;
    }
  }
  return { shape, data: out };
}

/** Row-major contiguous; a dimension of size 1 may have any stride, as in torch. */
function isContiguous(ref: TensorRef): boolean {
  let expected = 1;
  for (let d = ref.shape.length - 1; d >= 0; d--) {
    const size = ref.shape[d] as number;
    if (size !== 1 && ref.stride[d] !== expected) return false;
    expected *= size;
  }
  return true;
}

function sameView(a: TensorRef, b: TensorRef): boolean {
  return a.storage === b.storage && a.offset === b.offset && sameShape(a.shape, b.shape) && sameShape(a.stride, b.stride);
}

/** A shape for a message: the first few sizes of a long one. */
function shapeText(shape: readonly number[]): string {
  return shape.length > 8 ? `[${shape.slice(0, 8).join(', ')}, … (${shape.length} dimensions)]` : `[${shape.join(', ')}]`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** An lm_head saved in its own storage is accepted only if it equals the embedding exactly. */
function checkTied(lmHead: Tensor, wte: Tensor, path: string): void {
  for (let i = 0; i < wte.data.length; i++) {
    if (!Object.is(lmHead.data[i], wte.data[i])) {
      throw badCheckpoint(
        path,
        `${LM_HEAD} is not tied to ${WTE}: they differ at flat index ${i} (${lmHead.data[i]} vs ${wte.data[i]}), and microgpt models share one matrix`,
      );
    }
  }
}

function readDataset(config: unknown): string | null {
  if (!(config instanceof Map)) return null;
  const dataset = config.get('dataset');
  // Only a plain folder name: the value comes from the file and must not steer us elsewhere.
  return typeof dataset === 'string' && /^[\w.-]{1,100}$/.test(dataset) && dataset !== '..' && dataset !== '.' ? dataset : null;
}

function readIterNum(value: unknown, path: string): number | null {
  if (value === undefined) return null;
  const n = pickleInt(value);
  if (n === null) throw badCheckpoint(path, `iter_num is a ${describePickleValue(value)}, expected an int`);
  return n;
}

async function readBestValLoss(value: unknown, reader: StorageReader, path: string): Promise<number | null> {
  if (value === undefined) return null;
  if (typeof value === 'number') return value;
  if (value instanceof TensorRef) {
    if (value.numel !== 1) throw badCheckpoint(path, `best_val_loss is a tensor of ${value.numel} elements, expected one`);
    if (value.storage.type.stored === null) throw badCheckpoint(path, `best_val_loss is a ${value.storage.type.dtype} tensor, expected a float`);
    const tensor = (await reader.decodeAll(new Map([['best_val_loss', value]]))).get('best_val_loss') as Tensor;
    return tensor.data[0] as number;
  }
  throw badCheckpoint(path, `best_val_loss is a ${describePickleValue(value)}, expected a float or a tensor`);
}

function mostCommonDType(params: ReadonlyMap<string, TensorRef>): StoredDType {
  const elements = new Map<StoredDType, number>();
  for (const ref of params.values()) {
    const dtype = ref.storage.type.stored as StoredDType;
    elements.set(dtype, (elements.get(dtype) ?? 0) + ref.numel);
  }
  let best: StoredDType = 'F32';
  let bestCount = -1;
  for (const [dtype, count] of elements) {
    if (count > bestCount) [best, bestCount] = [dtype, count];
  }
  return best;
}

// ---- meta.pkl ---------------------------------------------------------------------------------

/**
 * nanoGPT's meta.pkl ({'vocab_size': n, 'itos': {id: char}, 'stoi': {char: id}}) → the characters
 * in id order. itos must cover ids 0..n-1 with distinct single characters; stoi and vocab_size,
 * when present, must agree with it.
 */
export async function readMetaPkl(path: string): Promise<string[]> {
  return oneLineErrors(path, readMeta(path));
}

async function readMeta(path: string): Promise<string[]> {
  let bytes: Buffer;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw badCheckpoint(path, 'is not a regular file'); // a FIFO would block the read
    if (info.size > MAX_META_PKL_BYTES) throw badCheckpoint(path, `is ${info.size} bytes; a vocabulary file should be far smaller`);
    bytes = await readFile(path);
  } catch (err) {
    if (err instanceof MicroGPTError) throw err;
    throw badCheckpoint(path, `cannot read the file (${err instanceof Error ? err.message : String(err)})`);
  }
  const meta = unpickle(bytes, { source: shownPath(path) });
  if (!(meta instanceof Map)) throw badCheckpoint(path, `holds a ${describePickleValue(meta)}, expected nanoGPT's meta dict`);
  const itos = meta.get('itos');
  if (!(itos instanceof Map)) throw badCheckpoint(path, "has no 'itos' dict (id → character)");
  if (itos.size === 0 || itos.size > CONFIG_LIMITS.vocabSize) throw badCheckpoint(path, `itos has ${itos.size} entries`);
  const chars: string[] = [];
  const seen = new Map<string, number>();
  for (let id = 0; id < itos.size; id++) {
    if (!itos.has(id)) throw badCheckpoint(path, `itos has ${itos.size} entries but no id ${id}; ids must be 0..${itos.size - 1}`);
    const char = itos.get(id);
    if (typeof char !== 'string' || Array.from(char).length !== 1) {
      throw badCheckpoint(path, `itos[${id}] is ${shown(char)}, not one character`);
    }
    const earlier = seen.get(char);
    if (earlier !== undefined) throw badCheckpoint(path, `itos[${earlier}] and itos[${id}] are both ${JSON.stringify(char)}`);
    seen.set(char, id);
    chars.push(char);
  }
  const stoi = meta.get('stoi');
  if (stoi !== undefined) {
    if (!(stoi instanceof Map)) throw badCheckpoint(path, `stoi is a ${describePickleValue(stoi)}, expected a dict`);
    if (stoi.size !== chars.length) throw badCheckpoint(path, `stoi has ${stoi.size} entries but itos has ${chars.length}`);
    for (const [char, id] of stoi) {
      if (typeof char !== 'string' || seen.get(char) !== id) {
        throw badCheckpoint(path, `stoi[${shown(char)}] = ${shown(id)} disagrees with itos`);
      }
    }
  }
  const vocabSize = meta.get('vocab_size');
  if (vocabSize !== undefined && vocabSize !== chars.length) {
    throw badCheckpoint(path, `vocab_size is ${shown(vocabSize)} but itos has ${chars.length} entries`);
  }
  return chars;
}

/**
 * Our checks raise MicroGPTErrors; anything else escaping them (a RangeError from an allocation
 * too large for this machine, say) still reaches the caller as one line naming the file.
 */
async function oneLineErrors<T>(path: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (err instanceof MicroGPTError) throw err;
    const message = (err instanceof Error ? err.message : String(err)).split('\n', 1)[0] as string;
    throw new MicroGPTError('ERR_BAD_CHECKPOINT', `${shownPath(path)}: cannot read the checkpoint (${message})`, { cause: err });
  }
}

/** A small value as it reads in a message: strings quoted, numbers as they are, others by type. */
function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 20 ? `${value.slice(0, 20)}…` : value);
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  return `a ${describePickleValue(value)}`;
}
