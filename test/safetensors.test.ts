// Our safetensors format: reading what PyTorch wrote, writing what we read, and refusing bad files.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { decodeToFloat32, encodeBFloat16, encodeFloat16 } from '../lib/formats/dtype.js';
import { encodeSafetensors, parseSafetensors } from '../lib/formats/safetensors.js';
import { MicroGPTError, readSafetensors, writeSafetensors, type SafetensorsModel } from '../lib/index.js';
import { namedTensors } from '../lib/weights.js';
import { fixture } from './helpers.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'microgpt-st-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sameWeights(a: SafetensorsModel, b: SafetensorsModel): void {
  const ta = namedTensors(a.config, a.weights);
  const tb = namedTensors(b.config, b.weights);
  assert.deepEqual([...ta.keys()], [...tb.keys()]);
  for (const [name, t] of ta) assert.deepEqual(t.data, tb.get(name)?.data, name);
}

test('float16 and bfloat16 rounding matches torch, ties to even, overflow to infinity', () => {
  const r = JSON.parse(readFileSync(fixture('expected', 'rounding.json'), 'utf8')) as Record<string, number[]>;
  const values = new Float32Array(Int32Array.from(r['float32Bits']!).buffer);
  assert.deepEqual(Array.from(encodeFloat16(values)), r['float16Bits']!.map((b) => b & 0xffff));
  assert.deepEqual(Array.from(encodeBFloat16(values)), r['bfloat16Bits']!.map((b) => b & 0xffff));
});

test('every float16 bit pattern decodes and re-encodes to itself', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const floats = decodeToFloat32(new Uint8Array(all.buffer), 0, 65536, 'F16');
  const back = encodeFloat16(floats);
  for (let i = 0; i < 65536; i++) {
    const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
    if (isNaN) assert.ok(Number.isNaN(floats[i]));
    else assert.equal(back[i], i, `bits ${i.toString(16)}`);
  }
});

describe('round trips', () => {
  test('F32: the file written reads back to the same weights, vocabulary and metadata', async () => {
    const original = await readSafetensors(fixture('models', 'tiny-bias.safetensors'));
    const path = join(dir, 'f32.safetensors');
    await writeSafetensors(path, { ...original, metadata: { note: 'héllo' } });
    const copy = await readSafetensors(path);
    sameWeights(original, copy);
    assert.deepEqual(copy.config, original.config);
    assert.deepEqual(copy.vocab, original.vocab);
    assert.deepEqual(copy.metadata, { note: 'héllo' });
    assert.equal(copy.storedDType, 'F32');
  });

  test('F16: weights that PyTorch stored as float16 are written back bit for bit', async () => {
    const original = await readSafetensors(fixture('models', 'tiny-nobias-f16.safetensors'));
    assert.equal(original.storedDType, 'F16');
    const bytes = encodeSafetensors({ ...original, dtype: 'F16' });
    const copy = parseSafetensors(bytes, 'memory');
    sameWeights(original, copy);
    assert.equal(copy.storedDType, 'F16');
  });

  test('BF16 keeps the top 16 bits of each weight, rounded', async () => {
    const original = await readSafetensors(fixture('models', 'tiny-bias.safetensors'));
    const copy = parseSafetensors(encodeSafetensors({ ...original, dtype: 'BF16' }), 'memory');
    const a = original.weights.wte;
    const b = copy.weights.wte;
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs((a[i] as number) - (b[i] as number)) <= Math.abs(a[i] as number) * 2 ** -8);
  });
});

describe('bad files are refused with a message naming the problem', () => {
  let good: Uint8Array;
  let header: Record<string, unknown>;
  let dataStart: number;
  before(async () => {
    good = new Uint8Array(readFileSync(fixture('models', 'tiny-bias.safetensors')));
    const n = Number(new DataView(good.buffer, good.byteOffset).getBigUint64(0, true));
    header = JSON.parse(Buffer.from(good.subarray(8, 8 + n)).toString('utf8')) as Record<string, unknown>;
    dataStart = 8 + n;
  });

  /** The good file with its header edited. */
  function withHeader(edit: (h: Record<string, any>) => void): Uint8Array {
    const h = structuredClone(header) as Record<string, any>;
    edit(h);
    const json = Buffer.from(JSON.stringify(h), 'utf8');
    const out = Buffer.alloc(8 + json.length + good.length - dataStart);
    out.writeBigUInt64LE(BigInt(json.length), 0);
    json.copy(out, 8);
    out.set(good.subarray(dataStart), 8 + json.length);
    return out;
  }

  function refuses(bytes: Uint8Array, message: RegExp, code = 'ERR_BAD_CHECKPOINT'): void {
    assert.throws(
      () => parseSafetensors(bytes, 'bad.safetensors'),
      (err: unknown) => {
        assert.ok(err instanceof MicroGPTError, String(err));
        assert.equal(err.code, code);
        assert.match(err.message, /^bad\.safetensors: /);
        assert.ok(!/[\n\r]/.test(err.message), `should be one line: ${JSON.stringify(err.message)}`);
        assert.ok(err.message.length < 300, `should be short: ${err.message.length} characters`);
        assert.match(err.message, message);
        return true;
      },
    );
  }

  test('empty and truncated files', () => {
    refuses(new Uint8Array(3), /truncated: 3 bytes/);
    refuses(good.subarray(0, 100), /header length \d+ is larger than the file/);
    refuses(good.subarray(0, good.length - 10), /outside the \d+ data bytes \(truncated file\?\)/);
  });

  test('an absurd header length', () => {
    const bytes = new Uint8Array(good);
    new DataView(bytes.buffer).setBigUint64(0, 2n ** 63n, true);
    refuses(bytes, /header length 9223372036854775808 is larger than the file/);
  });

  test('a header that is not JSON', () => {
    const bytes = new Uint8Array(good);
    bytes[8] = 0x7a;
    refuses(bytes, /header is not valid UTF-8 JSON/);
  });

  test('an unknown dtype', () => {
    refuses(withHeader((h) => (h['transformer.wpe.weight'].dtype = 'I64')), /"transformer\.wpe\.weight" has dtype "I64"; microgpt reads F32, F16, BF16 and F64/);
  });

  test('a shape that the bytes do not hold', () => {
    refuses(withHeader((h) => (h['transformer.wpe.weight'].shape = [16, 33])), /"transformer\.wpe\.weight": 2048 bytes do not hold shape \[16, 33\]/);
  });

  test('a tensor of the wrong shape for the config', () => {
    refuses(
      withHeader((h) => (h['transformer.wpe.weight'].shape = [32, 16])),
      /"transformer\.wpe\.weight" has shape \[32, 16\], expected \[16, 32\]/,
    );
  });

  test('a missing tensor, and a stranger', () => {
    refuses(withHeader((h) => delete h['transformer.h.1.mlp.c_fc.bias']), /missing tensor "transformer\.h\.1\.mlp\.c_fc\.bias" \(expected shape \[128\]\)/);
    refuses(
      withHeader((h) => {
        h['extra.weight'] = { dtype: 'F32', shape: [0], data_offsets: [0, 0] };
      }),
      /unexpected tensor "extra\.weight"/,
    );
  });

  test('overlapping tensors', () => {
    refuses(
      withHeader((h) => {
        h['transformer.ln_f.bias'].data_offsets = h['transformer.ln_f.weight'].data_offsets;
      }),
      /overlap/,
    );
  });

  test('NaN weights', () => {
    const bytes = new Uint8Array(good);
    const begin = (header['transformer.h.0.ln_2.weight'] as { data_offsets: number[] }).data_offsets[0]!;
    new DataView(bytes.buffer).setFloat32(dataStart + begin + 8, Number.NaN, true);
    refuses(bytes, /tensor "transformer\.h\.0\.ln_2\.weight" holds NaN at flat index 2; weights must be finite/);
  });

  test('missing or bad metadata', () => {
    refuses(withHeader((h) => delete h['__metadata__']['microgpt']), /no "microgpt" entry in __metadata__/);
    refuses(withHeader((h) => (h['__metadata__']['microgpt'] = '9')), /format version "9" is not supported/);
    refuses(withHeader((h) => delete h['__metadata__']['config']), /__metadata__ has no "config"/);
    refuses(withHeader((h) => (h['__metadata__']['config'] = '{"nLayer": 2')), /__metadata__\.config is not valid JSON/);
    refuses(
      withHeader((h) => {
        const c = JSON.parse(h['__metadata__']['config']);
        c.nHead = 3;
        h['__metadata__']['config'] = JSON.stringify(c);
      }),
      /nEmbd \(32\) must be a multiple of nHead \(3\)/,
      'ERR_INVALID_CONFIG',
    );
    refuses(
      withHeader((h) => {
        const c = JSON.parse(h['__metadata__']['config']);
        c.nLayer = 1e9;
        h['__metadata__']['config'] = JSON.stringify(c);
      }),
      /nLayer must be an integer from 1 to \d+, got 1000000000/,
      'ERR_INVALID_CONFIG',
    );
    refuses(withHeader((h) => (h['__metadata__']['vocab'] = '[1, 2]')), /vocab must be a JSON array of strings/);
  });

  test('names and values from the header are quoted and cut short, so a message stays one short line', () => {
    const name = 'transformer.wpe.weight';
    const renamed = (h: Record<string, any>, to: string) => {
      h[to] = h[name];
      delete h[name];
    };
    refuses(withHeader((h) => renamed(h, 'evil\nname')), /unexpected tensor "evil\\nname"/);
    refuses(withHeader((h) => ((h[name].dtype = 'I64\n'.repeat(100_000)), renamed(h, 'a\r\nb'))), /tensor "a\\r\\nb" has dtype "I64\\nI64\\n.*…; microgpt reads/);
    refuses(withHeader((h) => (h[name].shape = new Array(100_000).fill(-1))), /"transformer\.wpe\.weight" has an invalid shape \[-1,-1,.*…$/);
    refuses(withHeader((h) => (h[name].data_offsets = [0, 'x'.repeat(100_000)])), /has data_offsets \[0,"xxx.*… outside the/);
    refuses(withHeader((h) => (h['__metadata__']['bad\nkey'] = 5)), /__metadata__ entry "bad\\nkey" must be a string/);
    refuses(withHeader((h) => (h['__metadata__']['microgpt'] = '9\n'.repeat(1000))), /format version "9\\n9\\n.*…" is not supported/);
  });

  test('a file that cannot be read is a MicroGPTError naming it', async () => {
    const missing = join(dir, 'missing.safetensors');
    await assert.rejects(readSafetensors(missing), (err: unknown) => {
      assert.ok(err instanceof MicroGPTError, String(err));
      assert.equal(err.code, 'ERR_BAD_CHECKPOINT');
      assert.match(err.message, /missing\.safetensors: cannot read the file \(ENOENT/);
      return true;
    });
  });

  test('decodeToFloat32 refuses a range outside its bytes rather than reading zeros', () => {
    const bytes = new Uint8Array(16);
    assert.throws(() => decodeToFloat32(bytes, 8, 3, 'F32'), RangeError);
    assert.throws(() => decodeToFloat32(bytes, 0, -1, 'F16'), RangeError);
    assert.throws(() => decodeToFloat32(bytes, 0, Number.NaN, 'BF16'), RangeError);
    assert.deepEqual(decodeToFloat32(bytes, 8, 2, 'F32'), new Float32Array(2));
  });

  test('a file that is not safetensors at all, read from disk', async () => {
    const path = join(dir, 'garbage.safetensors');
    await writeFile(path, 'hello world, this is not a model');
    await assert.rejects(readSafetensors(path), /garbage\.safetensors: header length \d+ is larger than the file/);
  });
});
