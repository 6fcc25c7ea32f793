/**
 * The playground's files: GET / is playground/index.html, GET /playground/<name> a file of that
 * folder. Only plain names of known types are served, so no request reaches outside the folder.
 */
import { readFile } from 'node:fs/promises';
import { ApiError } from './errors.js';

/** playground/ at the package root, from dist/lib/serve/. */
export const PLAYGROUND_DIR = new URL('../../../playground/', import.meta.url);

const NAME = /^[a-z0-9-]+\.(html|css|js|svg)$/;
const CONTENT_TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  css: 'text/css; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  svg: 'image/svg+xml',
};

/** The file's bytes and Content-Type, or a 404 ApiError. */
export async function playgroundFile(dir: URL, name: string): Promise<{ body: Buffer; contentType: string }> {
  const match = NAME.exec(name);
  if (match === null) throw new ApiError(404, `no playground file ${JSON.stringify(name.slice(0, 100))}`, null, 'not_found');
  try {
    const body = await readFile(new URL(name, dir));
    return { body, contentType: CONTENT_TYPES[match[1] as string] as string };
  } catch {
    throw new ApiError(404, `no playground file ${JSON.stringify(name)} (is the playground/ folder installed?)`, null, 'not_found');
  }
}
