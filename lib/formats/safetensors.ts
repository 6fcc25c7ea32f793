/**
 * Our own model format: safetensors (https://huggingface.co/docs/safetensors) holding the weights
 * under nanoGPT's state_dict names (the tied lm_head is not stored), with `__metadata__`:
 *   "microgpt": format version, "1"
 *   "config":   JSON of ModelConfig (camelCase)
 *   "vocab":    JSON array of the characters in id order
 * Any other metadata string is kept and returned. scripts/torch_gpt.py writes the same layout.
 */
import { constants as bufferConstants } from 'node:buffer';
import { open, rename, rm, stat, writeFile } from 'node:fs/promises';
import { describe, validateConfig, type ModelConfig } from '../config.js';
import { MicroGPTError, badCheckpoint, shownPath } from '../errors.js';
import { assembleWeights, namedTensors, type ModelWeights, type Tensor } from '../weights.js';
import { DTYPE_BYTES, decodeToFloat32, encodeBFloat16, encodeFloat16, type StoredDType } from './dtype.js';

export const SAFETENSORS_FORMAT_VERSION = '1';
/** A header larger than this is not a model header (the reference implementation caps it at 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;
const READABLE_DTYPES = new Set<string>(['F32', 'F16', 'BF16', 'F64']);
export type WritableDType = 'F32' | 'F16' | 'BF16';

export interface SafetensorsModel {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly vocab: string[];
  /** Metadata strings other than microgpt/config/vocab. */
  readonly metadata: Record<string, string>;
  readonly storedDType: StoredDType;
}

interface HeaderEntry {
  readonly name: string;
  readonly dtype: StoredDType;
  readonly shape: number[];
  readonly begin: number;
  readonly end: number;
}

export async function readSafetensors(path: string): Promise<SafetensorsModel> {
  let bytes: Buffer;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw badCheckpoint(path, 'is not a file');
    if (info.size > bufferConstants.MAX_LENGTH) {
      throw badCheckpoint(path, `${info.size} bytes is more than this Node.js can hold in memory`);
    }
    const handle = await open(path, 'r');
    try {
      bytes = await handle.readFile();
    } finally {
      await handle.close().catch(() => undefined);
    }
  } catch (error) {
    if (error instanceof MicroGPTError) throw error;
    const message = (error instanceof Error ? error.message : String(error)).split('\n', 1)[0] as string;
    throw new MicroGPTError('ERR_BAD_CHECKPOINT', `${shownPath(path)}: cannot read the file (${message})`, { cause: error });
  }
  return parseSafetensors(bytes, path);
}

/** Parses a whole safetensors file held in memory; `source` names it in errors. */
export function parseSafetensors(bytes: Uint8Array, source: string): SafetensorsModel {
  try {
    return parse(bytes, source);
  } catch (error) {
    // Our checks raise MicroGPTErrors; anything else (an allocation too large for this machine) is one line too.
    if (error instanceof MicroGPTError) throw error;
    const message = (error instanceof Error ? error.message : String(error)).split('\n', 1)[0] as string;
    throw new MicroGPTError('ERR_BAD_CHECKPOINT', `${shownPath(source)}: cannot read the model (${message})`, { cause: error });
  }
}

function parse(bytes: Uint8Array, source: string): SafetensorsModel {
  if (bytes.length < 8) throw badCheckpoint(source, `truncated: ${bytes.length} bytes, too short for a safetensors header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(Math.min(MAX_HEADER_BYTES, bytes.length - 8))) {
    throw badCheckpoint(
      source,
      `header length ${headerLength} is larger than the file (${bytes.length} bytes): truncated, or not a safetensors file`,
    );
  }
  const headerEnd = 8 + Number(headerLength);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, headerEnd)));
  } catch (error) {
    throw badCheckpoint(source, `the safetensors header is not valid UTF-8 JSON (${(error as Error).message.split('\n', 1)[0]})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw badCheckpoint(source, 'the safetensors header is not a JSON object');
  }
  const { metadata, entries } = readHeader(header as Record<string, unknown>, bytes.length - headerEnd, source);

  if (metadata['microgpt'] === undefined) {
    throw badCheckpoint(source, 'no "microgpt" entry in __metadata__: this safetensors file was not written for microgpt (convert it with `microgpt convert`)');
  }
  if (metadata['microgpt'] !== SAFETENSORS_FORMAT_VERSION) {
    throw badCheckpoint(source, `microgpt format version ${describe(metadata['microgpt'])} is not supported (this version reads "${SAFETENSORS_FORMAT_VERSION}")`);
  }
  const config = validateConfig(parseJsonField(metadata, 'config', source), `${shownPath(source)}: __metadata__.config`);
  const vocab = parseVocab(parseJsonField(metadata, 'vocab', source), config, source);

  const data = bytes.subarray(headerEnd);
  const tensors = new Map<string, Tensor>();
  const dtypeCounts = new Map<StoredDType, number>();
  for (const e of entries) {
    const count = e.shape.reduce((a, b) => a * b, 1);
    tensors.set(e.name, { shape: e.shape, data: decodeToFloat32(data, e.begin, count, e.dtype) });
    dtypeCounts.set(e.dtype, (dtypeCounts.get(e.dtype) ?? 0) + count);
  }
  const weights = assembleWeights(config, tensors, source);
  const rest: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata)) if (k !== 'microgpt' && k !== 'config' && k !== 'vocab') rest[k] = v;
  const storedDType = [...dtypeCounts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'F32';
  return { config, weights, vocab, metadata: rest, storedDType };
}

function readHeader(
  header: Record<string, unknown>,
  dataLength: number,
  source: string,
): { metadata: Record<string, string>; entries: HeaderEntry[] } {
  const metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) {
        throw badCheckpoint(source, '__metadata__ must be an object of strings');
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== 'string') throw badCheckpoint(source, `__metadata__ entry ${describe(k)} must be a string`);
        metadata[k] = v;
      }
      continue;
    }
    const tensor = `tensor ${describe(name)}`;
    const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (typeof entry !== 'object' || entry === null) throw badCheckpoint(source, `${tensor}: header entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string' || !READABLE_DTYPES.has(dtype)) {
      throw badCheckpoint(source, `${tensor} has dtype ${shownJson(dtype)}; microgpt reads F32, F16, BF16 and F64`);
    }
    if (!Array.isArray(shape) || shape.length > 8 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw badCheckpoint(source, `${tensor} has an invalid shape ${shownJson(shape)}`);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1] ||
      offsets[1] > dataLength
    ) {
      throw badCheckpoint(
        source,
        `${tensor} has data_offsets ${shownJson(offsets)} outside the ${dataLength} data bytes (truncated file?)`,
      );
    }
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const [begin, end] = offsets as [number, number];
    if (end - begin !== numel * DTYPE_BYTES[dtype as StoredDType]) {
      throw badCheckpoint(source, `${tensor}: ${end - begin} bytes do not hold shape [${shape.join(', ')}] of ${dtype}`);
    }
    entries.push({ name, dtype: dtype as StoredDType, shape: shape as number[], begin, end });
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.begin < prev.end) throw badCheckpoint(source, `tensors ${describe(prev.name)} and ${describe(cur.name)} overlap in the data`);
  }
  return { metadata, entries };
}

/** A header value as JSON on one line, cut short if long. */
function shownJson(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

function parseJsonField(metadata: Record<string, string>, key: string, source: string): unknown {
  const text = metadata[key];
  if (text === undefined) throw badCheckpoint(source, `__metadata__ has no "${key}"`);
  try {
    return JSON.parse(text);
  } catch {
    throw badCheckpoint(source, `__metadata__.${key} is not valid JSON`);
  }
}

function parseVocab(value: unknown, config: ModelConfig, source: string): string[] {
  if (!Array.isArray(value) || !value.every((c) => typeof c === 'string')) {
    throw badCheckpoint(source, '__metadata__.vocab must be a JSON array of strings');
  }
  if (value.length > config.vocabSize) {
    throw badCheckpoint(source, `the vocabulary has ${value.length} characters but the model only ${config.vocabSize} token ids`);
  }
  return value as string[];
}

export interface WriteSafetensorsOptions {
  readonly config: ModelConfig;
  readonly weights: ModelWeights;
  readonly vocab: readonly string[];
  /** Element type on disk; weights are rounded to nearest even. Default F32. */
  readonly dtype?: WritableDType;
  readonly metadata?: Readonly<Record<string, string>>;
}

/** Writes a model; the file appears whole or not at all (written beside it, then renamed). */
export async function writeSafetensors(path: string, options: WriteSafetensorsOptions): Promise<void> {
  const bytes = encodeSafetensors(options);
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    await writeFile(temporary, bytes);
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

export function encodeSafetensors(options: WriteSafetensorsOptions): Uint8Array {
  const { config, weights, vocab } = options;
  const dtype = options.dtype ?? 'F32';
  const header: Record<string, unknown> = {
    __metadata__: {
      ...options.metadata,
      microgpt: SAFETENSORS_FORMAT_VERSION,
      config: JSON.stringify({
        vocabSize: config.vocabSize,
        blockSize: config.blockSize,
        nLayer: config.nLayer,
        nHead: config.nHead,
        nEmbd: config.nEmbd,
        bias: config.bias,
      }),
      vocab: JSON.stringify(vocab),
    },
  };
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, tensor] of namedTensors(config, weights)) {
    const raw = encodeTensor(tensor.data, dtype);
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + raw.length] };
    blobs.push(raw);
    offset += raw.length;
  }
  let headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const padding = (8 - (headerBytes.length % 8)) % 8; // keeps the data 8-byte aligned
  if (padding > 0) headerBytes = Buffer.concat([headerBytes, Buffer.alloc(padding, 0x20)]);
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let at = 8 + headerBytes.length;
  for (const blob of blobs) {
    out.set(blob, at);
    at += blob.length;
  }
  return out;
}

function encodeTensor(data: Float32Array, dtype: WritableDType): Uint8Array {
  // Copies keep the output little-endian and independent of the input's alignment.
  if (dtype === 'F32') return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
  const bits = dtype === 'F16' ? encodeFloat16(data) : encodeBFloat16(data);
  return new Uint8Array(bits.buffer);
}
