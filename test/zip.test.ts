/**
 * The zip reader against hostile archives: every damaged record ends in a one-line
 * ERR_BAD_CHECKPOINT naming the file (never a crash, an uncaught exception or a huge allocation),
 * and what real PyTorch archives hold, stored, deflated or zip64, is read exactly.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { crc32, deflateRawSync } from 'node:zlib';
import { MicroGPTError } from '../lib/errors.js';
import { readTorchCheckpoint, type TorchCheckpoint } from '../lib/formats/torch-checkpoint.js';
import { ZipReader } from '../lib/formats/zip.js';
import { deflatedZeros, entriesOf, writeZip, type ArchiveEntry } from './fixtures/hostile/archives.js';
import { MODEL_NAMES, fixture } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'microgpt-zip-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let written = 0;

function save(bytes: Uint8Array, name = `archive-${written++}.pt`): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

/** A MicroGPTError of the given code whose message is one line starting with the file's path. */
function assertRefusal(err: unknown, path: string, pattern?: RegExp, code = 'ERR_BAD_CHECKPOINT'): true {
  assert.ok(err instanceof MicroGPTError, `expected a MicroGPTError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  assert.ok(err.message.startsWith(`${path}: `), `should start with the path: ${err.message}`);
  assert.ok(!/[\n\r]/.test(err.message), `should be one line: ${JSON.stringify(err.message)}`);
  if (pattern !== undefined) assert.match(err.message, pattern);
  return true;
}

async function refuses(bytes: Uint8Array, pattern: RegExp): Promise<void> {
  const path = save(bytes);
  await assert.rejects(readTorchCheckpoint(path), (err) => assertRefusal(err, path, pattern));
}

function sameCheckpoint(got: TorchCheckpoint, want: TorchCheckpoint): void {
  assert.deepEqual(got.config, want.config);
  assert.deepEqual([...got.tensors.keys()], [...want.tensors.keys()]);
  for (const [name, tensor] of want.tensors) assert.deepEqual(got.tensors.get(name), tensor, name);
  assert.equal(got.iterNum, want.iterNum);
  assert.equal(got.bestValLoss, want.bestValLoss);
}

const basicPath = fixture('pickle', 'ckpt_basic.pt');
const basic = readFileSync(basicPath);

/** Where the records are in an archive torch wrote (with a zip64 end record, as newer torch does). */
function layout(bytes: Buffer): { eocd: number; locator: number; record: number; directory: number } {
  const eocd = bytes.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  const locator = eocd - 20;
  assert.equal(bytes.readUInt32LE(locator), 0x07064b50, 'fixture has a zip64 locator');
  const record = Number(bytes.readBigUInt64LE(locator + 8));
  const directory = Number(bytes.readBigUInt64LE(record + 48));
  return { eocd, locator, record, directory };
}

function patched(bytes: Buffer, edit: (copy: Buffer) => void): Buffer {
  const copy = Buffer.from(bytes);
  edit(copy);
  return copy;
}

// ---- what torch writes ------------------------------------------------------------------------

test('every entry of every real checkpoint reads whole, its CRC-32 checked', async () => {
  const paths = [...MODEL_NAMES.map((name) => fixture('models', name, 'ckpt.pt')), basicPath, fixture('pickle', 'ckpt_views.pt')];
  for (const path of paths) {
    const zip = await ZipReader.open(path);
    try {
      assert.ok(zip.names.length > 3, path);
      for (const name of zip.names) {
        const info = zip.entry(name);
        const data = await zip.read(name);
        assert.equal(data.length, info?.size, name);
        assert.equal(info?.compressionMethod, 0, 'torch stores entries');
      }
      const pickle = await zip.read(zip.names.find((name) => name.endsWith('/data.pkl')) as string);
      assert.equal(pickle[0], 0x80, 'data.pkl starts with PROTO');
    } finally {
      await zip.close();
    }
  }
});

test('entry names are UTF-8, a leading U+FEFF included', async () => {
  const names = ['\ufeffbom', 'naïve/данные', 'plain'];
  const zip = await ZipReader.open(save(writeZip(names.map((name) => ({ name, data: Buffer.from(name) })))));
  try {
    assert.deepEqual(zip.names, names);
    for (const name of names) assert.equal((await zip.read(name)).toString(), name);
  } finally {
    await zip.close();
  }
});

test('a zip64 or a deflated copy of a checkpoint loads exactly as the original', async () => {
  const path = fixture('models', 'tiny-bias', 'ckpt.pt');
  const original = await readTorchCheckpoint(path);
  const entries = await entriesOf(path);
  sameCheckpoint(await readTorchCheckpoint(save(writeZip(entries, { zip64: true }))), original);
  const deflated = entries.map((entry): ArchiveEntry => ({ ...entry, method: 8 }));
  sameCheckpoint(await readTorchCheckpoint(save(writeZip(deflated))), original);
  sameCheckpoint(await readTorchCheckpoint(save(writeZip(deflated, { zip64: true }))), original);
});

// ---- damaged records --------------------------------------------------------------------------

test('every byte of the records that locate entries, damaged, loads or is refused on one line', async () => {
  // The end records, the first central header and the first local header: the fields a reader
  // trusts to find data. Damage there once made the old reader read at an absurd position inside
  // an fs callback, which killed the process.
  const { eocd, record, directory } = layout(basic);
  const firstName = basic.readUInt16LE(26) + basic.readUInt16LE(28);
  const positions = [
    ...range(record, eocd + 22),
    ...range(directory, directory + 46 + basic.readUInt16LE(directory + 28)),
    ...range(0, 30 + firstName),
  ];
  let refused = 0;
  for (const at of positions) {
    for (const value of new Set([0x00, 0xff, (basic[at] as number) ^ 0x80, (basic[at] as number) ^ 0x01])) {
      if (value === basic[at]) continue;
      const path = save(patched(basic, (b) => (b[at] = value)), 'damaged.pt');
      try {
        await readTorchCheckpoint(path);
      } catch (err) {
        assertRefusal(err, path);
        refused++;
      }
    }
  }
  assert.ok(refused > positions.length, `most damage should be refused (${refused} of ${positions.length * 4})`);
});

test('absurd offsets, sizes and counts are refused before anything is read there', async () => {
  const { eocd, locator, record, directory } = layout(basic);
  await refuses(patched(basic, (b) => b.writeBigUInt64LE(0x7fff_ffff_ffffn, locator + 8)), /zip64 end record offset 140737488355327 does not lie before its locator/);
  await refuses(patched(basic, (b) => b.writeBigUInt64LE(2n ** 63n, locator + 8)), /zip64 end record offset 9223372036854775808 is impossibly large/);
  const entryCount = (b: Buffer, count: bigint) => {
    b.writeBigUInt64LE(count, record + 24);
    b.writeBigUInt64LE(count, record + 32);
  };
  await refuses(patched(basic, (b) => entryCount(b, 1_000_000n)), /entry count is \d+ in the end record but 1000000 in the zip64 end record/);
  await refuses(
    patched(basic, (b) => {
      b.writeUInt16LE(0xffff, eocd + 8);
      b.writeUInt16LE(0xffff, eocd + 10);
      entryCount(b, 1_000_000n);
    }),
    /cannot hold the 1000000 entries it claims/,
  );
  await refuses(
    patched(basic, (b) => {
      b.writeUInt32LE(0xffffffff, eocd + 16);
      b.writeBigUInt64LE(BigInt(directory + 100), record + 48);
    }),
    /central directory \(\d+ bytes at offset \d+\) runs past its end record/,
  );
  await refuses(
    patched(basic, (b) => {
      b.writeUInt32LE(0xffffffff, eocd + 12);
      b.writeBigUInt64LE(2n ** 40n, record + 40);
    }),
    /central directory \(1099511627776 bytes at offset \d+\) runs past its end record/,
  );
  // The first entry's local header offset, its sizes, and the entry count against the directory's bytes.
  await refuses(patched(basic, (b) => b.writeUInt32LE(directory - 10, directory + 42)), /"ckpt_basic\/data.pkl" \(6778 bytes at offset \d+\) runs into the central directory/);
  await refuses(
    patched(basic, (b) => {
      b.writeUInt32LE(0x7fffffff, directory + 20);
      b.writeUInt32LE(0x7fffffff, directory + 24);
    }),
    /"ckpt_basic\/data.pkl" \(2147483647 bytes at offset 0\) runs into the central directory/,
  );
  await refuses(patched(basic, (b) => b.writeUInt32LE(1, directory + 20)), /is stored but its sizes differ \(1 vs 6778\)/);
  const second = directory + 46 + basic.readUInt16LE(directory + 28);
  await refuses(patched(basic, (b) => b.writeUInt32LE(100, second + 42)), /zip entries "ckpt_basic\/data.pkl" and "ckpt_basic\/data\/0" overlap/);
  await refuses(patched(basic, (b) => b.writeUInt16LE(0xffff, directory + 30)), /runs past the end of the central directory/);
  await refuses(patched(basic, (b) => b.writeUInt16LE(12, directory + 10)), /compression method 12; only stored \(0\) and deflated \(8\)/);
  await refuses(patched(basic, (b) => b.writeUInt16LE(0x0809, directory + 8)), /is encrypted/);
  await refuses(patched(basic, (b) => b.writeUInt16LE(1, directory + 34)), /lies on disk 1/);
  await refuses(patched(basic, (b) => (b[directory + 46] = 0xff)), /entry 0 has a name that is not UTF-8/);
  await refuses(patched(basic, (b) => (b[30] = 0x78)), /"ckpt_basic\/data.pkl": its local header names another entry/);
  await refuses(patched(basic, (b) => b.writeUInt32LE(0, b.readUInt32LE(second + 42))), /"ckpt_basic\/data\/0" has no local header at offset 6858/);
  await refuses(basic.subarray(0, eocd + 21), /no zip end-of-central-directory record/);
  // A name twice: data/0 renamed data/1, in the same number of bytes.
  await refuses(patched(basic, (b) => b.write('ckpt_basic/data/1', second + 46, 'latin1')), /zip archive holds "ckpt_basic\/data\/1" twice/);
});

test('a name in the file is quoted, so a message stays one line', async () => {
  const { directory } = layout(basic);
  // Both data/0 and data/1 renamed "ckpt_basic/\n\n\n\n\n\n": the duplicate is named in the refusal.
  const first = directory + 46 + basic.readUInt16LE(directory + 28);
  const second = first + 46 + basic.readUInt16LE(first + 28);
  const bytes = patched(basic, (b) => {
    for (const at of [first, second]) b.write('ckpt_basic/\n\n\n\n\n\n', at + 46, 'latin1');
  });
  await refuses(bytes, /zip archive holds "ckpt_basic\/\\n\\n\\n\\n\\n\\n" twice/);
});

test('I/O failures while reading are MicroGPTErrors naming the file', async () => {
  const path = save(basic);
  const zip = await ZipReader.open(path);
  truncateSync(path, 10_000); // the file changes under the reader
  await assert.rejects(zip.read('ckpt_basic/data/65'), (err) => assertRefusal(err, path, /the file ended while reading the local header of zip entry "ckpt_basic\/data\/65"/));
  await zip.close();
  await assert.rejects(zip.read('ckpt_basic/data.pkl'), (err) => assertRefusal(err, path, /cannot read the local header of zip entry "ckpt_basic\/data.pkl"/));
  const missing = join(dir, 'missing.pt');
  await assert.rejects(ZipReader.open(missing), (err) => assertRefusal(err, missing, /cannot read the file \(ENOENT/));
});

// ---- deflated entries ---------------------------------------------------------------------------

test('reading the start of a deflated entry inflates little more than that, whatever it declares', async () => {
  const head = Buffer.from(Array.from({ length: 8192 }, (_, i) => (i * 7919) % 251));
  const huge = 1500 * 1024 * 1024;
  const compressed = deflatedZeros(head, 1500);
  assert.ok(compressed.length < 2 * 1024 * 1024, 'a small file');
  const path = save(writeZip([{ name: 'big', data: head, method: 8, compressed, size: huge + head.length, crc: 0 }]));
  const zip = await ZipReader.open(path);
  try {
    assert.equal(zip.entry('big')?.size, huge + head.length);
    const start = await zip.readPrefix('big', head.length);
    assert.deepEqual(start, head);
    assert.ok(zip.inflatedBytes < 1024 * 1024, `inflated ${zip.inflatedBytes} bytes for ${head.length}`);
    await assert.rejects(zip.read('big', 1024 * 1024), (err) => assertRefusal(err, path, /zip entry "big" is \d+ bytes, more than the 1048576 allowed/));
    await assert.rejects(zip.readPrefix('big', huge * 2), (err) => assertRefusal(err, path, /fewer than the \d+ needed/));
  } finally {
    await zip.close();
  }
});

test('deflated entries that lie about their contents are refused', async () => {
  const data = Buffer.from(Array.from({ length: 4400 }, (_, i) => (i * i) % 253));
  const compressed = deflateRawSync(data);
  const cases: [ArchiveEntry, RegExp][] = [
    [{ name: 'e', data, method: 8, size: data.length - 1 }, /zip entry "e" holds more than its declared 4399 bytes/],
    [{ name: 'e', data, method: 8, size: data.length + 1 }, /zip entry "e" holds 4400 bytes, not its declared 4401/],
    [{ name: 'e', data, method: 8, compressed: Buffer.from('not deflate at all, not at all') }, /zip entry "e" is not valid deflate data/],
    [{ name: 'e', data, method: 8, compressed: compressed.subarray(0, compressed.length >> 1) }, /zip entry "e" is not valid deflate data \(unexpected end of file\)/],
    [{ name: 'e', data, method: 8, crc: (crc32(data) ^ 1) >>> 0 }, /zip entry "e" is corrupt \(CRC-32 mismatch\)/],
    [{ name: 'e', data, crc: (crc32(data) ^ 1) >>> 0 }, /zip entry "e" is corrupt \(CRC-32 mismatch\)/],
    [{ name: 'e', data, method: 8, size: 2 ** 40 }, /claims 1099511627776 bytes from \d+ compressed, which deflate cannot do/],
  ];
  for (const [entry, pattern] of cases) {
    const path = save(writeZip([entry], { zip64: entry.size === 2 ** 40 }));
    await assert.rejects(
      (async () => {
        const zip = await ZipReader.open(path);
        try {
          await zip.read('e');
        } finally {
          await zip.close();
        }
      })(),
      (err) => assertRefusal(err, path, pattern),
    );
  }
});

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}
