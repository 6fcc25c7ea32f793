import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CharTokenizer, MicroGPTError } from '../lib/index.js';

test("the vocabulary is the corpus's sorted unique characters, by code point like Python", () => {
  const t = CharTokenizer.fromText('hello, World!\n😀é');
  assert.deepEqual(t.vocab, ['\n', ' ', '!', ',', 'W', 'd', 'e', 'h', 'l', 'o', 'r', 'é', '😀']);
  assert.equal(t.size, 13);
});

test('encode and decode round-trip, astral characters included', () => {
  const t = CharTokenizer.fromText('ab😀c');
  const ids = t.encode('c😀ab');
  assert.deepEqual(ids, [2, 3, 0, 1]);
  assert.equal(t.decode(ids), 'c😀ab');
});

test('an unknown character is named with its position, or dropped', () => {
  const t = CharTokenizer.fromText('abc');
  assert.throws(
    () => t.encode('ab\tc'),
    (err: unknown) => err instanceof MicroGPTError && err.code === 'ERR_UNKNOWN_TOKEN' && /"\\t" \(U\+0009\) at position 2/.test(err.message),
  );
  assert.deepEqual(t.encode('ab\tcz', { unknown: 'drop' }), [0, 1, 2]);
});

test('decode refuses ids outside the vocabulary', () => {
  const t = CharTokenizer.fromText('abc');
  assert.throws(() => t.decode([0, 3]), /token id 3 is outside the vocabulary \(0\.\.2\)/);
  assert.throws(() => t.decode([-1]), /token id -1/);
});

test('a vocabulary must hold distinct single characters', () => {
  assert.throws(() => new CharTokenizer([]), /empty/);
  assert.throws(() => new CharTokenizer(['a', 'a']), /twice/);
  assert.throws(() => new CharTokenizer(['ab']), /single character/);
});
