/**
 * Reading entries of a zip archive (PyTorch's checkpoint container), written for hostile input.
 * torch.save writes its archives with PyTorch's own miniz-based writer: stored entries whose data
 * is 64-byte aligned by padding in the local header's extra field, sizes and CRC in data
 * descriptors (so the central directory is the authority), and zip64 records once the archive or
 * an entry passes 4 GiB (newer versions write a zip64 end record always). Deflated entries, which
 * torch never writes but a re-zipped checkpoint may hold, are read too.
 *
 * The central directory is read once and every offset and size in it is checked against the file
 * before anything is allocated or read; entries are then read one at a time, on demand, so a
 * caller can skip the ones it does not need, and can read only the start of one. Every failure,
 * including an I/O error, is a MicroGPTError naming the file.
 */
import { constants as bufferConstants } from 'node:buffer';
import { open, type FileHandle } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { crc32, createInflateRaw } from 'node:zlib';
import { describe } from '../config.js';
import { MicroGPTError, badCheckpoint, shownPath } from '../errors.js';

export interface ZipEntryInfo {
  readonly name: string;
  /** Bytes the entry's data occupies in the file. */
  readonly compressedSize: number;
  /** Bytes the entry holds once decompressed; checked plausible against compressedSize. */
  readonly size: number;
  /** 0: stored, 8: deflated (the only two methods read). */
  readonly compressionMethod: number;
}

/** What the central directory says of one entry, checked. */
interface Entry extends ZipEntryInfo {
  readonly crc32: number;
  readonly localHeaderOffset: number;
  /** The name as stored, to compare with the local header's. */
  readonly rawName: Buffer;
}

const STORED = 0;
const DEFLATED = 8;
/** Deflate cannot expand data by more than about 1032:1, so a larger claim is a lie. */
const MAX_DEFLATE_RATIO = 1032;

const EOCD_SIGNATURE = 0x06054b50;
const EOCD_BYTES = 22;
const MAX_COMMENT_BYTES = 0xffff;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_LOCATOR_BYTES = 20;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const ZIP64_EOCD_BYTES = 56;
const CENTRAL_HEADER_SIGNATURE = 0x02014b50;
const CENTRAL_HEADER_BYTES = 46;
const LOCAL_HEADER_SIGNATURE = 0x04034b50;
const LOCAL_HEADER_BYTES = 30;
const ZIP64_EXTRA_ID = 0x0001;
/** Encrypted (bit 0), strong encryption (bit 6), encrypted central directory (bit 13). */
const ENCRYPTION_FLAGS = 0x0001 | 0x0040 | 0x2000;
/**
 * A gpt2-xl checkpoint with optimizer state has a few thousand entries, some 100 KiB of directory;
 * a bigger one is not a checkpoint's and is refused before it is allocated.
 */
const MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024 * 1024;
/** Largest single read (fs reads are limited to 2 GiB) and the unit compressed data is fed in. */
const READ_CHUNK_BYTES = 16 * 1024 * 1024;
const INFLATE_INPUT_CHUNK_BYTES = 64 * 1024;

/** ignoreBOM: a leading U+FEFF is part of the text, not a marker to drop. */
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export class ZipReader {
  /** Bytes the inflater produced so far, kept or not: what reading deflated entries has cost. */
  inflatedBytes = 0;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly fileSize: number,
    /** Entry data must end before this offset: where the central directory begins. */
    private readonly dataEnd: number,
    private readonly byName: ReadonlyMap<string, Entry>,
  ) {}

  /** Opens `path` and reads its central directory. Errors are ERR_BAD_CHECKPOINT naming the file. */
  static async open(path: string): Promise<ZipReader> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw badCheckpoint(path, `cannot read the file (${messageOf(err)})`);
    }
    try {
      const fileSize = (await handle.stat()).size;
      const directory = await readCentralDirectory(new FileReader(handle, path, fileSize));
      return new ZipReader(path, handle, fileSize, directory.offset, directory.entries);
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw asBadCheckpoint(path, err, 'corrupt zip archive');
    }
  }

  /** Entry names in central-directory order. */
  get names(): string[] {
    return [...this.byName.keys()];
  }

  entry(name: string): ZipEntryInfo | undefined {
    const e = this.byName.get(name);
    if (e === undefined) return undefined;
    return { name, compressedSize: e.compressedSize, size: e.size, compressionMethod: e.compressionMethod };
  }

  /** Reads a whole entry into memory and checks its CRC-32, refusing entries larger than `maxBytes`. */
  async read(name: string, maxBytes: number = bufferConstants.MAX_LENGTH): Promise<Buffer> {
    const entry = this.find(name);
    if (entry.size > maxBytes) {
      throw badCheckpoint(this.path, `zip entry ${describe(name)} is ${entry.size} bytes, more than the ${maxBytes} allowed`);
    }
    return this.readData(entry, entry.size);
  }

  /**
   * The first `length` bytes of an entry, reading (for a deflated entry: inflating) no more of it
   * than that, so an entry's declared size costs nothing beyond what the caller needs. The CRC-32
   * covers the whole entry, so it is checked only when `length` is the entry's size.
   */
  async readPrefix(name: string, length: number): Promise<Buffer> {
    const entry = this.find(name);
    if (!Number.isSafeInteger(length) || length < 0 || length > entry.size) {
      throw badCheckpoint(this.path, `zip entry ${describe(name)} holds ${entry.size} bytes, fewer than the ${length} needed`);
    }
    return this.readData(entry, length);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  private find(name: string): Entry {
    const entry = this.byName.get(name);
    if (entry === undefined) throw badCheckpoint(this.path, `zip archive has no entry ${describe(name)}`);
    return entry;
  }

  private async readData(entry: Entry, length: number): Promise<Buffer> {
    const shown = describe(entry.name);
    try {
      const file = new FileReader(this.handle, this.path, this.fileSize);
      const start = await dataStart(file, entry, this.dataEnd);
      const whole = length === entry.size;
      const data =
        entry.compressionMethod === STORED
          ? await file.readAt(start, length, `zip entry ${shown}`)
          : await this.inflate(file, entry, start, length);
      if (whole && crc32(data) >>> 0 !== entry.crc32) {
        throw badCheckpoint(this.path, `zip entry ${shown} is corrupt (CRC-32 mismatch)`);
      }
      return data;
    } catch (err) {
      throw asBadCheckpoint(this.path, err, `cannot read zip entry ${shown}`);
    }
  }

  /**
   * Inflates a deflated entry until `length` bytes came out, then stops: the compressed data is
   * fed in small pieces and the inflater, which waits while its output is unread, is destroyed.
   * Reading the whole entry also checks that it holds exactly its declared size.
   */
  private async inflate(file: FileReader, entry: Entry, start: number, length: number): Promise<Buffer> {
    const shown = describe(entry.name);
    const whole = length === entry.size;
    const out = Buffer.alloc(length);
    if (length === 0 && !whole) return out;
    let filled = 0;
    const enough = new Error('enough');
    async function* compressed(): AsyncGenerator<Buffer> {
      for (let at = 0; at < entry.compressedSize; at += INFLATE_INPUT_CHUNK_BYTES) {
        const piece = Math.min(INFLATE_INPUT_CHUNK_BYTES, entry.compressedSize - at);
        yield await file.readAt(start + at, piece, `zip entry ${shown}`);
      }
    }
    try {
      await pipeline(compressed, createInflateRaw(), async (inflated: AsyncIterable<Buffer>) => {
        for await (const chunk of inflated) {
          this.inflatedBytes += chunk.length;
          const room = length - filled;
          if (chunk.length > room && whole) {
            throw badCheckpoint(this.path, `zip entry ${shown} holds more than its declared ${entry.size} bytes`);
          }
          chunk.copy(out, filled, 0, Math.min(room, chunk.length));
          filled += Math.min(room, chunk.length);
          if (filled === length && !whole) throw enough;
        }
      });
    } catch (err) {
      if (err !== enough) {
        if (err instanceof MicroGPTError) throw err;
        throw badCheckpoint(this.path, `zip entry ${shown} is not valid deflate data (${messageOf(err)})`);
      }
    }
    if (filled !== length) throw badCheckpoint(this.path, `zip entry ${shown} holds ${filled} bytes, not its declared ${entry.size}`);
    return out;
  }
}

/** Reads at positions checked against the file, turning every failure into a MicroGPTError. */
class FileReader {
  constructor(
    private readonly handle: FileHandle,
    readonly path: string,
    readonly size: number,
  ) {}

  async readAt(position: number, length: number, what: string): Promise<Buffer> {
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > this.size) {
      throw badCheckpoint(this.path, `${what} (${length} bytes at offset ${position}) lies outside the ${this.size}-byte file`);
    }
    const buffer = Buffer.allocUnsafe(length);
    let filled = 0;
    while (filled < length) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.handle.read(buffer, filled, Math.min(READ_CHUNK_BYTES, length - filled), position + filled));
      } catch (err) {
        throw badCheckpoint(this.path, `cannot read ${what} (${messageOf(err)})`);
      }
      if (bytesRead === 0) throw badCheckpoint(this.path, `the file ended while reading ${what}; was it changed while being read?`);
      filled += bytesRead;
    }
    return buffer;
  }
}

/** The end-of-central-directory record's facts, zip64 values taken where the 32-bit ones overflowed. */
interface DirectoryEnd {
  readonly entryCount: number;
  readonly size: number;
  readonly offset: number;
  /** Where the central directory must end: the zip64 end record, or the end record. */
  readonly limit: number;
}

async function readDirectoryEnd(file: FileReader): Promise<DirectoryEnd> {
  if (file.size < EOCD_BYTES) throw badCheckpoint(file.path, `is ${file.size} bytes, too short for a zip archive`);
  const tailStart = Math.max(0, file.size - EOCD_BYTES - MAX_COMMENT_BYTES);
  const tail = await file.readAt(tailStart, file.size - tailStart, 'the end of the zip archive');
  // The record is followed by its comment and nothing else; search back for the one that fits.
  let at = -1;
  for (let i = tail.length - EOCD_BYTES; i >= 0; i--) {
    if (tail.readUInt32LE(i) === EOCD_SIGNATURE && i + EOCD_BYTES + tail.readUInt16LE(i + 20) === tail.length) {
      at = i;
      break;
    }
  }
  if (at < 0) throw badCheckpoint(file.path, 'has no zip end-of-central-directory record: truncated, or not a zip archive');
  const eocd = tailStart + at;
  const disk = tail.readUInt16LE(at + 4);
  const directoryDisk = tail.readUInt16LE(at + 6);
  const entriesOnDisk = tail.readUInt16LE(at + 8);
  let entryCount = tail.readUInt16LE(at + 10);
  let size = tail.readUInt32LE(at + 12);
  let offset = tail.readUInt32LE(at + 16);
  let limit = eocd;

  const locatorAt = eocd - ZIP64_LOCATOR_BYTES;
  const locator = locatorAt >= 0 ? await file.readAt(locatorAt, ZIP64_LOCATOR_BYTES, 'the zip64 end locator') : null;
  if (locator !== null && locator.readUInt32LE(0) === ZIP64_LOCATOR_SIGNATURE) {
    if (locator.readUInt32LE(4) !== 0 || locator.readUInt32LE(16) !== 1) throw badCheckpoint(file.path, 'is a multi-disk zip archive, which is not supported');
    const recordAt = u64(locator, 8, file.path, 'zip64 end record offset');
    if (recordAt + ZIP64_EOCD_BYTES > locatorAt) {
      throw badCheckpoint(file.path, `zip64 end record offset ${recordAt} does not lie before its locator at ${locatorAt}`);
    }
    const record = await file.readAt(recordAt, ZIP64_EOCD_BYTES, 'the zip64 end record');
    if (record.readUInt32LE(0) !== ZIP64_EOCD_SIGNATURE) throw badCheckpoint(file.path, `has no zip64 end record at offset ${recordAt}`);
    if (record.readUInt32LE(16) !== 0 || record.readUInt32LE(20) !== 0) throw badCheckpoint(file.path, 'is a multi-disk zip archive, which is not supported');
    const entriesOnDisk64 = u64(record, 24, file.path, 'zip64 entry count');
    const entryCount64 = u64(record, 32, file.path, 'zip64 entry count');
    const size64 = u64(record, 40, file.path, 'zip64 central directory size');
    const offset64 = u64(record, 48, file.path, 'zip64 central directory offset');
    if (entriesOnDisk64 !== entryCount64) throw badCheckpoint(file.path, 'is a multi-disk zip archive, which is not supported');
    // A 32-bit field that overflowed holds all ones; one that did not must agree with zip64.
    entryCount = fromZip64(entryCount, 0xffff, entryCount64, 'entry count', file.path);
    size = fromZip64(size, 0xffffffff, size64, 'central directory size', file.path);
    offset = fromZip64(offset, 0xffffffff, offset64, 'central directory offset', file.path);
    limit = recordAt;
  } else if ((disk !== 0 || directoryDisk !== 0 || entriesOnDisk !== entryCount)) {
    throw badCheckpoint(file.path, 'is a multi-disk zip archive, which is not supported');
  }
  if (offset + size > limit) {
    throw badCheckpoint(file.path, `zip central directory (${size} bytes at offset ${offset}) runs past its end record at ${limit}`);
  }
  if (size > MAX_CENTRAL_DIRECTORY_BYTES) {
    throw badCheckpoint(file.path, `zip central directory is ${size} bytes, more than the ${MAX_CENTRAL_DIRECTORY_BYTES} a checkpoint needs`);
  }
  if (entryCount * CENTRAL_HEADER_BYTES > size) {
    throw badCheckpoint(file.path, `zip central directory of ${size} bytes cannot hold the ${entryCount} entries it claims`);
  }
  return { entryCount, size, offset, limit };
}

function fromZip64(value: number, overflowed: number, value64: number, what: string, path: string): number {
  if (value === overflowed) return value64;
  if (value !== value64) throw badCheckpoint(path, `zip ${what} is ${value} in the end record but ${value64} in the zip64 end record`);
  return value;
}

/** An unsigned 64-bit field, which must fit a safe integer (no file is 8 PiB). */
function u64(buffer: Buffer, at: number, path: string, what: string): number {
  const value = buffer.readBigUInt64LE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw badCheckpoint(path, `${what} ${value} is impossibly large`);
  return Number(value);
}

async function readCentralDirectory(file: FileReader): Promise<{ offset: number; entries: Map<string, Entry> }> {
  const end = await readDirectoryEnd(file);
  const directory = await file.readAt(end.offset, end.size, 'the zip central directory');
  const entries = new Map<string, Entry>();
  let at = 0;
  for (let i = 0; i < end.entryCount; i++) {
    const where = `zip central directory entry ${i}`;
    if (at + CENTRAL_HEADER_BYTES > directory.length || directory.readUInt32LE(at) !== CENTRAL_HEADER_SIGNATURE) {
      throw badCheckpoint(file.path, `${where} is missing or damaged (at offset ${end.offset + at})`);
    }
    const flags = directory.readUInt16LE(at + 8);
    const method = directory.readUInt16LE(at + 10);
    const crc = directory.readUInt32LE(at + 16);
    let compressedSize = directory.readUInt32LE(at + 20);
    let size = directory.readUInt32LE(at + 24);
    const nameBytes = directory.readUInt16LE(at + 28);
    const extraBytes = directory.readUInt16LE(at + 30);
    const commentBytes = directory.readUInt16LE(at + 32);
    let disk = directory.readUInt16LE(at + 34);
    let localHeaderOffset = directory.readUInt32LE(at + 42);
    const nameAt = at + CENTRAL_HEADER_BYTES;
    const next = nameAt + nameBytes + extraBytes + commentBytes;
    if (next > directory.length) throw badCheckpoint(file.path, `${where} runs past the end of the central directory`);
    const rawName = directory.subarray(nameAt, nameAt + nameBytes);
    let name: string;
    try {
      name = utf8Decoder.decode(rawName);
    } catch {
      throw badCheckpoint(file.path, `${where} has a name that is not UTF-8`);
    }
    const shown = `zip entry ${describe(name)}`;

    // Zip64 sizes and offsets, present for exactly the fields whose 32-bit value is all ones.
    const extra = directory.subarray(nameAt + nameBytes, nameAt + nameBytes + extraBytes);
    for (let e = 0; e < extra.length; ) {
      if (e + 4 > extra.length) throw badCheckpoint(file.path, `${shown} has a malformed extra field`);
      const id = extra.readUInt16LE(e);
      const length = extra.readUInt16LE(e + 2);
      if (e + 4 + length > extra.length) throw badCheckpoint(file.path, `${shown} has a malformed extra field`);
      if (id === ZIP64_EXTRA_ID) {
        const field = extra.subarray(e + 4, e + 4 + length);
        let f = 0;
        const take = (what: string): number => {
          if (f + 8 > field.length) throw badCheckpoint(file.path, `${shown} has a zip64 extra field without its ${what}`);
          const value = u64(field, f, file.path, `${shown} ${what}`);
          f += 8;
          return value;
        };
        if (size === 0xffffffff) size = take('size');
        if (compressedSize === 0xffffffff) compressedSize = take('compressed size');
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = take('local header offset');
        if (disk === 0xffff) {
          if (f + 4 > field.length) throw badCheckpoint(file.path, `${shown} has a zip64 extra field without its disk number`);
          disk = field.readUInt32LE(f);
        }
      }
      e += 4 + length;
    }

    if ((flags & ENCRYPTION_FLAGS) !== 0) throw badCheckpoint(file.path, `${shown} is encrypted`);
    if (disk !== 0) throw badCheckpoint(file.path, `${shown} lies on disk ${disk}; multi-disk zip archives are not supported`);
    if (method !== STORED && method !== DEFLATED) {
      throw badCheckpoint(file.path, `${shown} uses compression method ${method}; only stored (0) and deflated (8) are supported`);
    }
    if (method === STORED && size !== compressedSize) {
      throw badCheckpoint(file.path, `${shown} is stored but its sizes differ (${compressedSize} vs ${size})`);
    }
    if (method === DEFLATED && size > compressedSize * MAX_DEFLATE_RATIO + 1024) {
      throw badCheckpoint(file.path, `${shown} claims ${size} bytes from ${compressedSize} compressed, which deflate cannot do`);
    }
    // The local header, the name (the same as here) and the data must lie before the directory.
    if (localHeaderOffset + LOCAL_HEADER_BYTES + nameBytes + compressedSize > end.offset) {
      throw badCheckpoint(
        file.path,
        `${shown} (${compressedSize} bytes at offset ${localHeaderOffset}) runs into the central directory at offset ${end.offset}`,
      );
    }
    if (entries.has(name)) throw badCheckpoint(file.path, `zip archive holds ${describe(name)} twice`);
    entries.set(name, { name, compressedSize, size, compressionMethod: method, crc32: crc, localHeaderOffset, rawName });
    at = next;
  }
  if (at !== directory.length) {
    throw badCheckpoint(file.path, `zip central directory is ${directory.length} bytes but its ${end.entryCount} entries take ${at}`);
  }
  checkNoOverlap([...entries.values()], file.path);
  return { offset: end.offset, entries };
}

/** Entries sharing bytes would let a small file stand for much larger contents. */
function checkNoOverlap(entries: Entry[], path: string): void {
  const sorted = entries.sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1] as Entry;
    const current = sorted[i] as Entry;
    const previousEnd = previous.localHeaderOffset + LOCAL_HEADER_BYTES + previous.rawName.length + previous.compressedSize;
    if (previousEnd > current.localHeaderOffset) {
      throw badCheckpoint(path, `zip entries ${describe(previous.name)} and ${describe(current.name)} overlap`);
    }
  }
}

/** Checks an entry's local header against the central directory; returns where its data begins. */
async function dataStart(file: FileReader, entry: Entry, dataEnd: number): Promise<number> {
  const shown = `zip entry ${describe(entry.name)}`;
  const nameBytes = entry.rawName.length;
  const header = await file.readAt(entry.localHeaderOffset, LOCAL_HEADER_BYTES + nameBytes, `the local header of ${shown}`);
  if (header.readUInt32LE(0) !== LOCAL_HEADER_SIGNATURE) throw badCheckpoint(file.path, `${shown} has no local header at offset ${entry.localHeaderOffset}`);
  if (header.readUInt16LE(8) !== entry.compressionMethod) throw badCheckpoint(file.path, `${shown}: its local header and the central directory disagree on the compression method`);
  if (header.readUInt16LE(26) !== nameBytes || !header.subarray(LOCAL_HEADER_BYTES).equals(entry.rawName)) {
    throw badCheckpoint(file.path, `${shown}: its local header names another entry`);
  }
  // Sizes and CRC in the local header may be zero (a data descriptor follows the data); the central directory's are used.
  const start = entry.localHeaderOffset + LOCAL_HEADER_BYTES + nameBytes + header.readUInt16LE(28);
  if (start + entry.compressedSize > dataEnd) {
    throw badCheckpoint(file.path, `${shown} (${entry.compressedSize} bytes at offset ${start}) runs into the central directory at offset ${dataEnd}`);
  }
  return start;
}

/** Errors we raised pass through; anything else (a RangeError, an allocation failure) becomes one line naming the file. */
function asBadCheckpoint(path: string, err: unknown, what: string): MicroGPTError {
  if (err instanceof MicroGPTError) return err;
  return new MicroGPTError('ERR_BAD_CHECKPOINT', `${shownPath(path)}: ${what} (${messageOf(err)})`, { cause: err });
}

function messageOf(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.split('\n', 1)[0] as string;
}
