// `node --import ./scripts/sanitize-skip.mjs --test ...`: skips the tests whose name matches the
// regular expression in MICROGPT_SKIP_TESTS (reporting them as skipped), and runs the
// rest unchanged; MICROGPT_SKIP_REASON, if set, is the reason shown. scripts/sanitize.sh runs the
// native test files on the AddressSanitizer build with it, leaving out the tests that would
// measure the sanitizer rather than the engine; scripts/linux-arm64.sh and scripts/win32-x64.sh
// run them under qemu and wine with it, each leaving out what its SKIP_TESTS names.
//
// Why a loader hook: node:test's --test-name-pattern can only pick tests to run, and a test runs
// whenever an enclosing suite's name matches, so it cannot leave out a few tests and keep the rest
// (new tests included). The hook hands the test files a node:test whose test/it/describe/suite
// turn a matching name into a skipped test.
import { register } from 'node:module';

const shim = `data:text/javascript,${encodeURIComponent(`
import * as real from 'node:test';
export * from 'node:test';
const pattern = new RegExp(process.env.MICROGPT_SKIP_TESTS || '(?!)');
const reason = process.env.MICROGPT_SKIP_REASON || 'left out under sanitizers (SKIP_TESTS in scripts/sanitize.sh says why)';
function wrap(fn) {
  const wrapped = (name, ...rest) =>
    typeof name === 'string' && pattern.test(name) ? fn(name, { skip: reason }, () => {}) : fn(name, ...rest);
  for (const key of Object.getOwnPropertyNames(fn)) {
    if (!['length', 'name', 'prototype', 'arguments', 'caller'].includes(key)) wrapped[key] = fn[key];
  }
  return wrapped;
}
export const test = wrap(real.test);
export const it = wrap(real.it);
export const describe = wrap(real.describe);
export const suite = wrap(real.suite);
export default test;
`)}`;

// Every import of node:test but the shim's own gets the shim.
const hooks = `data:text/javascript,${encodeURIComponent(`
  const shim = ${JSON.stringify(shim)};
  export async function resolve(specifier, context, next) {
    if (specifier === 'node:test' && context.parentURL !== shim) return { url: shim, shortCircuit: true };
    return next(specifier, context);
  }`)}`;
register(hooks);
