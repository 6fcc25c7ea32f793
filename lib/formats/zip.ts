/**
 * Reading whole entries of a zip archive (PyTorch's checkpoint container) with yauzl. The central
 * directory is read once; entries are read one at a time, on demand, so a caller can skip the
 * ones it does not need. Every declared size is checked against the file before anything is
 * allocated, and each entry's CRC-32 is verified after reading.
 */
import { constants as bufferConstants } from 'node:buffer';
import { crc32 } from 'node:zlib';
import yauzl from 'yauzl';
import { MicroGPTError, badCheckpoint } from '../errors.js';

export interface ZipEntryInfo {
  readonly name: string;
  /** Bytes the entry's data occupies in the file. */
  readonly compressedSize: number;
  /** Bytes the entry holds once decompressed; checked plausible against compressedSize. */
  readonly size: number;
  /** 0: stored, 8: deflated (the only two methods read). */
  readonly compressionMethod: number;
}

const STORED = 0;
const DEFLATED = 8;
/** Deflate cannot expand data by more than about 1032:1, so a larger claim is a lie. */
const MAX_DEFLATE_RATIO = 1032;

export class ZipReader {
  private constructor(
    readonly path: string,
    private readonly zip: yauzl.ZipFile,
    private readonly byName: ReadonlyMap<string, yauzl.Entry>,
  ) {}

  /** Opens `path` and reads its central directory. Errors are ERR_BAD_CHECKPOINT naming the file. */
  static async open(path: string): Promise<ZipReader> {
    let zip: yauzl.ZipFile;
    try {
      zip = await yauzl.openPromise(path, { lazyEntries: true, autoClose: false, validateEntrySizes: true });
    } catch (err) {
      throw badCheckpoint(path, `not a readable zip archive (${messageOf(err)})`);
    }
    const byName = new Map<string, yauzl.Entry>();
    try {
      for await (const entry of zip.eachEntry()) {
        checkEntry(path, entry, zip.fileSize);
        if (byName.has(entry.fileName)) throw badCheckpoint(path, `zip archive holds "${entry.fileName}" twice`);
        byName.set(entry.fileName, entry);
      }
    } catch (err) {
      zip.close();
      if (err instanceof MicroGPTError) throw err;
      throw badCheckpoint(path, `corrupt zip archive (${messageOf(err)})`);
    }
    return new ZipReader(path, zip, byName);
  }

  /** Entry names in central-directory order. */
  get names(): string[] {
    return [...this.byName.keys()];
  }

  entry(name: string): ZipEntryInfo | undefined {
    const e = this.byName.get(name);
    if (e === undefined) return undefined;
    return { name, compressedSize: e.compressedSize, size: e.uncompressedSize, compressionMethod: e.compressionMethod };
  }

  /** Reads a whole entry into memory, refusing entries larger than `maxBytes`. */
  async read(name: string, maxBytes: number = bufferConstants.MAX_LENGTH): Promise<Buffer> {
    const entry = this.byName.get(name);
    if (entry === undefined) throw badCheckpoint(this.path, `zip archive has no entry "${name}"`);
    const size = entry.uncompressedSize;
    if (size > maxBytes) throw badCheckpoint(this.path, `zip entry "${name}" is ${size} bytes, more than the ${maxBytes} allowed`);
    const out = Buffer.allocUnsafe(size);
    let filled = 0;
    try {
      const stream = await this.zip.openReadStreamPromise(entry);
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        if (filled + chunk.length > size) {
          stream.destroy();
          throw badCheckpoint(this.path, `zip entry "${name}" holds more than its declared ${size} bytes`);
        }
        chunk.copy(out, filled);
        filled += chunk.length;
      }
    } catch (err) {
      if (err instanceof MicroGPTError) throw err;
      throw badCheckpoint(this.path, `cannot read zip entry "${name}" (${messageOf(err)})`);
    }
    if (filled !== size) throw badCheckpoint(this.path, `zip entry "${name}" holds ${filled} bytes, not its declared ${size}`);
    // yauzl does not check CRCs; a flipped bit in a weight would otherwise go unnoticed.
    if (crc32(out) >>> 0 !== entry.crc32 >>> 0) {
      throw badCheckpoint(this.path, `zip entry "${name}" is corrupt (CRC-32 mismatch)`);
    }
    return out;
  }

  close(): void {
    this.zip.close();
  }
}

function checkEntry(path: string, entry: yauzl.Entry, fileSize: number): void {
  const name = entry.fileName;
  if (entry.isEncrypted()) throw badCheckpoint(path, `zip entry "${name}" is encrypted`);
  const method = entry.compressionMethod;
  if (method !== STORED && method !== DEFLATED) {
    throw badCheckpoint(path, `zip entry "${name}" uses compression method ${method}; only stored (0) and deflated (8) are supported`);
  }
  if (entry.compressedSize > fileSize) {
    throw badCheckpoint(path, `zip entry "${name}" claims ${entry.compressedSize} bytes in a ${fileSize}-byte file`);
  }
  const size = entry.uncompressedSize;
  if (method === STORED && size !== entry.compressedSize) {
    throw badCheckpoint(path, `zip entry "${name}" is stored but its sizes differ (${entry.compressedSize} vs ${size})`);
  }
  if (method === DEFLATED && size > entry.compressedSize * MAX_DEFLATE_RATIO + 1024) {
    throw badCheckpoint(path, `zip entry "${name}" claims ${size} bytes from ${entry.compressedSize} compressed, which deflate cannot do`);
  }
  if (size > bufferConstants.MAX_LENGTH) {
    throw badCheckpoint(path, `zip entry "${name}" is ${size} bytes, more than fits in memory at once`);
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
